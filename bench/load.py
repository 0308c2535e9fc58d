"""Closed-loop load from Python: N clients, each on its own connection, calling one operation
back to back, and the throughput and latencies they saw.

Clients are threads spread over up to MAX_PROCESSES worker processes (so one process's GIL never
throttles 32 clients): 1 client = 1 process; 8 clients = 4 processes x 2 threads;
32 clients = 4 x 8. psycopg releases the GIL while it waits on the server, and 4 processes
already exceed this machine's 2 cores, so the server, not the client, is what saturates.

An operation is named "module:function"; the function is called once per client in the worker
process as `function(conn, client_index, params)` and returns the callable to time. That callable
may return a short outcome label ("created", "insufficient", ...) that is counted.
"""

from __future__ import annotations

import importlib
import multiprocessing
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

MAX_PROCESSES = 4
CONNECT_TIMEOUT_SECONDS = 30


@dataclass
class Result:
    clients: int
    seconds: float  # the measured window
    ops: int
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "ops": self.ops,
            "rate": round(self.rate, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": dict(self.errors),
            "outcomes": dict(self.outcomes),
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def measure(
    url: str,
    op: str,
    clients: int,
    *,
    seconds: float | None = None,
    ops_per_client: int | None = None,
    warmup: float = 0.0,
    params: dict[str, Any] | None = None,
    connect: bool = True,
    during: Callable[[], Any] | None = None,
) -> tuple[Result, Any]:
    """Run `op` on `clients` connections and return (Result, what `during` returned).

    The clients stop after `seconds` (plus `warmup`, not measured), after `ops_per_client`
    operations each, or - with `during` - when `during()`, called in this process once every
    client is connected, returns. connect=False: the op gets None instead of a connection.
    Failed operations count in `errors`, not in `ops` or the latencies.
    """
    if (seconds is None) + (ops_per_client is None) + (during is None) != 2:
        raise ValueError("give exactly one of seconds, ops_per_client, during")
    # fork starts a worker in milliseconds; the parent holds no connection or thread meanwhile.
    fork = "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    n_proc = min(clients, MAX_PROCESSES)
    groups = [list(range(clients))[i::n_proc] for i in range(n_proc)]
    barrier = ctx.Barrier(clients + 1)
    stop = ctx.Event()
    results = ctx.Queue()
    plan = {
        "url": url,
        "op": op,
        "params": params or {},
        "seconds": seconds,
        "warmup": warmup if during is None else 0.0,
        "ops_per_client": ops_per_client,
        "connect": connect,
    }
    procs = [
        ctx.Process(target=_worker, args=(plan, group, barrier, stop, results), daemon=True)
        for group in groups
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=CONNECT_TIMEOUT_SECONDS + 30)
        returned = None
        if during is not None:
            returned = during()
            stop.set()
        parts = [results.get(timeout=(seconds or 0) + warmup + 600) for _ in procs]
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    result = Result(clients=clients, seconds=0.0, ops=0)
    for part in parts:
        if "fatal" in part:
            raise RuntimeError(f"load worker failed: {part['fatal']}")
        result.ops += part["ops"]
        result.errors.update(part["errors"])
        result.outcomes.update(part["outcomes"])
        result.latencies_ms.extend(part["latencies_ms"])
        result.seconds = max(result.seconds, part["seconds"])
    return result, returned


def _resolve(name: str) -> Callable[..., Callable[[], str | None]]:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _worker(plan: dict[str, Any], client_ids: list[int], barrier, stop, results) -> None:
    try:
        factory = _resolve(plan["op"])
        counts = {"ops": 0, "errors": Counter(), "outcomes": Counter(), "latencies_ms": []}
        spans: list[float] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(
                target=_client, args=(plan, factory, cid, barrier, stop, counts, spans, lock)
            )
            for cid in client_ids
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counts["seconds"] = max(spans) if spans else 0.0
        results.put(counts)
    except Exception as exc:  # reported to the parent, which raises it
        results.put({"fatal": repr(exc)})


def _client(plan, factory, client_id, barrier, stop, counts, spans, lock) -> None:
    try:
        conn = (
            psycopg.connect(plan["url"], autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
            if plan["connect"]
            else None
        )
        call = factory(conn, client_id, plan["params"])
    except BaseException:
        barrier.abort()  # the parent stops waiting and raises
        raise
    try:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        barrier.wait()
        begin = time.monotonic()
        measured_from = begin + plan["warmup"]
        deadline = measured_from + plan["seconds"] if plan["seconds"] is not None else None
        limit = plan["ops_per_client"]
        attempts = done = 0
        while not stop.is_set():
            started = time.monotonic()
            if deadline is not None and started >= deadline:
                break
            if limit is not None and attempts >= limit:
                break
            measured = started >= measured_from
            attempts += measured
            try:
                outcome = call()
            except psycopg.Error as exc:
                errors[exc.sqlstate or type(exc).__name__] += measured
                if conn is not None and conn.closed:
                    break
                continue
            except Exception as exc:  # an HTTP client's transport error, say: count, go on
                errors[f"{type(exc).__name__}: {exc}"[:80]] += measured
                continue
            if measured:
                done += 1
                latencies.append((time.monotonic() - started) * 1000)
                if outcome:
                    outcomes[outcome] += 1
        with lock:
            counts["ops"] += done
            counts["errors"].update(errors)
            counts["outcomes"].update(outcomes)
            counts["latencies_ms"].extend(latencies)
            spans.append(time.monotonic() - measured_from)
    finally:
        if conn is not None:
            conn.close()
