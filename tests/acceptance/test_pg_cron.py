"""pg_cron reaps stalled jobs inside the database (issue 4), on a private PostgreSQL cluster.

pg_cron must be preloaded and can only be created in the database named by cron.database_name,
so this test starts its own cluster of the system PostgreSQL that has pg_cron installed
(Debian: postgresql-<major>-cron; .ci/run installs it for PostgreSQL 15) rather than
reconfiguring a shared server. Skipped with the reason where no such PostgreSQL exists.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.dev.embedded import with_database
from shared.migrate import DEFAULT_DIR, migrate, split_statements
from tests.helpers import create_database
from tests.integration.sqlfns import (
    add_kind,
    call,
    claim_one,
    create_job,
    discrepancies,
    expire_lease,
    job_row,
    ledger_for_job,
)

pytestmark = pytest.mark.acceptance

DATABASE = "credit_jobs"
JOB_NAME = "credit-jobs-reap-stalled"
REAP_COMMAND = "select public.reap_stalled_jobs()"
SCHEDULE_MIGRATION = DEFAULT_DIR / "20261201101000_cron_reap_batch.sql"
# pg_cron 1.4 (Debian 12) schedules by the minute: a run comes within 60 s, plus slack.
CRON_WAIT = 75.0
COST = 10


def postgres_with_pg_cron() -> Path | None:
    """bin/ of the newest system PostgreSQL with pg_cron installed, if any."""
    for lib in sorted(Path("/usr/lib/postgresql").glob("*/lib/pg_cron.so"), reverse=True):
        bin_dir = lib.parent.parent / "bin"
        if (bin_dir / "initdb").exists():
            return bin_dir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cron_server() -> Iterator[str]:
    """URL of the `postgres` database of a throwaway cluster with pg_cron preloaded."""
    bin_dir = postgres_with_pg_cron()
    if bin_dir is None:
        pytest.skip(
            "no system PostgreSQL with pg_cron (Debian: apt-get install postgresql-15-cron)"
        )
    # Not pytest's tmp_path: its root is 0700, and as root the server runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="credit-jobs-cron-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    port = free_port()
    try:
        initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
        subprocess.run(
            [*initdb, "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
            check=True,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{base}'\n"
                f"shared_preload_libraries = 'pg_cron'\ncron.database_name = '{DATABASE}'\n"
                # Jobs run in background workers, not over a libpq connection to cron.host:
                # no dependence on how `localhost` resolves or on pg_hba. Each job takes a
                # worker slot, hence more than the default 8.
                "cron.use_background_workers = on\nmax_worker_processes = 20\n"
            )
        subprocess.run(
            [*pg_ctl, "-w", "-l", str(base / "server.log"), "start"],
            check=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def cron_jobs(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select schedule, command, database, username from cron.job where jobname = %s",
        (JOB_NAME,),
    ).fetchall()


def succeeded_runs(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from cron.job_run_details d join cron.job j using (jobid)"
        " where j.jobname = %s and d.status = 'succeeded'",
        (JOB_NAME,),
    ).fetchone()[0]


def test_pg_cron_reaps_a_stalled_job_and_refunds_it(cron_server: str) -> None:
    create_database(cron_server, DATABASE)
    url = with_database(cron_server, DATABASE)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        expected = [("* * * * *", REAP_COMMAND, DATABASE, "postgres")]
        assert cron_jobs(conn) == expected
        # The latest schedule again: scheduling by name replaces, never duplicates.
        conn.execute(split_statements(SCHEDULE_MIGRATION.read_text())[-1].encode())
        assert cron_jobs(conn) == expected

        # A worker claimed a job of a kind without retries, then stopped heartbeating.
        kind = add_kind(conn, "once", COST, max_attempts=1)
        user = uuid.uuid4()
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)", (user, f"{user}@example.test")
        )
        call(conn, "admin_grant_credits", user_id=user, amount=100, reason="test")
        job = create_job(conn, user, kind)
        claim_one(conn, kind)
        expire_lease(conn, job["id"])

        # Nobody calls the reaper but pg_cron.
        deadline = time.monotonic() + CRON_WAIT
        while not (job_row(conn, job["id"])["status"] == "failed" and succeeded_runs(conn)):
            assert time.monotonic() < deadline, f"pg_cron did not reap within {CRON_WAIT} s"
            time.sleep(1)

        assert ledger_for_job(conn, job["id"]) == [("charge", -COST), ("refund", COST)]
        assert discrepancies(conn) == []
