"""Scenario 7: flat cost and fair claims.

Flat cost: one database per backlog size (0, 100,000, 1,000,000 by default), each holding that
many unrelated jobs queued (another queue kind, a paused kind, delayed retries of the measured
kind, pushed jobs waiting on their pipeline) and as many in flight, bulk-loaded with
INSERT ... SELECT generate_series (free jobs: cost 0, so the ledger needs no entries). Then each hot
operation is timed call by call on one connection per database, as a worker or a function
instance issues it; the databases take turns in small chunks so a noisy neighbour hits every size
alike. Figures are medians per size, growth the ratio to the empty queue (median over rounds).

Fairness: one user creates `fair_heavy_jobs` jobs of a kind through create_job, then
`fair_other_users` other users one each; the next claims, one at a time and then in batches of 10
(after as many new single jobs), are counted by whom they serve.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.harness import USER_ID_SQL, Context, user_id
from bench.load import median
from bench.probe import CLAIM, CREATE, HOT, OPERATIONS, Probe, add_history, growth, time_rounds

# kind, paused, pipeline: unrelated work next to it, never due during the measurement
BACKLOG_KINDS = (
    ("bench_other", False, None),
    ("bench_paused", True, None),
    ("bench_push", False, "webhook"),
)
SETUP = (
    "insert into public.projects (user_id, title) select id, 'backlog' from auth.users",
    "insert into public.job_kinds (kind, cost, paused, pipeline, dispatch_timeout_seconds)"
    " select kind, 0, paused, pipeline, 604800"
    " from unnest(%(kinds)s::text[], %(paused)s::boolean[], %(pipelines)s::text[])"
    "  as k(kind, paused, pipeline)",
)
# Jobs first..last: job g belongs to user 2 + g % (users - 1) (never the history user), in that
# user's round g / users + 1 of its kind. Queued, by g % 10: 0-2 waiting in another queue kind,
# 3-4 waiting in a paused kind, 5-6 retries of the measured kind waiting out an hour's delay, 7-9
# pushed and waiting on their pipeline (lease an hour ahead). In flight: processing, lease an
# hour ahead, of the measured kind, the other queue kind and the pushed kind in turn.
LOAD_QUEUED = (
    "insert into public.jobs (user_id, project_id, kind, status, attempt, cost, pushed, fair_key,"
    " available_at, dispatched_at, lease_expires_at, created_at)"
    " select p.user_id, p.id, s.kind, 'pending', s.attempt, 0, s.pushed, s.fair_key,"
    "  s.available_at, s.dispatched_at, s.lease_expires_at, now() - interval '1 minute'"
    " from generate_series(%(first)s::int, %(last)s::int) g"
    " cross join lateral (select g %% 10 as slot, g / %(users)s + 1 as round) x"
    " cross join lateral (select"
    "   case when x.slot < 3 then 'bench_other' when x.slot < 5 then 'bench_paused'"
    "        when x.slot < 7 then 'bench' else 'bench_push' end as kind,"
    "   case when x.slot between 5 and 9 then 1 else 0 end as attempt,"
    "   x.slot >= 7 as pushed,"
    "   case when x.slot < 5 then x.round end as fair_key,"
    "   case when x.slot between 5 and 6 then now() + interval '1 hour'"
    "        else now() - interval '1 minute' end as available_at,"
    "   case when x.slot >= 7 then now() - interval '1 minute' end as dispatched_at,"
    "   case when x.slot >= 7 then now() + interval '1 hour' end as lease_expires_at) s"
    " join public.projects p on p.user_id = " + USER_ID_SQL.format(n="2 + g %% (%(users)s - 1)")
)
LOAD_IN_FLIGHT = (
    "insert into public.jobs (user_id, project_id, kind, status, attempt, cost, pushed,"
    " worker_id, available_at, dispatched_at, started_at, lease_expires_at, created_at)"
    " select p.user_id, p.id, (array['bench', 'bench_other', 'bench_push'])[1 + g %% 3],"
    "  'processing', 1, 0, g %% 3 = 2, 'bench-backlog', now() - interval '2 minutes',"
    "  case when g %% 3 = 2 then now() - interval '2 minutes' end, now() - interval '1 minute',"
    "  now() + interval '1 hour' + g * interval '1 millisecond', now() - interval '2 minutes'"
    " from generate_series(%(first)s::int, %(last)s::int) g"
    " join public.projects p on p.user_id = " + USER_ID_SQL.format(n="2 + g %% (%(users)s - 1)")
)


def setup(conn: psycopg.Connection) -> None:
    """The backlog kinds and one project per user, on a fresh copy of the core data set."""
    kinds, paused, pipelines = zip(*BACKLOG_KINDS, strict=True)
    for statement in SETUP:
        conn.execute(
            statement, {"kinds": list(kinds), "paused": list(paused), "pipelines": list(pipelines)}
        )


def load_backlog(conn: psycopg.Connection, first: int, last: int, users: int) -> None:
    """Add jobs first..last queued and as many in flight (see LOAD_QUEUED), then analyze."""
    params = {"first": first, "last": last, "users": users}
    conn.execute(LOAD_QUEUED, params)
    conn.execute(LOAD_IN_FLIGHT, params)
    conn.execute("vacuum analyze public.jobs")


def _flat_cost(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    sizes = cfg.flat_backlogs
    probes = []
    for size in sizes:
        url = ctx.core_copy(f"s7_{size}")
        with psycopg.connect(url, autocommit=True) as conn:
            setup(conn)
            add_history(conn)
            ctx.log(f"s7 flat cost: loading {size:,} queued + {size:,} in flight ...")
            started = time.monotonic()
            load_backlog(conn, 1, size, cfg.users)  # analyzed at every size, as in production
            ctx.log(f"    loaded in {time.monotonic() - started:.0f} s")
        probes.append(Probe(url, size, cfg.users, seed=size))
    rounds = time_rounds(ctx, probes, OPERATIONS, cfg.flat_samples, label="s7 flat cost")
    for probe in probes:
        probe.close()
        ctx.drop(probe.url)
    operations = growth(ctx, rounds, sizes, OPERATIONS)
    return {
        "backlogs": sizes,
        "samples": cfg.flat_samples,
        "operations": operations,
        "rounds": rounds,
    }


def _fairness(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    heavy, others = cfg.fair_heavy_jobs, min(cfg.fair_other_users, (cfg.users - 1) // 2)
    url = ctx.core_copy("s7_fair")
    ctx.log(f"s7 fairness: user 1 creates {heavy:,} jobs, then {others} users one each")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "select count(public.create_job(p_user_id => %s, p_kind => %s))"
            " from generate_series(1, %s)",
            (user_id(1), HOT, heavy),
        )

        def create_singles(first: int) -> None:
            for n in range(first, first + others):
                conn.execute(CREATE, (user_id(n), HOT)).fetchone()

        def others_served(batch: int) -> tuple[int, float]:
            """Of the next `others` claims (rounded down to whole batches), how many served
            another user than the heavy one, and the median claim_jobs call."""
            served, latencies = 0, []
            for _ in range(others // batch):
                started = time.perf_counter()
                (body,) = conn.execute(CLAIM, ([HOT], batch)).fetchone()
                latencies.append((time.perf_counter() - started) * 1000)
                served += sum(job["id"] not in heavy_ids for job in body["jobs"])
            return served, median(latencies)

        heavy_ids = {
            str(row[0])
            for row in conn.execute("select id from public.jobs where user_id = %s", (user_id(1),))
        }
        create_singles(2)
        one_at_a_time, single_ms = others_served(1)
        create_singles(2 + others)
        in_batches, batch_ms = others_served(10)
    ctx.drop(url)
    ctx.log(
        f"    next {others} claims served {one_at_a_time} other users one at a time"
        f" ({single_ms:.2f} ms per claim), {in_batches} in batches of 10"
    )
    return {
        "heavy_jobs": heavy,
        "other_users": others,
        "served_one_at_a_time": one_at_a_time,
        "served_in_batches_of_10": in_batches,
        "claim_p50_ms": round(single_ms, 3),
        "batch_claim_p50_ms": round(batch_ms, 3),
    }


def run(ctx: Context) -> dict[str, Any]:
    return {**_flat_cost(ctx), "fairness": _fairness(ctx)}
