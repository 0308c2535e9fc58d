"""Call-by-call timing of the hot operations on several databases that take turns.

Shared by the `flat_cost` scenario (databases that differ by the backlog waiting) and `scaling`
(databases that differ by the history kept). A `Probe` is one database with one connection,
timing each operation as a worker or a function instance issues it; `time_rounds` runs every
operation in small chunks, the databases in turn, so a noisy neighbour hits every size alike;
`growth` reduces the rounds to medians per size and the ratio to the first size (the median of
the per-round ratios).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from bench.harness import Context, user_id
from bench.load import median, percentile

HOT = "bench"  # the kind every measured create and claim uses
HISTORY_USER = 1  # whose history pages are read; never the owner of a measured job
HISTORY_JOBS = 30
CHUNKS = 10

# The history user's own jobs: created and cancelled (a charge and a refund each).
HISTORY = (
    "select count(public.cancel_job(p_job_id => (j ->> 'id')::uuid, p_user_id => u))"
    " from (select %s::uuid as u) o,"
    " lateral (select public.create_job(p_user_id => u, p_kind => %s) -> 'job' as j"
    "  from generate_series(1, %s)) c"
)
CREATE = "select public.create_job(p_user_id => %s, p_kind => %s)"
CLAIM = "select public.claim_jobs(p_worker_id => 'bench', p_kinds => %s, p_limit => %s)"
CANCEL = "select public.cancel_job(p_job_id => %s, p_user_id => %s)"
REPORT = "select public.{}(p_job_id => %s, p_attempt => %s{})"
HISTORY_PAGE = "select public.{}(p_user_id => %s, p_limit => 20)"
SCAN = "select public.{}(p_limit => 100)"
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
# How many calls of each operation per sample unit: claims need jobs created, and so on down.
PER_UNIT = {"create_job": 4, "claim_jobs (kind)": 2}


def add_history(conn: psycopg.Connection) -> None:
    """The history user's HISTORY_JOBS jobs, through create_job and cancel_job."""
    conn.execute(HISTORY, (user_id(HISTORY_USER), HOT, HISTORY_JOBS))


class Probe:
    """One database of one size, its connection, the jobs it has in play and timings.

    Jobs flow from operation to operation: created -> (cancelled | claimed) -> heartbeat ->
    completed, or claimed -> reported -> failed. Subclasses add operations by overriding step().
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

    def close(self) -> None:
        self.conn.close()

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

    def owner(self) -> Any:
        """A random user other than the history user, to own a measured job."""
        return user_id(self.rng.randint(2, self.users))

    def step(self, op: str) -> None:
        function = op.split()[0]
        if op == "create_job":
            owner = self.owner()
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


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "calls": len(latencies),
        "p50_ms": round(median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }


def time_rounds(
    ctx: Context,
    probes: Sequence[Probe],
    operations: Iterable[str],
    samples: int,
    calls: Callable[[str], int] | None = None,
    label: str = "",
) -> list[dict[str, Any]]:
    """config.runs rounds of every operation, chunk by chunk, the databases in turn; returns
    one {size: {op: summary}} per round. calls(op) is how many calls an operation gets per
    round (default: PER_UNIT x samples)."""
    operations = list(operations)
    calls = calls or (lambda op: PER_UNIT.get(op, 1) * samples)
    rounds = []
    for round_no in range(1, ctx.config.runs + 1):
        ctx.log(f"{label}, round {round_no}/{ctx.config.runs}: {samples} samples each")
        for probe in probes:
            probe.reset()
        for op in operations:
            n = calls(op)
            ctx.server.checkpoint()
            for chunk in range(CHUNKS):
                share = n // CHUNKS + (chunk < n % CHUNKS)
                for probe in probes:
                    probe.run(op, share)
        rounds.append(
            {str(p.size): {op: summary(p.timings[op]) for op in operations} for p in probes}
        )
    return rounds


def growth(
    ctx: Context, rounds: list[dict[str, Any]], sizes: Sequence[int], operations: Iterable[str]
) -> dict[str, Any]:
    """Per operation and size: the median p50 and p99 over rounds, and the median over rounds
    of p50 / the first size's p50; each operation logged as one line."""
    base = str(sizes[0])
    result: dict[str, Any] = {}
    for op in operations:
        by_size = {}
        for size in map(str, sizes):
            ratios = [r[size][op]["p50_ms"] / r[base][op]["p50_ms"] for r in rounds]
            by_size[size] = {
                "p50_ms": round(median([r[size][op]["p50_ms"] for r in rounds]), 3),
                "p99_ms": round(median([r[size][op]["p99_ms"] for r in rounds]), 3),
                "ratio": round(median(ratios), 3),
            }
        result[op] = by_size
        line = "  ".join(
            f"{int(s):>10,}: {v['p50_ms']:8.3f} ms x{v['ratio']:.2f}" for s, v in by_size.items()
        )
        ctx.log(f"    {op:<36} {line}")
    return result
