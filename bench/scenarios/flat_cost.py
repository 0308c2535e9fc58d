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

import random
import time
from collections import defaultdict, deque
from typing import Any

import psycopg

from bench.harness import USER_ID_SQL, Context, user_id
from bench.load import median, percentile

HOT = "bench"  # the kind every measured create and claim uses
# kind, paused, pipeline: unrelated work next to it, never due during the measurement
BACKLOG_KINDS = (
    ("bench_other", False, None),
    ("bench_paused", True, None),
    ("bench_push", False, "webhook"),
)
HISTORY_USER = 1  # owns a fixed history (and no backlog), so every list_jobs page reads alike
HISTORY_JOBS = 30
CHUNKS = 10

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

# The history user's jobs: created and cancelled (a charge and a refund each).
HISTORY = (
    "select count(public.cancel_job(p_job_id => (j ->> 'id')::uuid, p_user_id => u))"
    " from (select %s::uuid as u) o,"
    " lateral (select public.create_job(p_user_id => u, p_kind => %s) -> 'job' as j"
    "  from generate_series(1, %s)) c"
)
CREATE = "select public.create_job(p_user_id => %s, p_kind => %s)"
CLAIM = "select public.claim_jobs(p_worker_id => 'bench', p_kinds => %s, p_limit => %s)"
CANCEL = "select public.cancel_job(p_job_id => %s, p_user_id => %s)"
OPERATIONS = (
    "create_job",
    "cancel_job",
    "claim_jobs (kind)",
    "claim_jobs (any kind)",
    "heartbeat_job",
    "apply_pipeline_report",
    "complete_job",
    "fail_job",
    "reap_stalled_jobs (nothing due)",
    "take_jobs_to_dispatch (nothing due)",
    "fail_unstarted_jobs (nothing due)",
    "list_jobs (first page)",
    "get_credits (first page)",
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


REPORT = "select public.{}(p_job_id => %s, p_attempt => %s{})"
HISTORY_PAGE = "select public.{}(p_user_id => %s, p_limit => 20)"
SCAN = "select public.{}(p_limit => 100)"


class Probe:
    """One database of one backlog size, its connection, the jobs it has in play and timings.

    Jobs flow from operation to operation: created -> (cancelled | claimed) -> heartbeat ->
    completed, or claimed -> reported -> failed.
    """

    def __init__(self, url: str, size: int, users: int, seed: int) -> None:
        self.url, self.size, self.users = url, size, users
        self.conn = psycopg.connect(url, autocommit=True)
        self.rng = random.Random(seed)
        self.reset()

    def reset(self) -> None:
        """A new round: no timings, and jobs left over from the last round are not reused."""
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.created: deque[tuple[dict, Any]] = deque()
        self.claimed: deque[dict] = deque()
        self.beating: deque[dict] = deque()
        self.reported: deque[dict] = deque()

    def timed(self, op: str, sql: str, params: tuple = ()) -> Any:
        started = time.perf_counter()
        (body,) = self.conn.execute(sql, params).fetchone()
        self.timings[op].append((time.perf_counter() - started) * 1000)
        return body

    def report(self, op: str, source: deque[dict], sink: deque[dict] | None, extra: str) -> None:
        job = source.popleft()
        self.timed(op, REPORT.format(op, extra), (job["id"], job["attempt"]))
        if sink is not None:
            sink.append(job)

    def run(self, op: str, n: int) -> None:
        for _ in range(n):
            self.step(op)

    def step(self, op: str) -> None:
        function = op.split()[0]
        if op == "create_job":
            owner = user_id(self.rng.randint(2, self.users))
            self.created.append((self.timed(op, CREATE, (owner, HOT))["job"], owner))
        elif op == "cancel_job":
            job, owner = self.created.popleft()
            self.timed(op, CANCEL, (job["id"], owner))
        elif function == "claim_jobs":
            kinds = [HOT] if op == "claim_jobs (kind)" else None
            self.claimed.extend(self.timed(op, CLAIM, (kinds, 1))["jobs"])
        elif op == "heartbeat_job":
            self.report(op, self.claimed, self.beating, ", p_progress => 50")
        elif op == "apply_pipeline_report":
            extra = ", p_status => 'processing', p_progress => 50"
            self.report(op, self.claimed, self.reported, extra)
        elif op == "complete_job":
            self.report(op, self.beating, None, ", p_result => '{\"ok\": true}'")
        elif op == "fail_job":
            self.report(op, self.reported, None, ", p_error => 'bench'")
        elif function in ("list_jobs", "get_credits"):
            self.timed(op, HISTORY_PAGE.format(function), (user_id(HISTORY_USER),))
        else:
            self.timed(op, SCAN.format(function))


# How many calls of each operation per sample unit: claims need jobs created, and so on down.
PER_UNIT = {"create_job": 4, "claim_jobs (kind)": 2}


def _measure(ctx: Context, probes: list[Probe], samples: int) -> None:
    """Every operation, chunk by chunk, the databases in turn."""
    for op in OPERATIONS:
        calls = PER_UNIT.get(op, 1) * samples
        ctx.server.checkpoint()
        for chunk in range(CHUNKS):
            share = calls // CHUNKS + (chunk < calls % CHUNKS)
            for probe in probes:
                probe.run(op, share)


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "calls": len(latencies),
        "p50_ms": round(median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }


def _flat_cost(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    sizes = cfg.flat_backlogs
    probes = []
    for size in sizes:
        url = ctx.core_copy(f"s7_{size}")
        with psycopg.connect(url, autocommit=True) as conn:
            setup(conn)
            conn.execute(HISTORY, (user_id(HISTORY_USER), HOT, HISTORY_JOBS))
            ctx.log(f"s7 flat cost: loading {size:,} queued + {size:,} in flight ...")
            started = time.monotonic()
            load_backlog(conn, 1, size, cfg.users)  # analyzed at every size, as in production
            ctx.log(f"    loaded in {time.monotonic() - started:.0f} s")
        probes.append(Probe(url, size, cfg.users, seed=size))
    rounds = []
    for round_no in range(1, cfg.runs + 1):
        ctx.log(f"s7 flat cost, round {round_no}/{cfg.runs}: {cfg.flat_samples} samples each")
        for probe in probes:
            probe.reset()
        _measure(ctx, probes, cfg.flat_samples)
        rounds.append(
            {str(p.size): {op: _summary(p.timings[op]) for op in OPERATIONS} for p in probes}
        )
    for probe in probes:
        probe.conn.close()
        ctx.drop(probe.url)
    base = str(sizes[0])
    operations: dict[str, Any] = {}
    for op in OPERATIONS:
        by_size = {}
        for size in map(str, sizes):
            p50s = [r[size][op]["p50_ms"] for r in rounds]
            ratios = [r[size][op]["p50_ms"] / r[base][op]["p50_ms"] for r in rounds]
            by_size[size] = {
                "p50_ms": round(median(p50s), 3),
                "p99_ms": round(median([r[size][op]["p99_ms"] for r in rounds]), 3),
                "ratio": round(median(ratios), 3),
            }
        operations[op] = by_size
        growth = "  ".join(
            f"{int(s):>9,}: {v['p50_ms']:6.3f} ms x{v['ratio']:.2f}" for s, v in by_size.items()
        )
        ctx.log(f"    {op:<36} {growth}")
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
