"""Randomized concurrency: many clients doing everything at once never break the money invariants.

Eight threads, each with its own connection, run random creates, claims, heartbeats, completions,
failures, cancels, refunds, reaps (with leases forced to expire), admin grants and debits, grants
of every category with short expiries and replayed external ids, revocations and expiry sweeps
for a few seconds.
Business errors (shared.core.errors.SQLSTATE_ERRORS) are expected and counted; anything else (a
deadlock, a unique violation leaking out, a check violation) fails the test. Afterwards every
money invariant must hold.
Set CJ_RANDOM_SEED to replay a run's choices (thread timing still varies).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
from collections import Counter

import psycopg
import pytest

from shared.core.errors import SQLSTATE_ERRORS
from tests.integration.sqlfns import (
    add_kind,
    broken_balance_after_chain,
    call,
    connect,
    discrepancies,
    error_code,
    unpaid_or_orphan_charges,
)
from tests.integration.test_grants import assert_conserved

pytestmark = pytest.mark.integration

THREADS = 8
DURATION_SECONDS = 8.0
USERS = 4
# kind: (cost, max_attempts)
KINDS = {"quick": (3, 1), "story": (7, 3), "free": (0, 2), "pricey": (25, 2)}
# kind: max_active_per_user
LIMITS = {"story": 2}


class Workload:
    """Shared memory of what the clients have created and claimed, so reports hit real jobs."""

    def __init__(self, users: list, seed: int) -> None:
        self.users = users
        self.seed = seed
        self.jobs: list[tuple[str, object]] = []  # (job_id, user_id)
        self.attempts: list[tuple[str, int, int]] = []  # (job_id, attempt, cost)
        self.grants: list[str] = []
        self.tally: Counter = Counter()
        self.unexpected: list[str] = []
        self.lock = threading.Lock()

    def recent_job(self, rng: random.Random) -> tuple[str, object] | None:
        return rng.choice(self.jobs[-40:]) if self.jobs else None

    def recent_attempt(self, rng: random.Random) -> tuple[str, int, int] | None:
        return rng.choice(self.attempts[-40:]) if self.attempts else None

    def record(self, op: str, outcome: str) -> None:
        with self.lock:
            self.tally[op, outcome] += 1


def one_operation(conn: psycopg.Connection, work: Workload, rng: random.Random) -> None:
    op = rng.choices(
        [
            "create",
            "claim",
            "heartbeat",
            "complete",
            "fail",
            "cancel",
            "refund",
            "reap",
            "grant",
            "purchase",
            "revoke",
            "expire",
        ],
        weights=[30, 15, 8, 12, 8, 6, 4, 5, 4, 6, 3, 3],
    )[0]
    outcome = "skipped"
    try:
        match op:
            case "create":
                user = rng.choice(work.users)
                key = f"key-{rng.randrange(20)}" if rng.random() < 0.3 else None
                response = call(
                    conn,
                    "create_job",
                    user_id=user,
                    kind=rng.choice(list(KINDS)),
                    params={"n": rng.randrange(3)},
                    idempotency_key=key,
                    pipeline="webhook" if rng.random() < 0.2 else None,
                )
                job = response["job"]
                work.jobs.append((job["id"], user))
                if job["attempt"] == 1:
                    work.attempts.append((job["id"], 1, job["cost"]))
                outcome = "replayed" if response["replayed"] else "created"
            case "claim":
                kinds = rng.choice([None, ["story"], ["quick", "pricey"]])
                claimed = call(
                    conn, "claim_jobs", worker_id="w", kinds=kinds, limit=rng.randint(1, 3)
                )["jobs"]
                work.attempts.extend((j["id"], j["attempt"], j["cost"]) for j in claimed)
                outcome = "claimed" if claimed else "nothing"
            case "heartbeat" | "complete" | "fail":
                if picked := work.recent_attempt(rng):
                    job_id, attempt, cost = picked
                    if op == "heartbeat":
                        params = {"progress": rng.uniform(0, 100)}
                        function = "heartbeat_job"
                    elif op == "complete":
                        used = rng.choice([None, 0, cost, rng.randint(0, cost), cost + 1])
                        params = {"result": {"ok": True}, "credits_used": used}
                        function = "complete_job"
                    else:
                        params = {"error": "boom", "retryable": rng.random() < 0.6}
                        function = "fail_job"
                    outcome = call(conn, function, job_id=job_id, attempt=attempt, **params)[
                        "outcome"
                    ]
            case "cancel":
                if picked := work.recent_job(rng):
                    job_id, owner = picked
                    user = owner if rng.random() < 0.9 else rng.choice(work.users)
                    outcome = call(conn, "cancel_job", job_id=job_id, user_id=user)["outcome"]
            case "refund":
                if picked := work.recent_attempt(rng):
                    job_id, attempt, _cost = picked
                    outcome = call(
                        conn,
                        "refund_job_atomic",
                        job_id=job_id,
                        reason="random admin",
                        attempt=rng.choice([None, attempt]),
                    )["outcome"]
            case "reap":
                for _ in range(rng.randint(0, 3)):
                    conn.execute(
                        "update public.jobs set lease_expires_at = now() - interval '1 second'"
                        " where id = (select id from public.jobs where status = 'processing'"
                        " order by random() limit 1)"
                    )
                reaped = call(conn, "reap_stalled_jobs", limit=rng.randint(1, 5))
                work.record("reap:jobs", str(reaped["reaped"]))
                outcome = "reaped" if reaped["reaped"] else "nothing"
            case "grant":
                amount = rng.choice([rng.randint(1, 60), -rng.randint(1, 30)])
                user = rng.choice(work.users)
                call(conn, "admin_grant_credits", user_id=user, amount=amount, reason="random")
                outcome = "applied"
            case "purchase":
                expires = rng.choice([None, rng.uniform(0.2, 3.0)])
                granted = call(
                    conn,
                    "grant_credits",
                    user_id=rng.choice(work.users),
                    amount=rng.randint(1, 40),
                    reason="random purchase",
                    category=rng.choice(["paid", "subscription", "promo", "refund"]),
                    priority=rng.randint(0, 100),
                    expires_at=None
                    if expires is None
                    else dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires),
                    source="random",
                    external_id=f"pay-{rng.randrange(60)}" if rng.random() < 0.7 else None,
                )
                work.grants.append(granted["grant"]["id"])
                outcome = granted["outcome"]
            case "revoke":
                if work.grants:
                    grant_id = rng.choice(work.grants[-30:])
                    outcome = call(conn, "revoke_grant", grant_id=grant_id, reason="random")[
                        "outcome"
                    ]
            case "expire":
                swept = call(conn, "expire_credits", limit=rng.randint(1, 5))
                outcome = "expired" if swept["expired_grants"] else "nothing"
    except psycopg.Error as e:
        if e.sqlstate not in SQLSTATE_ERRORS:
            work.unexpected.append(f"{op}: {e!r}")
        outcome = error_code(e) or "no sqlstate"
    work.record(op, outcome)


def client(db_url: str, work: Workload, index: int, start: threading.Barrier) -> None:
    rng = random.Random(work.seed * 1000 + index)
    with connect(db_url) as conn:
        start.wait()
        deadline = time.monotonic() + DURATION_SECONDS
        try:
            while time.monotonic() < deadline:
                one_operation(conn, work, rng)
        except Exception as e:  # a bug in the workload itself must fail the test, not vanish
            work.unexpected.append(f"client {index} crashed: {e!r}")


def test_random_concurrent_operations_keep_every_money_invariant(conn, db_url, make_user):
    """G2, G3, G4, G7, G15: after thousands of racing random operations the ledger balances,
    nothing is negative, no job was charged or refunded twice, every finished job's money adds
    up, and no user is past a kind's active-job limit."""
    seed = int(os.environ.get("CJ_RANDOM_SEED", "20261122"))
    print(f"CJ_RANDOM_SEED={seed}")
    for kind, (cost, max_attempts) in KINDS.items():
        add_kind(
            conn,
            kind,
            cost,
            max_attempts=max_attempts,
            retry_delay_seconds=0,
            max_active_per_user=LIMITS.get(kind),
        )
    work = Workload([make_user(100) for _ in range(USERS)], seed)
    start = threading.Barrier(THREADS)

    threads = [
        threading.Thread(target=client, args=(db_url, work, i, start)) for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION_SECONDS + 60)

    print(sorted(work.tally.items()))
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert work.unexpected == []
    for must_happen in [
        ("create", "created"),
        ("create", "too_many_active_jobs"),
        ("complete", "applied"),
        ("fail", "refunded"),
        ("fail", "retried"),
        ("cancel", "refunded"),
        ("reap", "reaped"),
        ("purchase", "applied"),
        ("purchase", "duplicate"),
        ("revoke", "applied"),
    ]:
        assert work.tally[must_happen] > 0, f"the workload never exercised {must_happen}"

    # grants expired during the run (by the sweep, or by the money function that met them first)
    expiries = conn.execute(
        "select count(*) as n from public.credit_ledger where entry_type = 'expiry'"
    ).fetchone()["n"]
    assert expiries > 0, "the workload never expired a grant"
    assert discrepancies(conn) == []
    assert broken_balance_after_chain(conn) == []
    assert unpaid_or_orphan_charges(conn) == []
    negative = conn.execute("select * from public.credit_accounts where balance < 0").fetchall()
    assert negative == []
    over_the_limit = conn.execute(
        "select user_id, kind, count(*) from public.jobs join public.job_kinds using (kind)"
        " where status in ('pending', 'processing')"
        " group by user_id, kind, max_active_per_user having count(*) > max_active_per_user"
    ).fetchall()
    assert over_the_limit == []
    twice = conn.execute(
        "select job_id, entry_type, count(*) from public.credit_ledger where job_id is not null"
        " group by job_id, entry_type having count(*) > 1"
    ).fetchall()
    assert twice == []
    # per job: price - refunds = credits used (completed), = 0 (failed, cancelled); and the
    # ledger says the same: -charge - refund = what the job's row says was kept
    unbalanced_jobs = conn.execute(
        """
        with money as (
        select j.id, j.status, j.cost, j.credits_used, j.refunded,
               coalesce(sum(-l.amount) filter (where l.entry_type = 'charge'), 0) as ledger_charge,
               coalesce(sum(l.amount) filter (where l.entry_type = 'refund'), 0) as ledger_refund
        from public.jobs j
        left join public.credit_ledger l on l.job_id = j.id
        group by j.id
        )
        select * from money
        where refunded <> ledger_refund
           or ledger_charge <> cost
           or case status
                when 'completed' then cost - refunded <> credits_used
                when 'failed' then refunded <> cost
                when 'cancelled' then refunded <> cost
                else refunded <> 0
              end
           or ledger_charge - ledger_refund <> coalesce(credits_used, case
                when status in ('failed', 'cancelled') then 0 else cost end)
        """
    ).fetchall()
    assert unbalanced_jobs == []
    # every charge was drawn from grants and every refund went back through them (G10)
    unallocated = conn.execute(
        """
        select j.id from public.jobs j
        left join public.credit_allocations a on a.job_id = j.id
        where j.cost > 0
        group by j.id, j.cost, j.refunded
        having coalesce(sum(a.amount), 0) <> j.cost or coalesce(sum(a.returned), 0) <> j.refunded
        """
    ).fetchall()
    assert unallocated == []
    for user in work.users:
        assert_conserved(conn, user)
    # G12: every job end, grant, expiry and threshold crossing has exactly its one event, and a
    # job's event says what its row says was refunded
    disagreeing = conn.execute(
        """
        with expected as (
          select 'job.' || status as type, id::text as subject, refunded::bigint as refunded
          from public.jobs where status in ('completed', 'failed', 'cancelled')
          union all
          select case entry_type when 'grant' then 'credits.granted' else 'credits.expired' end,
                 id::text, null
          from public.credit_ledger where entry_type in ('grant', 'expiry')
          union all
          select crossing.type, l.id::text, null
          from public.credit_ledger l
          join public.credit_accounts a using (user_id)
          cross join public.credit_settings s
          cross join lateral (
            select 'credits.low' as type
            where l.balance_after - l.amount >= coalesce(a.low_balance_threshold,
                                                         s.low_balance_threshold)
              and l.balance_after < coalesce(a.low_balance_threshold, s.low_balance_threshold)
            union all
            select 'credits.depleted' where l.balance_after = 0
          ) crossing
          where l.amount < 0
        ), written as (
          select type,
                 coalesce(payload->'job'->>'id', payload->>'entry_id'),
                 (payload->>'refunded')::bigint
          from public.credit_events
        )
        select 'missing' as problem, *
        from (select * from expected except all select * from written) m
        union all
        select 'unexpected', * from (select * from written except all select * from expected) u
        """
    ).fetchall()
    assert disagreeing == []
