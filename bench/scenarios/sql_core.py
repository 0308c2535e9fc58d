"""Scenario 1: the SQL core next to PostgreSQL's limit.

Per round and client count, back to back on the same server: pgbench's built-in tpcb-like (on its
own database, scale from the config), create_job driven by pgbench (same driver as tpcb-like),
create_job from Python (psycopg, as the functions call it) and the full lifecycle from Python
(create_job -> claim_jobs -> complete_job). Each of ours runs on a fresh copy of the core data set
(10,000 users), so every measurement starts from the same state.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import USER_ID_SQL, Context, Series, user_id

CREATE_JOB_SQL = "select public.create_job(p_user_id => %s, p_kind => %s)"
CLAIM_SQL = "select public.claim_jobs(p_worker_id => %s, p_kinds => %s, p_limit => 1)"
COMPLETE_SQL = "select public.complete_job(p_job_id => %s, p_attempt => %s, p_result => %s)"

# The same call from pgbench: a random user of 1..:users, one statement per transaction.
CREATE_JOB_SCRIPT = (
    "\\set n random(1, :users)\n"
    "select public.create_job(p_user_id => "
    + USER_ID_SQL.format(n=":n::int")
    + ", p_kind => 'bench');\n"
)


def create_job_op(
    conn: psycopg.Connection, client_id: int, params: dict[str, Any]
) -> Callable[[], str | None]:
    """One create_job for a random user (or params['user'] for all clients)."""
    rng = random.Random(client_id)
    users, fixed = params["users"], params.get("user")

    def call() -> str | None:
        n = fixed or rng.randint(1, users)
        conn.execute(CREATE_JOB_SQL, (user_id(n), "bench")).fetchone()
        return None

    return call


def lifecycle_op(
    conn: psycopg.Connection, client_id: int, params: dict[str, Any]
) -> Callable[[], str | None]:
    """create_job, then claim one job (any client's: it is a queue) and complete it."""
    rng = random.Random(client_id)
    users, worker = params["users"], f"bench-{client_id}"

    def call() -> str | None:
        conn.execute(CREATE_JOB_SQL, (user_id(rng.randint(1, users)), "bench")).fetchone()
        (claimed,) = conn.execute(CLAIM_SQL, (worker, ["bench"])).fetchone()
        if not claimed["jobs"]:
            return "nothing_claimed"
        job = claimed["jobs"][0]
        conn.execute(COMPLETE_SQL, (job["id"], job["attempt"], Jsonb({"ok": True}))).fetchone()
        return "completed"

    return call


def run(ctx: Context) -> dict[str, Any]:

    cfg = ctx.config
    series = Series()
    params = {"users": cfg.users}
    for round_no in range(1, cfg.runs + 1):
        for clients in cfg.clients:
            ctx.log(f"s1 SQL core, round {round_no}/{cfg.runs}, {clients} clients")
            result = ctx.run_pgbench(None, clients, builtin="tpcb-like", vacuum=True)
            series.add("tpcb_like", clients, ctx.record("pgbench tpcb-like", result))

            # Each copy is dropped right after its measurement: left behind, its autovacuum would
            # run during the next round's tpcb-like and skew the paired ratio.
            url = ctx.core_copy("s1")
            result = ctx.run_pgbench(url, clients, script=CREATE_JOB_SCRIPT, variables=params)
            series.add("create_job_pgbench", clients, ctx.record("create_job (pgbench)", result))
            ctx.drop(url)

            url = ctx.core_copy("s1")
            result, _ = ctx.measure(
                url, f"{__name__}:create_job_op", clients,
                seconds=cfg.seconds, warmup=cfg.warmup, params=params,
            )  # fmt: skip
            series.add("create_job", clients, ctx.record("create_job (Python)", result))
            ctx.drop(url)

            url = ctx.core_copy("s1")
            result, _ = ctx.measure(
                url, f"{__name__}:lifecycle_op", clients,
                seconds=cfg.seconds, warmup=cfg.warmup, params=params,
            )  # fmt: skip
            # A lifecycle is one completed job (three transactions).
            result.ops = result.outcomes["completed"]
            series.add("lifecycle", clients, ctx.record("lifecycle (Python, 3 calls)", result))
            ctx.drop(url)
    ratios = {
        name: {str(c): series.paired_ratio(name, "tpcb_like", c) for c in cfg.clients}
        for name in ("create_job", "create_job_pgbench", "lifecycle")
    }
    return {
        "pgbench_scale": cfg.pgbench_scale,
        "users": cfg.users,
        "series": series.as_dict(),
        "ratios_to_tpcb_like": ratios,
    }
