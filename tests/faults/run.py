"""One fault run: start the stack, let clients buy while the schedule injects faults, heal, let
maintenance converge, then check every invariant and every answer. `run(Config(...))` returns
the Report; `python -m tests.faults` (scripts/faults) prints it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.checks import Check, FinalState, answer_checks, money_checks
from tests.faults.clients import Caller, Client, Journal, Maintenance
from tests.faults.faults import Injector, plan
from tests.faults.stack import KINDS, Stack, events
from tests.integration.http_helpers import MAINTENANCE_TOKEN

MAINTENANCE_INTERVAL_SECONDS = 2.0


@dataclass
class Config:
    seed: int = 1
    minutes: float = 2.0
    clients: int = 6
    web_workers: int = 2
    web_threads: int = 4
    queue_workers: int = 2
    worker_concurrency: int = 2
    converge_seconds: float = 120.0
    pg_bin: Path | None = None
    run_dir: Path | None = None
    keep: bool = False


@dataclass
class Report:
    config: Config
    schedule_digest: str
    figures: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def failures(self) -> list[str]:
        return [f"{check.name}: {failure}" for check in self.checks for failure in check.failures]

    def text(self) -> str:
        f = self.figures
        lines = [
            f"fault run: seed {self.config.seed}, {self.config.minutes:g} min of faults,"
            f" schedule {self.schedule_digest}, {f['elapsed_seconds']:.0f} s in all"
            f" (converged in {f['converge_seconds']} s)",
            f"faults injected: {f['faults_total']}  {_counts(f['faults'])}",
        ]
        if f["faults_failed"]:
            lines.append(f"faults that could not be injected: {_counts(f['faults_failed'])}")
        lines.append(f"PostgreSQL restarts: {f['pg_restarts']}")
        lines.append(
            f"requests: {f['requests_total']} (tries; given up after every retry:"
            f" {_counts(f['requests_given_up'])})"
        )
        for op, counts in f["requests"].items():
            lines.append(f"  {op:<12} {_counts(counts)}")
        latency = ", ".join(
            f"{op} {t['p50']}/{t['p99']}/{t['max']}" for op, t in f["latency_seconds"].items()
        )
        lines.append(f"  seconds per try, p50/p99/max: {latency}")
        lines.append(f"jobs: {f['jobs_total']}  {_counts(f['jobs'])}")
        lines.append(f"  by kind: {_counts(f['jobs_by_kind'])}")
        lines.append(f"pipeline dispatches: {_counts(f['dispatches'])}")
        lines.append(f"pipeline callbacks: {_counts(f['callbacks'])}")
        lines.append(f"queue workers: {_counts(f['worker_outcomes'])}")
        lines.append(f"server log: {_counts(f['server_log'])}")
        checked = sum(check.checked for check in self.checks)
        lines.append(f"invariants and answer checks: {len(self.checks)} rules, {checked} checks")
        for check in self.checks:
            mark = "ok  " if check.ok else "FAIL"
            lines.append(f"  {mark} {check.name} ({check.checked} checked)")
            lines.extend(f"       {failure}" for failure in check.failures[:5])
            if len(check.failures) > 5:
                lines.append(f"       ... and {len(check.failures) - 5} more")
        if self.run_dir is not None:
            lines.append(f"logs kept in {self.run_dir}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": {k: str(v) for k, v in dataclasses.asdict(self.config).items()},
            "schedule_digest": self.schedule_digest,
            "figures": self.figures,
            "checks": [dataclasses.asdict(check) for check in self.checks],
        }


def _latency(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50": round(ordered[len(ordered) // 2], 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "-"


def schedule_digest(faults: list) -> str:
    text = json.dumps([dataclasses.astuple(fault) for fault in faults])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def run(config: Config) -> Report:
    log = Clock()
    faults = plan(config.seed, config.minutes * 60)
    digest = schedule_digest(faults)
    run_dir = config.run_dir or Path(tempfile.mkdtemp(prefix="credit-jobs-faults-"))
    log(f"seed {config.seed}: {len(faults)} faults over {config.minutes:g} min (schedule {digest})")
    log(f"run dir (cluster and logs): {run_dir}")
    stack = Stack(
        run_dir,
        web_workers=config.web_workers,
        web_threads=config.web_threads,
        queue_workers=config.queue_workers,
        worker_concurrency=config.worker_concurrency,
        pg_bin=config.pg_bin,
    )
    with stack:
        log(f"stack up: PostgreSQL, proxy, pipeline, 2 x gunicorn, {config.queue_workers} workers")
        report = _exercise(stack, config, faults, digest, log)
    if config.keep or report.failures:
        report.run_dir = run_dir
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return report


def _exercise(stack: Stack, config: Config, faults: list, digest: str, log: Clock) -> Report:
    users = stack.add_users(config.clients)
    journal = Journal()
    stopping = threading.Event()
    servers = {name: server.base_url for name, server in stack.servers.items()}
    clients = [
        Client(number, token, config.seed, servers, KINDS, journal, stopping)
        for number, (_, token) in enumerate(users)
    ]
    scheduler = Caller(journal, -1, {"Authorization": f"Bearer {MAINTENANCE_TOKEN}"})
    maintenance = Maintenance(scheduler, servers, stopping, MAINTENANCE_INTERVAL_SECONDS)
    injector = Injector(stack, faults, log)
    for thread in (*clients, maintenance, injector):
        thread.start()
    time.sleep(config.minutes * 60)

    log("faults over: healing, clients finish what they started")
    injector.heal()
    stack.calm()
    stopping.set()
    for thread in (*clients, maintenance):
        thread.join(120)
    log(f"{len(journal.answers)} answers recorded; converging")
    converged = _converge(stack, maintenance, config.converge_seconds)
    log(f"converged after {converged} s" if converged is not None else "did NOT converge")
    with (stack.logs / "answers.jsonl").open("w") as out:
        for answer in journal.answers:
            out.write(json.dumps(dataclasses.asdict(answer), default=str) + "\n")

    with stack.connect() as conn:
        checks = money_checks(conn)
        state = FinalState.read(conn)
    callbacks = [e for e in events(stack.pipeline_log) if e["event"] == "callback"]
    worker_events = [e for w in stack.workers for e in events(w.log)]
    worker_done = [e for e in worker_events if e.get("event") == "job_done"]
    user_ids = [user_id for user_id, _ in users]
    checks += answer_checks(state, journal.answers, user_ids, callbacks, worker_done)
    crashed = Check("no client thread crashed")
    for client in clients:
        crashed.expect(client.crashed is None, f"client {client.number}: {client.crashed!r}")
    checks.append(crashed)

    figures = _figures(stack, journal, injector, state, worker_done)
    figures["converge_seconds"] = converged
    figures["elapsed_seconds"] = time.monotonic() - log.started
    return Report(config, digest, figures, checks)


def _converge(stack: Stack, maintenance: Maintenance, seconds: float) -> float | None:
    """Call maintenance until no job is in flight and the pipeline has nothing left to send."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        maintenance.once()
        if stack.in_flight() == 0 and stack.pipeline_active() == 0:
            return round(time.monotonic() - started, 1)
        time.sleep(1.0)
    return None


def _figures(stack: Stack, journal: Journal, injector: Injector, state: FinalState, worker_done):
    requests: dict[str, Counter] = defaultdict(Counter)
    gave_up: Counter[str] = Counter()
    seconds: dict[str, list[float]] = defaultdict(list)
    for answer in journal.answers:
        seconds[answer.op].append(answer.seconds)
        label = answer.label + (" replayed" if answer.replayed else "")
        requests[answer.op][label] += 1
        outage = answer.status is None or answer.status >= 500
        if answer.final and outage and answer.code != "pipeline_unavailable":
            gave_up[answer.op] += 1
    pipeline_events = events(stack.pipeline_log)
    dispatches = Counter(
        e["answer"] + ("" if e["runs"] else " (not run)")
        for e in pipeline_events
        if e["event"] == "dispatch"
    )
    dispatches["bad signature"] = sum(e["event"] == "bad_signature" for e in pipeline_events)
    callbacks = Counter(
        f"{e['status']} -> {e['http'] or 'no answer'} {e['outcome'] or e['error'] or ''}".strip()
        for e in pipeline_events
        if e["event"] == "callback"
    )
    server_log: Counter[str] = Counter()
    for server in stack.servers.values():
        text = server.log.read_text(errors="replace")
        server_log["refund_deferred"] += text.count('"event":"refund_deferred"')
        server_log["dispatch_failed"] += text.count('"event":"dispatch_failed"')
        server_log["unhandled error"] += text.count("unhandled error in")
        server_log["worker boots"] += text.count("Booting worker")
    jobs = Counter(job["status"] for job in state.jobs.values())
    jobs_by_kind = Counter(f"{job['kind']} {job['status']}" for job in state.jobs.values())
    return {
        "faults": dict(injector.done),
        "faults_total": sum(injector.done.values()),
        "faults_failed": dict(injector.failed),
        "pg_restarts": injector.pg_restarts,
        "requests": {op: dict(counts) for op, counts in sorted(requests.items())},
        "requests_total": len(journal.answers),
        "requests_given_up": dict(gave_up),
        "latency_seconds": {op: _latency(times) for op, times in sorted(seconds.items())},
        "jobs": dict(jobs),
        "jobs_by_kind": dict(jobs_by_kind),
        "jobs_total": len(state.jobs),
        "dispatches": dict(dispatches),
        "callbacks": dict(callbacks),
        "worker_outcomes": dict(Counter(e.get("outcome") for e in worker_done)),
        "server_log": dict(server_log),
    }
