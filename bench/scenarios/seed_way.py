"""Scenario 3: the seed documents' way - check the balance, insert the job, update its status,
deduct - as four autocommit statements from Python, on tables of its own with no balance >= 0
constraint (as the seed had), next to create_job at the same concurrency.

Two measurements: throughput over 10,000 users with plenty of credits, and an overdraw trial where
few users can each pay for exactly N jobs and every client keeps trying: jobs created without money
(beyond what the balance paid for) and users left below zero, for the seed's way and for ours.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg

from bench.harness import Context, Series, user_id
from bench.scenarios.sql_core import CREATE_JOB_SQL

COST = 1  # the `bench` kind's price

NAIVE_SCHEMA = (
    "create table naive_accounts (user_id uuid primary key, balance bigint not null)",
    "create table naive_jobs (id uuid primary key default gen_random_uuid(),"
    " user_id uuid not null, kind text not null, cost integer not null,"
    " status text not null default 'pending', params jsonb not null default '{}',"
    " created_at timestamptz not null default now(),"
    " updated_at timestamptz not null default now())",
    "create index on naive_jobs (user_id, created_at desc)",
)


def naive_op(
    conn: psycopg.Connection, client_id: int, params: dict[str, Any]
) -> Callable[[], str | None]:
    """The seed's flow for a random user: four statements, each its own transaction."""
    rng = random.Random(client_id)
    users = params["users"]

    def call() -> str | None:
        uid = user_id(rng.randint(1, users))
        (balance,) = conn.execute(
            "select balance from naive_accounts where user_id = %s", (uid,)
        ).fetchone()
        if balance < COST:
            return "insufficient"
        (job_id,) = conn.execute(
            "insert into naive_jobs (user_id, kind, cost) values (%s, 'bench', %s) returning id",
            (uid, COST),
        ).fetchone()
        conn.execute(
            "update naive_jobs set status = 'processing', updated_at = now() where id = %s",
            (job_id,),
        )
        conn.execute(
            "update naive_accounts set balance = balance - %s where user_id = %s", (COST, uid)
        )
        return "created"

    return call


def ours_op(
    conn: psycopg.Connection, client_id: int, params: dict[str, Any]
) -> Callable[[], str | None]:
    """create_job for a random user; running out of credits is an outcome, not an error."""
    rng = random.Random(client_id)
    users = params["users"]

    def call() -> str | None:
        try:
            conn.execute(CREATE_JOB_SQL, (user_id(rng.randint(1, users)), "bench")).fetchone()
        except psycopg.Error as exc:
            if exc.sqlstate == "CJ001":
                return "insufficient"
            raise
        return "created"

    return call


def _naive_copy(ctx: Context, balance: int | None) -> str:
    """A core copy plus the seed's tables; every user's naive balance = `balance` (or theirs)."""
    url = ctx.core_copy("s3")
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in NAIVE_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "insert into naive_accounts select user_id, coalesce(%s, balance)"
            " from public.credit_accounts",
            (balance,),
        )
        conn.execute("analyze")
    return url


def _overdraw_trial(ctx: Context, clients: int) -> dict[str, Any]:

    cfg = ctx.config
    users, per_user = cfg.overdraw_users, cfg.overdraw_jobs_per_user
    url = _naive_copy(ctx, balance=per_user * COST)
    with psycopg.connect(url, autocommit=True) as conn:
        # Our side: bring users 1..N down to the same balance through the ledger.
        conn.execute(
            "select public.admin_grant_credits(user_id, %s - balance, 'overdraw trial')"
            " from public.credit_accounts where user_id = any(%s)",
            (per_user * COST, [user_id(n) for n in range(1, users + 1)]),
        )
    outcome = {}
    for side, op, jobs_table, accounts_table in (
        ("seed_way", "naive_op", "naive_jobs", "naive_accounts"),
        ("ours", "ours_op", "public.jobs", "public.credit_accounts"),
    ):
        result, _ = ctx.measure(
            url, f"{__name__}:{op}", clients,
            ops_per_client=cfg.overdraw_attempts_per_client, params={"users": users},
        )  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            (without_money, created) = conn.execute(
                f"select coalesce(sum(greatest(n - %s, 0)), 0), coalesce(sum(n), 0)"
                f" from (select count(*) n from {jobs_table} where kind = 'bench' group by user_id)"
                " per_user",
                (per_user,),
            ).fetchone()
            (below_zero,) = conn.execute(
                f"select count(*) from {accounts_table} where balance < 0"
            ).fetchone()
        outcome[side] = {
            "attempts": clients * cfg.overdraw_attempts_per_client,
            "jobs_created": int(created),
            "jobs_paid_for": users * per_user,
            "jobs_without_money": int(without_money),
            "users_below_zero": below_zero,
            "errors": dict(result.errors),
        }
        ctx.log(
            f"    overdraw trial {side:<9} {clients} clients: {created} jobs for"
            f" {users * per_user} paid, {without_money} without money, {below_zero} users < 0"
        )
    with psycopg.connect(url, autocommit=True) as conn:
        (discrepancies,) = conn.execute(
            "select count(*) from public.credit_discrepancies"
        ).fetchone()
    outcome["ours"]["ledger_discrepancies"] = discrepancies
    ctx.drop(url)
    return outcome


def run(ctx: Context) -> dict[str, Any]:

    cfg = ctx.config
    series = Series()
    trials: dict[str, list[dict[str, Any]]] = {}
    params = {"users": cfg.users}
    for round_no in range(1, cfg.runs + 1):
        for clients in cfg.clients:
            ctx.log(f"s3 the seed's way, round {round_no}/{cfg.runs}, {clients} clients")
            for name, op in (("seed_way", "naive_op"), ("create_job", "ours_op")):
                url = _naive_copy(ctx, balance=None)
                result, _ = ctx.measure(
                    url, f"{__name__}:{op}", clients,
                    seconds=cfg.seconds, warmup=cfg.warmup, params=params,
                )  # fmt: skip
                series.add(name, clients, ctx.record(name, result))
                ctx.drop(url)
            if clients > 1:
                trials.setdefault(str(clients), []).append(_overdraw_trial(ctx, clients))
    return {
        "series": series.as_dict(),
        "ratio_seed_way_to_create_job": {
            str(c): series.paired_ratio("seed_way", "create_job", c) for c in cfg.clients
        },
        "overdraw": {
            clients: {
                side: {
                    "jobs_without_money": [r[side]["jobs_without_money"] for r in rounds],
                    "users_below_zero": [r[side]["users_below_zero"] for r in rounds],
                    "jobs_paid_for": rounds[0][side]["jobs_paid_for"],
                    "attempts": rounds[0][side]["attempts"],
                }
                for side in ("seed_way", "ours")
            }
            | {"ledger_discrepancies": [r["ours"]["ledger_discrepancies"] for r in rounds]}
            for clients, rounds in trials.items()
        },
    }
