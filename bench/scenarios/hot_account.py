"""Scenario 2: one hot account. Every client creates jobs for the same user, so every create_job
waits for the account row lock; the reference is pgbench updating one single row just as hard.
"""

from __future__ import annotations

from typing import Any

from bench.harness import USER_ID_SQL, Context, Series

ONE_ROW_SCRIPT = "update bench_hot_row set n = n + 1 where id = 1;\n"
HOT_CREATE_JOB_SCRIPT = (
    "select public.create_job(p_user_id => " + USER_ID_SQL.format(n="1") + ", p_kind => 'bench');\n"
)


def run(ctx: Context) -> dict[str, Any]:

    cfg = ctx.config
    clients = cfg.hot_clients
    series = Series()
    for round_no in range(1, cfg.runs + 1):
        ctx.log(f"s2 hot account, round {round_no}/{cfg.runs}, {clients} clients")
        result = ctx.run_pgbench(None, clients, script=ONE_ROW_SCRIPT)
        series.add("one_row_update", clients, ctx.record("pgbench one-row update", result))

        url = ctx.core_copy("s2")
        result = ctx.run_pgbench(url, clients, script=HOT_CREATE_JOB_SCRIPT)
        summary = ctx.record("create_job, one user (pgbench)", result)
        series.add("hot_create_job_pgbench", clients, summary)
        ctx.drop(url)  # before the next measurement, so its autovacuum cannot overlap it

        url = ctx.core_copy("s2")
        result, _ = ctx.measure(
            url, "bench.scenarios.sql_core:create_job_op", clients,
            seconds=cfg.seconds, warmup=cfg.warmup, params={"users": 1, "user": 1},
        )  # fmt: skip
        series.add("hot_create_job", clients, ctx.record("create_job, one user (Python)", result))
        ctx.drop(url)
    return {
        "clients": clients,
        "series": series.as_dict(),
        "ratio": series.paired_ratio("hot_create_job", "one_row_update", clients),
        "ratio_pgbench": series.paired_ratio("hot_create_job_pgbench", "one_row_update", clients),
    }
