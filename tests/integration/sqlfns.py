"""Thin helpers for calling the money core's SQL functions from integration tests.

Every call goes to the real database; errors are told apart by SQLSTATE, never by message text.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from shared.core.errors import SQLSTATE_ERRORS


def call(conn: psycopg.Connection, function: str, **params: Any) -> dict:
    """Call public.<function> with named parameters (`p_` added) and return its jsonb as a dict.

    dicts are sent as jsonb, lists as arrays (wrap a list in Jsonb to send a JSON array).
    """
    args = ", ".join(f"p_{name} => %({name})s" for name in params)
    values = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in params.items()}
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(f"select public.{function}({args})", values)
        return cur.fetchone()[0]


def error_code(error: psycopg.Error) -> str | None:
    """The API error code (shared.core.errors) of a business error, else the raw SQLSTATE."""
    known = SQLSTATE_ERRORS.get(error.sqlstate or "")
    return known[0] if known else error.sqlstate


def outcome_or_error(conn: psycopg.Connection, function: str, **params: Any) -> str:
    """The call's `outcome`, or the error code it raised (for tallying racing calls)."""
    try:
        return call(conn, function, **params)["outcome"]
    except psycopg.Error as e:
        return error_code(e)


@contextmanager
def raises_error(code: str) -> Iterator[pytest.ExceptionInfo]:
    """Expect the business error `code` (e.g. "invalid_transition"), or another by SQLSTATE."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    assert error_code(info.value) == code, f"expected {code}, got {info.value!r}"


def assert_late_reports_refused(
    conn: psycopg.Connection, job_id: Any, attempt: int, code: str
) -> None:
    """A late completion and a late heartbeat of `attempt` are both refused with `code`."""
    late = {"complete_job": {"result": {"late": True}}, "heartbeat_job": {"progress": 99}}
    for function, params in late.items():
        with raises_error(code):
            call(conn, function, job_id=job_id, attempt=attempt, **params)


def connect(db_url: str) -> psycopg.Connection:
    """A separate autocommit connection, as each concurrent client would have."""
    return psycopg.connect(db_url, autocommit=True, row_factory=dict_row)


def race(db_url: str, n: int, action: Callable[[psycopg.Connection, int], str]) -> Counter:
    """Run action(conn, i) in n threads with their own connections, released at the same instant.

    Returns how often each result came back.
    """
    connections = [connect(db_url) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[str] = [""] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = action(connections[i], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for c in connections:
            c.close()
    assert all(not t.is_alive() for t in threads), "a racing call never returned"
    return Counter(results)


def add_kind(
    conn: psycopg.Connection, kind: str, cost: int, *, retry_delay_seconds: int = 0, **columns: Any
) -> str:
    """Insert a job kind (migrations seed none); other columns keep the table's defaults, except
    that a retry is due at once unless the test asks for a delay."""
    values = {"kind": kind, "cost": cost, "retry_delay_seconds": retry_delay_seconds, **columns}
    conn.execute(
        sql.SQL("insert into public.job_kinds ({}) values ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        ),
        list(values.values()),
    )
    return kind


def create_job(conn: psycopg.Connection, user_id: Any, kind: str, **params: Any) -> dict:
    """create_job's job object (the response's `job`)."""
    return call(conn, "create_job", user_id=user_id, kind=kind, **params)["job"]


def claim(conn: psycopg.Connection, kinds: list[str] | None = None, limit: int = 1) -> list[dict]:
    return call(conn, "claim_jobs", worker_id="test-worker", kinds=kinds, limit=limit)["jobs"]


def claim_one(conn: psycopg.Connection, kind: str) -> dict:
    jobs = claim(conn, [kind])
    assert len(jobs) == 1, f"expected one claimable {kind} job, got {jobs}"
    return jobs[0]


def expire_lease(conn: psycopg.Connection, job_id: Any) -> None:
    """Make a job's lease lapse now, as if its worker had stopped heartbeating long ago."""
    conn.execute(
        "update public.jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )


def balance(conn: psycopg.Connection, user_id: Any) -> int:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("select balance from public.credit_accounts where user_id = %s", (user_id,))
        return cur.fetchone()[0]


def job_row(conn: psycopg.Connection, job_id: Any) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from public.jobs where id = %s", (job_id,))
        return cur.fetchone()


def ledger_for_job(conn: psycopg.Connection, job_id: Any) -> list[tuple[str, int]]:
    """[(entry_type, amount)] for one job, in insertion order."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            "select entry_type, amount from public.credit_ledger where job_id = %s order by id",
            (job_id,),
        )
        return cur.fetchall()


def discrepancies(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from public.credit_discrepancies")
        return cur.fetchall()


def unpaid_or_orphan_charges(conn: psycopg.Connection) -> list[dict]:
    """Priced jobs without exactly one charge of their price, and charges without a job."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            select j.id, j.cost, count(l.id) as charges, sum(l.amount) as charged
            from public.jobs j
            left join public.credit_ledger l on l.job_id = j.id and l.entry_type = 'charge'
            where j.cost > 0
            group by j.id, j.cost
            having count(l.id) <> 1 or sum(l.amount) <> -j.cost
            union all
            select l.job_id, null, 1, l.amount
            from public.credit_ledger l
            where l.entry_type = 'charge'
              and not exists (select from public.jobs j where j.id = l.job_id)
            """
        )
        return cur.fetchall()


def broken_balance_after_chain(conn: psycopg.Connection) -> list[dict]:
    """Ledger entries whose balance_after isn't the running sum of that user's amounts, and
    accounts whose balance isn't their last entry's balance_after."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            with chain as (
              select id, user_id, balance_after,
                     sum(amount) over (partition by user_id order by id) as running,
                     row_number() over (partition by user_id order by id desc) as from_last
              from public.credit_ledger
            )
            select c.id, c.user_id, c.balance_after, c.running, a.balance
            from chain c join public.credit_accounts a using (user_id)
            where c.balance_after <> c.running or (c.from_last = 1 and a.balance <> c.balance_after)
            """
        )
        return cur.fetchall()


def slow_down_job_updates(conn: psycopg.Connection, seconds: float) -> None:
    """Make every UPDATE of a job row take `seconds` longer (test database only).

    Widens race windows, so a missing row lock shows up on every run, not once in a while.
    """
    conn.execute(
        f"""
        create function public.test_slow_job_update() returns trigger
        language plpgsql as $$ begin perform pg_sleep({float(seconds)}); return new; end $$;
        create trigger test_slow_job_update before update on public.jobs
          for each row execute function public.test_slow_job_update();
        """
    )
