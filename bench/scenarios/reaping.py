"""Scenario 6: reaping 100,000 stalled jobs while scenario 1's create_job traffic runs.

The stalled jobs are bulk-created (INSERT ... SELECT generate_series): `processing`, lease expired
half an hour ago, of the `bench_reap` kind (one attempt, so each is failed and refunded), each with
its charge in the ledger and the balance lowered to match, so the refunds keep
balance = sum(ledger). Then, on the same database: create_job from N clients while idle, then again
while one connection calls reap_stalled_jobs(batch) back to back until nothing is left. Every
batch size of the config is measured; the first is the function's default.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.harness import USER_ID_SQL, Context, medians, ratio
from bench.load import median

LOAD_STALLED = (
    "insert into public.projects (user_id, title) select id, 'reaping' from auth.users",
    "insert into public.jobs (user_id, project_id, kind, status, attempt, cost, worker_id,"
    " created_at, started_at, lease_expires_at)"
    " select p.user_id, p.id, 'bench_reap', 'processing', 1, 1, 'vanished-worker',"
    "  now() - interval '1 hour', now() - interval '1 hour',"
    "  now() - interval '30 minutes' - g * interval '1 millisecond'"
    " from generate_series(1, %(jobs)s) g"
    " join public.projects p on p.user_id = " + USER_ID_SQL.format(n="1 + g %% %(users)s"),
    # The charges these jobs would have made, in order, then the balances they leave.
    "insert into public.credit_ledger (user_id, job_id, entry_type, amount, balance_after, reason)"
    " select j.user_id, j.id, 'charge', -j.cost,"
    "  a.balance - sum(j.cost) over (partition by j.user_id order by j.id), 'bench: stalled job'"
    " from public.jobs j join public.credit_accounts a using (user_id)"
    " where j.kind = 'bench_reap' order by j.user_id, j.id",
    "update public.credit_accounts a set balance = a.balance - c.total"
    " from (select user_id, sum(cost) total from public.jobs where kind = 'bench_reap'"
    "  group by user_id) c where c.user_id = a.user_id",
    # ...taken from each user's one grant (unallocated: their refunds come back as new grants)
    "update public.credit_grants g set remaining = g.remaining - c.total"
    " from (select user_id, sum(cost) total from public.jobs where kind = 'bench_reap'"
    "  group by user_id) c where c.user_id = g.user_id",
    "vacuum analyze",
)


def _reap_all(url: str, batch: int) -> dict[str, Any]:
    """Call reap_stalled_jobs until a batch finds nothing; return the totals."""
    reaped = batches = 0
    slowest = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        while True:
            batch_started = time.monotonic()
            (body,) = conn.execute(
                "select public.reap_stalled_jobs(p_limit => %s)", (batch,)
            ).fetchone()
            slowest = max(slowest, time.monotonic() - batch_started)
            if body["reaped"] == 0:
                break
            reaped += body["reaped"]
            batches += 1
        seconds = time.monotonic() - started
    return {
        "reap_seconds": round(seconds, 2),
        "reaped": reaped,
        "batches": batches,
        "slowest_batch_ms": round(slowest * 1000, 1),
    }


def _one_run(ctx: Context, batch: int) -> dict[str, Any]:

    cfg = ctx.config
    url = ctx.core_copy("s6")
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in LOAD_STALLED:
            conn.execute(statement, {"jobs": cfg.stalled_jobs, "users": cfg.users})
    op, clients = "bench.scenarios.sql_core:create_job_op", cfg.foreground_clients
    params = {"users": cfg.users}
    idle, _ = ctx.measure(url, op, clients, seconds=cfg.seconds, warmup=cfg.warmup, params=params)
    idle_summary = ctx.record(f"create_job idle, {clients} clients", idle)
    busy, reap = ctx.measure(url, op, clients, during=lambda: _reap_all(url, batch), params=params)
    busy_summary = ctx.record(f"create_job while reaping (batch {batch})", busy)
    with psycopg.connect(url, autocommit=True) as conn:
        (left, refunds, discrepancies) = conn.execute(
            "select (select count(*) from public.stalled_jobs),"
            " (select count(*) from public.credit_ledger where entry_type = 'refund'),"
            " (select count(*) from public.credit_discrepancies)"
        ).fetchone()
    ctx.log(
        f"    reaped {reap['reaped']:,} in {reap['reap_seconds']} s ({reap['batches']} batches,"
        f" slowest {reap['slowest_batch_ms']} ms); {left} stalled left, {refunds:,} refunds,"
        f" {discrepancies} ledger discrepancies"
    )
    ctx.drop(url)
    return {
        **reap,
        "idle": idle_summary,
        "while_reaping": busy_summary,
        "p99_ratio": ratio(busy.p99_ms, idle.p99_ms),
        "stalled_left": left,
        "refunds": refunds,
        "ledger_discrepancies": discrepancies,
    }


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    by_batch: dict[str, Any] = {}
    for batch in cfg.reap_batches:
        runs = []
        for round_no in range(1, cfg.runs + 1):
            ctx.log(
                f"s6 reaping {cfg.stalled_jobs:,} stalled jobs, batch {batch},"
                f" round {round_no}/{cfg.runs}"
            )
            runs.append(_one_run(ctx, batch))
        by_batch[str(batch)] = {
            "median": {
                "reap_seconds": round(median([r["reap_seconds"] for r in runs]), 2),
                "p99_ratio": round(median([r["p99_ratio"] or 0 for r in runs]), 3),
                "idle": medians([r["idle"] for r in runs]),
                "while_reaping": medians([r["while_reaping"] for r in runs]),
            },
            "runs": runs,
        }
    first = by_batch[str(cfg.reap_batches[0])]
    return {
        "stalled_jobs": cfg.stalled_jobs,
        "foreground_clients": cfg.foreground_clients,
        "batch": cfg.reap_batches[0],
        "median": first["median"],
        "by_batch": by_batch,
    }
