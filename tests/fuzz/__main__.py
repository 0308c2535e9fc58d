"""`python -m tests.fuzz` (scripts/fuzz): schemathesis over openapi.yaml against a real dev server.

A throwaway PostgreSQL database (on TEST_DATABASE_URL's server, else an embedded one), the dev
server on it over real HTTP with secrets made for this run (pipeline callbacks and Stripe events
are signed with them), the demo user topped up so `generate` keeps succeeding, then schemathesis'
stateful phase along the links of openapi.yaml and a second run of its examples, coverage and
fuzzing phases over every operation, with the checks of tests/fuzz/schemathesis.toml. Afterwards
the ledger must still add up. Exit status: non-zero on any failure.

    scripts/fuzz                       # the bounded run CI does
    scripts/fuzz --max-examples 500 --minutes 30 --seed 7
    scripts/fuzz -- --include-path /generate    # anything after -- goes to schemathesis run
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import psycopg

from shared.core.settings import ENVIRONMENT_VARIABLES
from shared.dev.embedded import temporary_embedded, with_database
from shared.dev.server import DEMO_USER_ID, demo_token
from tests.dev_server import free_port
from tests.helpers import create_database, drop_database
from tests.integration.sqlfns import (
    broken_balance_after_chain,
    discrepancies,
    unpaid_or_orphan_charges,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
START_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 30
# Enough that `generate` never runs out during a long run (each job costs at most 25).
FUZZ_CREDITS = 10_000_000


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument(
        "--minutes", type=float, help="time budget (half per run): fuzzing and stateful repeat"
    )
    parser.add_argument("--seed", type=int, default=2, help="the same seed, the same requests")
    parser.add_argument("schemathesis", nargs="*", help="more `schemathesis run` arguments")
    return parser.parse_args()


@contextmanager
def database() -> Iterator[str]:
    """URL of a fresh database, dropped afterwards."""
    server = os.environ.get("TEST_DATABASE_URL")
    with nullcontext(server) if server else temporary_embedded() as server_url:
        name = f"fuzz_{secrets.token_hex(4)}"
        create_database(server_url, name)
        try:
            yield with_database(server_url, name)
        finally:
            drop_database(server_url, name)


@contextmanager
def dev_server(database_url: str, environ: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m shared.dev` on database_url: its base URL once it has printed its banner."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_VARIABLES}
    env |= environ | {"DATABASE_URL": database_url, "PORT": str(free_port())}
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.dev"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not (found := re.search(r"^export API=(\S+)$", log.read_text(), re.M)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the dev server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def broken_books(database_url: str) -> list[dict]:
    """Rows that break a money invariant: balance vs ledger, the balance_after chain, charges."""
    with psycopg.connect(database_url) as conn:
        return [
            *discrepancies(conn),
            *broken_balance_after_chain(conn),
            *unpaid_or_orphan_charges(conn),
        ]


def main() -> int:
    args = arguments()
    secret = secrets.token_urlsafe(32)
    environ = {
        "SUPABASE_JWT_SECRET": secret,
        "PIPELINE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "MAINTENANCE_TOKEN": secrets.token_urlsafe(24),
        "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
    }
    work = Path(tempfile.mkdtemp(prefix="credit-jobs-fuzz-"))
    environ["CREDIT_JOBS_DATA_DIR"] = str(work)
    # Two runs, the stateful phase first: on a fresh database it walks the links of openapi.yaml
    # several times as often as after the fuzzing phase has filled it.
    budget = ("--max-time", str(max(1, round(args.minutes * 30)))) if args.minutes else ()
    runs = {
        phases: [
            *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"),
            *(str(ROOT / "openapi.yaml"), "--phases", phases, "--seed", str(args.seed)),
            *("--max-examples", str(args.max_examples), *budget, *args.schemathesis),
        ]
        for phases in ("stateful", "examples,coverage,fuzzing")
    }
    try:
        with database() as database_url, dev_server(database_url, environ, work / "dev.log") as url:
            with psycopg.connect(database_url) as conn:
                conn.execute(
                    "select public.admin_grant_credits(p_user_id => %s, p_amount => %s,"
                    " p_reason => 'scripts/fuzz')",
                    (DEMO_USER_ID, FUZZ_CREDITS),
                )
            fuzz_env = os.environ | {
                "FUZZ_TOKEN": demo_token(secret),
                "FUZZ_MAINTENANCE_TOKEN": environ["MAINTENANCE_TOKEN"],
                "FUZZ_WEBHOOK_SECRET": environ["PIPELINE_WEBHOOK_SECRET"],
                "FUZZ_STRIPE_WEBHOOK_SECRET": environ["STRIPE_WEBHOOK_SECRET"],
                "PYTHONPATH": str(ROOT),
            }
            status = 0
            for phases, command in runs.items():
                print(f"== schemathesis ({phases}) against the dev server at {url}", flush=True)
                started = time.monotonic()
                run = subprocess.run([*command, "--url", url], cwd=ROOT, env=fuzz_env)
                print(f"== {phases}: {time.monotonic() - started:.0f}s, exit {run.returncode}")
                status = status or run.returncode
            unbalanced = broken_books(database_url)
            print(f"== money invariants after the runs: {len(unbalanced)} broken {unbalanced}")
    except BaseException:
        print(f"== the dev server's log is kept in {work}", file=sys.stderr)
        raise
    if status or unbalanced:
        print(f"== the dev server's log is kept in {work}", file=sys.stderr)
        return status or 1
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
