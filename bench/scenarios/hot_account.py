"""Scenario 2: one hot account. Every client creates jobs for the same user, so every create_job
waits for the account row lock; the reference is pgbench updating one single row just as hard.
Then what credit grants cost a charge: the same create_job for a user whose balance is one grant
and for a user with 20 active grants, at 1 client and at the hot-account concurrency.
"""

from __future__ import annotations

from typing import Any

import psycopg

from bench.harness import USER_ID_SQL, Context, Series

ONE_ROW_SCRIPT = "update bench_hot_row set n = n + 1 where id = 1;\n"
HOT_CREATE_JOB_SCRIPT = (
    "select public.create_job(p_user_id => " + USER_ID_SQL.format(n="1") + ", p_kind => 'bench');\n"
)
# User 2 gets 19 promo grants on top of its one: drawn first (lower priority numbers), each
# far larger than a run spends, so every charge meets all 20 live grants.
GRANTED_USER = 2
EXTRA_GRANTS = 19
ADD_GRANTS = (
    "select count(public.grant_credits(p_user_id => "
    + USER_ID_SQL.format(n=str(GRANTED_USER))
    + ","
    " p_amount => 100000000, p_reason => 'bench', p_category => 'promo', p_priority => 10 + g,"
    " p_expires_at => now() + interval '30 days' + g * interval '1 hour'))"
    " from generate_series(1, %(grants)s) g"
)


def _copy(ctx: Context, *, grants: bool = False) -> str:
    """A fresh core copy (with user 2's extra grants, analyzed)."""
    url = ctx.core_copy("s2")
    if grants:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ADD_GRANTS, {"grants": EXTRA_GRANTS})
            conn.execute("vacuum analyze")
    return url


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    clients = cfg.hot_clients
    grant_clients = sorted({1, clients})
    series = Series()
    for round_no in range(1, cfg.runs + 1):
        ctx.log(f"s2 hot account, round {round_no}/{cfg.runs}, {clients} clients")
        result = ctx.run_pgbench(None, clients, script=ONE_ROW_SCRIPT)
        series.add("one_row_update", clients, ctx.record("pgbench one-row update", result))

        url = _copy(ctx)
        result = ctx.run_pgbench(url, clients, script=HOT_CREATE_JOB_SCRIPT)
        summary = ctx.record("create_job, one user (pgbench)", result)
        series.add("hot_create_job_pgbench", clients, summary)
        ctx.drop(url)  # before the next measurement, so its autovacuum cannot overlap it

        url = _copy(ctx)
        result, _ = ctx.measure(
            url, "bench.scenarios.sql_core:create_job_op", clients,
            seconds=cfg.seconds, warmup=cfg.warmup, params={"users": 1, "user": 1},
        )  # fmt: skip
        series.add("hot_create_job", clients, ctx.record("create_job, one user (Python)", result))
        ctx.drop(url)

        for n in grant_clients:
            for name, user, label in (
                ("single_grant", 1, "one grant"),
                ("twenty_grants", GRANTED_USER, f"{EXTRA_GRANTS + 1} grants"),
            ):
                url = _copy(ctx, grants=user == GRANTED_USER)
                result, _ = ctx.measure(
                    url, "bench.scenarios.sql_core:create_job_op", n,
                    seconds=cfg.seconds, warmup=cfg.warmup, params={"users": 1, "user": user},
                )  # fmt: skip
                summary = ctx.record(f"create_job, user with {label}, {n} clients", result)
                series.add(name, n, summary)
                ctx.drop(url)
    return {
        "clients": clients,
        "series": series.as_dict(),
        "ratio": series.paired_ratio("hot_create_job", "one_row_update", clients),
        "ratio_pgbench": series.paired_ratio("hot_create_job_pgbench", "one_row_update", clients),
        "ratio_twenty_grants_to_one": {
            str(n): series.paired_ratio("twenty_grants", "single_grant", n) for n in grant_clients
        },
    }
