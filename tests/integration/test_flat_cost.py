"""Guarantee 14, flat cost: the queue-side scans read an index from its due end, so a backlog of
unrelated jobs (other kinds, a paused kind, retries waiting out their delay, pushed jobs waiting on
their pipeline, jobs in flight) is never walked. Checked on the plans PostgreSQL runs inside the
functions (auto_explain; the queue functions always use generic plans) and on the buffers each
call touches with and without that backlog. bench/ (scenario flat_cost) measures the latencies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from bench.harness import KINDS, USER_ID_SQL, user_id
from bench.scenarios import flat_cost

pytestmark = pytest.mark.integration

USERS = 200
QUEUED = 10_000  # and as many in flight
HOT = flat_cost.HOT
LIMITED = "bench_limited"  # HOT with an active-jobs limit no call here reaches


def claim_sql(kinds: list[str] | None) -> Callable[[psycopg.Connection], tuple[str, tuple]]:
    def prepare(conn: psycopg.Connection) -> tuple[str, tuple]:
        conn.execute(flat_cost.CREATE, (user_id(2), HOT))  # something to claim
        return flat_cost.CLAIM, (kinds, 1)

    return prepare


def fixed(sql: str, *params: Any) -> Callable[[psycopg.Connection], tuple[str, tuple]]:
    return lambda conn: (sql, params)


# operation: (what to run, the indexes on jobs its scans must use)
OPERATIONS: dict[str, tuple[Callable[[psycopg.Connection], tuple[str, tuple]], set[str]]] = {
    "create_job": (fixed(flat_cost.CREATE, user_id(3), HOT), {"jobs_fair_queue", "jobs_fair_user"}),
    "create_job (kind with a limit)": (
        fixed(flat_cost.CREATE, user_id(3), LIMITED),
        {"jobs_user_active", "jobs_fair_queue", "jobs_fair_user"},
    ),
    "claim_jobs (kind)": (claim_sql([HOT]), {"jobs_retry_delay", "jobs_fair_queue"}),
    "claim_jobs (any kind)": (claim_sql(None), {"jobs_retry_delay", "jobs_fair_queue"}),
    "take_jobs_to_dispatch": (
        fixed("select public.take_jobs_to_dispatch(p_limit => 100)"),
        {"jobs_retry_delay", "jobs_fair_queue", "jobs_awaiting_pipeline", "jobs_dispatch_deadline"},
    ),
    "reap_stalled_jobs": (
        fixed("select public.reap_stalled_jobs(p_limit => 100)"),
        {"jobs_processing_lease"},
    ),
    "fail_unstarted_jobs": (
        fixed("select public.fail_unstarted_jobs(p_limit => 100)"),
        {"jobs_waiting_to_start"},
    ),
}


@pytest.fixture
def bench_db(conn) -> psycopg.Connection:
    """The bench's kinds and users (a few with credits), and its backlog kinds; no jobs yet."""
    for kind, cost, max_attempts in KINDS:
        conn.execute(
            "insert into public.job_kinds (kind, cost, max_attempts) values (%s, %s, %s)",
            (kind, cost, max_attempts),
        )
    conn.execute(
        "insert into public.job_kinds (kind, cost, max_active_per_user) values (%s, 1, 1000000)",
        (LIMITED,),
    )
    conn.execute(
        "insert into auth.users (id, email) select "
        + USER_ID_SQL.format(n="n")
        + ", 'user' || n || '@bench.test' from generate_series(1, %s) n",
        (USERS,),
    )
    for n in (2, 3):
        conn.execute("select public.admin_grant_credits(%s, 1000000, 'test')", (user_id(n),))
    flat_cost.setup(conn)
    return conn


def nested_plans(conn: psycopg.Connection, sql: str, params: tuple) -> list[str]:
    """The plan of every statement the call runs, functions' own statements included."""
    notices: list[str] = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

    conn.add_notice_handler(handler)
    try:
        conn.execute("set client_min_messages = log")
        conn.execute(sql, params)
    finally:
        conn.execute("set client_min_messages = notice")
        conn.remove_notice_handler(handler)
    return notices


def test_queue_scans_read_their_index_never_every_job(bench_db):
    flat_cost.load_backlog(bench_db, 1, QUEUED, USERS)
    bench_db.execute("load 'auto_explain'")  # superuser only; ships with PostgreSQL
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_nested_statements", "on"),
    ):
        bench_db.execute("select set_config(%s, %s, false)", (setting, value))
    for name, (prepare, indexes) in OPERATIONS.items():
        for _ in range(3):  # the plans cached after the first call too
            plans = "\n".join(nested_plans(bench_db, *prepare(bench_db)))
        assert "Seq Scan on jobs" not in plans, f"{name}:\n{plans}"
        if name == "create_job (kind with a limit)":  # the count reads the index alone
            assert "Index Only Scan using jobs_user_active" in plans, plans
        used = {index for index in indexes if f" on {index}" in plans or f"using {index}" in plans}
        assert used == indexes, f"{name} does not use {indexes - used}:\n{plans}"


def buffers(conn: psycopg.Connection, sql: str, params: tuple) -> int:
    """Shared buffers the call touched (hit or read), its functions' statements included."""
    row = conn.execute("explain (analyze, buffers, format json) " + sql, params).fetchone()
    (plan,) = next(iter(row.values()))
    return plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]


def test_each_call_touches_as_many_buffers_with_the_backlog_as_without(bench_db):
    def touched() -> dict[str, int]:
        counts = {}
        for name, (prepare, _) in OPERATIONS.items():
            for _ in range(3):  # warm: catalog caches and plans are per connection
                counts[name] = buffers(bench_db, *prepare(bench_db))
        return counts

    empty = touched()
    flat_cost.load_backlog(bench_db, 1, QUEUED, USERS)
    with_backlog = touched()
    # Each index descent may cross one more level of a bigger tree; nothing more.
    grown = {name: (empty[name], with_backlog[name]) for name in OPERATIONS
             if with_backlog[name] > 1.5 * empty[name] + 10}  # fmt: skip
    assert grown == {}, json.dumps({"empty": empty, "with_backlog": with_backlog})
