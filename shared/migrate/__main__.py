"""`python -m shared.migrate [up|status|check|--dry-run]`: the command line of shared.migrate."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

import shared.migrate
from shared.migrate import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_DIR,
    MigrationError,
    Status,
    migrate,
    status,
)


def _report(state: Status, migrations_dir: Path) -> list[str]:
    lines: list[str] = []
    lines += [
        f"{v}  applied  {name}" for v, name in state.applied.items() if v not in state.unknown
    ]
    lines += [
        f"{v}  applied  {state.applied[v]}  (no file in {migrations_dir})" for v in state.unknown
    ]
    lines += [f"{m.version}  pending  {m.name}" for m in state.pending]
    bootstrap = ["bootstrap       pending  (plain Postgres: no auth.users)"]
    return bootstrap * state.bootstrap_needed + sorted(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.migrate",
        description=shared.migrate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="up", choices=["up", "status", "check"])
    parser.add_argument("--dry-run", action="store_true", help="list what `up` would apply")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="migrations directory")
    parser.add_argument("--bootstrap", type=Path, default=DEFAULT_BOOTSTRAP, help="bootstrap SQL")
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL")
    if not url:
        parser.error("DATABASE_URL is not set")
    try:
        if args.command == "up" and not args.dry_run:
            applied = migrate(url, args.dir, args.bootstrap)
            print(f"applied: {' '.join(applied)}" if applied else "up to date: nothing to apply")
            return 0
        state = status(url, args.dir)
        if args.command == "status":
            print("\n".join(_report(state, args.dir)) or "no migrations")
            return 0
        todo = [line for line in _report(state, args.dir) if " pending " in line]
        if args.command == "check" and not state.up_to_date:
            print("database is not up to date; run `python -m shared.migrate up`:", file=sys.stderr)
            print("\n".join(todo), file=sys.stderr)
            return 1
        if args.command == "check":
            print("database is up to date")
        else:
            print("\n".join(["would apply:", *todo]) if todo else "up to date: nothing to apply")
        return 0
    except MigrationError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(f"cannot reach the database: {str(exc).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
