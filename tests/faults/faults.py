"""The seeded fault schedule of a run, and the injector that carries it out.

`plan(seed, seconds)` is a pure function: the same seed gives the same faults, in the same order,
at the same offsets, with the same durations and targets (a target is an index into the processes
alive at that moment). The first faults go through every kind once, so even a short run sees each.
Faults on the database path (PostgreSQL, proxy, and the `incident`) never overlap one another;
process and pipeline faults overlap freely.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from shared.core.db import POOL_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from tests.faults.stack import Stack

# kind -> (weight, duration in seconds drawn from the rng)
KINDS: dict[str, tuple[int, Callable[[random.Random], float]]] = {
    # a gunicorn worker (the master starts another one) / stopped, then continued
    "gunicorn_kill": (10, lambda rng: 0.0),
    "gunicorn_stop": (9, lambda rng: rng.uniform(1.0, 12.0)),
    # a queue worker, restarted after the duration (as a supervisor would) / stopped, continued
    "worker_kill": (9, lambda rng: rng.uniform(0.5, 3.0)),
    "worker_stop": (9, lambda rng: rng.uniform(1.0, 15.0)),
    # pg_ctl -m immediate restart / immediate stop, down for longer than the pool timeout, start
    "pg_restart": (10, lambda rng: 0.0),
    "pg_outage": (5, lambda rng: rng.uniform(POOL_TIMEOUT_SECONDS + 1, POOL_TIMEOUT_SECONDS + 10)),
    # every open database connection reset / and new ones refused for a while / nothing flows
    "proxy_drop": (8, lambda rng: 0.0),
    "proxy_refuse": (7, lambda rng: rng.uniform(2.0, 14.0)),
    "proxy_stall": (8, lambda rng: rng.uniform(1.0, 8.0)),
    # the pipeline refuses every dispatch / times out on every dispatch / is frozen
    "pipeline_5xx": (8, lambda rng: rng.uniform(3.0, 10.0)),
    "pipeline_slow": (8, lambda rng: rng.uniform(3.0, 12.0)),
    "pipeline_stop": (7, lambda rng: rng.uniform(2.0, 12.0)),
    # the pipeline slows down, then the database goes away for longer than the pool timeout:
    # dispatches time out while their refunds cannot reach the database
    "incident": (3, lambda rng: rng.uniform(POOL_TIMEOUT_SECONDS + 6, POOL_TIMEOUT_SECONDS + 12)),
}
DATABASE_KINDS = frozenset(
    {"pg_restart", "pg_outage", "proxy_drop", "proxy_refuse", "proxy_stall", "incident"}
)
MEAN_GAP_SECONDS = 3.0
# quiet time after a database fault before the next one, so the pools can come back
DATABASE_SETTLE_SECONDS = 3.0
# how long before an incident's outage its pipeline is slow (dispatches then time out in it)
INCIDENT_LEAD_SECONDS = 8.0
RESTART_SECONDS = 2.0  # what an immediate restart takes, for planning


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the fault phase began
    kind: str
    seconds: float
    target: int

    def describe(self) -> str:
        return f"{self.kind} {self.seconds:.1f}s" if self.seconds else self.kind


def plan(seed: int, seconds: float) -> list[Fault]:
    rng = random.Random(f"faults:{seed}")
    kinds = list(KINDS)
    weights = [weight for weight, _ in KINDS.values()]
    first_round = rng.sample(kinds, len(kinds))
    faults: list[Fault] = []
    at = rng.uniform(2.0, 4.0)
    database_free = 0.0
    while True:
        kind = first_round.pop(0) if first_round else rng.choices(kinds, weights)[0]
        duration = round(KINDS[kind][1](rng), 1)
        if kind in DATABASE_KINDS:
            at = max(at, database_free)
            lead = INCIDENT_LEAD_SECONDS if kind == "incident" else 0.0
            took = lead + (duration or RESTART_SECONDS)
            database_free = at + took + DATABASE_SETTLE_SECONDS
        if at >= seconds:
            return faults
        faults.append(Fault(round(at, 1), kind, duration, rng.randrange(1 << 16)))
        at += rng.expovariate(1 / MEAN_GAP_SECONDS)


class Injector(threading.Thread):
    """Runs the schedule against the stack; `heal()` ends every fault still going on."""

    def __init__(self, stack: Stack, faults: list[Fault], log: Callable[[str], None]) -> None:
        super().__init__(name="injector", daemon=True)
        self.stack = stack
        self.faults = faults
        self.log = log
        self.stopping = threading.Event()
        self.healing = threading.Event()
        self.database = threading.Lock()
        self.counting = threading.Lock()
        self.running: list[threading.Thread] = []
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.pg_restarts = 0

    def run(self) -> None:
        started = time.monotonic()
        for fault in self.faults:
            if self.stopping.wait(max(0.0, started + fault.at - time.monotonic())):
                return
            thread = threading.Thread(target=self.inject, args=(fault,), daemon=True)
            thread.start()
            self.running.append(thread)

    def inject(self, fault: Fault) -> None:
        lock = self.database if fault.kind in DATABASE_KINDS else contextlib.nullcontext()
        with lock:
            if self.healing.is_set():
                return
            self.log(f"fault {fault.describe()}")
            try:
                getattr(self, fault.kind)(fault)
            except Exception as exc:  # a fault that could not be injected is counted, not fatal
                self.log(f"fault {fault.kind} could not be injected: {exc!r}")
                counts = self.failed
            else:
                counts = self.done
        with self.counting:
            counts[fault.kind] += 1

    def hold(self, seconds: float) -> None:
        """Let a fault last, unless the run is healing."""
        self.healing.wait(seconds)

    def heal(self) -> None:
        """Stop injecting; every fault ends now (continued, restarted, healed, calmed)."""
        self.stopping.set()
        self.healing.set()
        for thread in self.running:
            thread.join(60)
        self.join(5)

    # -- the faults -------------------------------------------------------------------------

    def gunicorn_kill(self, fault: Fault) -> None:
        _signal(self.stack.gunicorn_worker(fault.target), signal.SIGKILL)

    def gunicorn_stop(self, fault: Fault) -> None:
        pid = self.stack.gunicorn_worker(fault.target)
        _signal(pid, signal.SIGSTOP)
        try:
            self.hold(fault.seconds)
        finally:
            _signal(pid, signal.SIGCONT)

    def worker_kill(self, fault: Fault) -> None:
        worker = self.stack.queue_worker(fault.target)
        worker.signal(signal.SIGKILL)
        worker.proc.wait(10)
        self.hold(fault.seconds)
        worker.start()

    def worker_stop(self, fault: Fault) -> None:
        worker = self.stack.queue_worker(fault.target)
        worker.signal(signal.SIGSTOP)
        try:
            self.hold(fault.seconds)
        finally:
            worker.signal(signal.SIGCONT)

    def pg_restart(self, fault: Fault) -> None:
        self.stack.cluster.restart()
        self.pg_restarts += 1

    def pg_outage(self, fault: Fault) -> None:
        self.stack.cluster.stop("immediate")
        try:
            self.hold(fault.seconds)
        finally:
            self.stack.cluster.start()
            self.pg_restarts += 1

    def proxy_drop(self, fault: Fault) -> None:
        self.stack.proxy_command("drop")

    def proxy_refuse(self, fault: Fault) -> None:
        self.stack.proxy_command(f"refuse {fault.seconds}")
        try:
            self.hold(fault.seconds)
        finally:
            self.stack.proxy_command("heal")

    def proxy_stall(self, fault: Fault) -> None:
        self.stack.proxy_command(f"stall {fault.seconds}")
        try:
            self.hold(fault.seconds)
        finally:
            self.stack.proxy_command("heal")

    def pipeline_5xx(self, fault: Fault) -> None:
        self.stack.pipeline_mood("5xx", fault.seconds)
        self.hold(fault.seconds)

    def pipeline_slow(self, fault: Fault) -> None:
        self.stack.pipeline_mood("slow", fault.seconds)
        self.hold(fault.seconds)

    def pipeline_stop(self, fault: Fault) -> None:
        self.stack.pipeline.signal(signal.SIGSTOP)
        try:
            self.hold(fault.seconds)
        finally:
            self.stack.pipeline.signal(signal.SIGCONT)

    def incident(self, fault: Fault) -> None:
        self.stack.pipeline_mood("slow", INCIDENT_LEAD_SECONDS + 2.0)
        self.hold(INCIDENT_LEAD_SECONDS)
        self.pg_outage(fault)


def _signal(pid: int | None, signum: int) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def proxy_command(port: int, command: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\n")
        return sock.makefile().readline().strip()


def pipeline_control(base_url: str, command: dict) -> dict:
    return httpx.post(f"{base_url}/_control", json=command, timeout=10).json()
