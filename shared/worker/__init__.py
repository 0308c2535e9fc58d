"""Pull-mode worker: claims queue jobs, runs a handler, heartbeats, completes or fails.

    python -m shared.worker --kinds story --handler myapp.handlers:story --concurrency 4

The database is DATABASE_URL (or SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY). Locally,
`python -m shared.dev.worker` takes the same arguments and uses the dev server's embedded database.

The handler is called with the job (a dict with the Job fields) and returns a JSON-serializable
result. A handler with a `progress` parameter also gets `progress(percent)` to report progress;
it is sent with the next heartbeat. An exception fails the job: retried (if the kind allows
another attempt) when it is a `RetryableError` or has `retryable = True`, otherwise refunded.

Every report carries the attempt. When the database answers `stale_attempt` or
`invalid_transition`, the job belongs to someone else now (the reaper retried it, or it was
cancelled): the worker stops heartbeating it and drops its result.

SIGTERM / SIGINT: stop claiming, let running jobs finish within --grace-seconds, then fail the rest
as retryable and exit 0.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from shared.core.db import Database, Json
from shared.core.errors import ApiError
from shared.core.log import log_event

# Answers meaning "this attempt is not ours any more".
LOST_CODES = frozenset({"stale_attempt", "invalid_transition", "not_found"})
# A report that hits a database outage is tried again after these pauses (seconds).
REPORT_RETRY_DELAYS = (0.5, 1.0, 2.0)

Handler = Callable[..., Any]


class RetryableError(Exception):
    """A transient failure (rate limit, timeout upstream): the job is retried if attempts remain."""

    retryable = True


@dataclass
class ActiveJob:
    job: dict[str, Any]
    lease_seconds: float
    started: float = field(default_factory=time.monotonic)
    progress: float | None = None
    # set when the job must not be reported on by this worker any more (finished, lost, abandoned)
    finished: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    # serializes the final report with a shutdown's abandon, so only one of them is sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return self.job["id"]

    @property
    def attempt(self) -> int:
        return self.job["attempt"]


class Worker:
    def __init__(
        self,
        db: Database,
        handler: Handler,
        kinds: Sequence[str],
        *,
        worker_id: str,
        concurrency: int = 1,
        poll_interval: float = 1.0,
        grace_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.handler = handler
        self.kinds = list(kinds)
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        self._wants_progress = _accepts_progress(handler)

    def stop(self) -> None:
        """Stop claiming; run() then waits for running jobs up to the grace period."""
        self.stopping.set()

    def run(self) -> int:
        """Claim and run jobs until stop(); return how many handlers were left running."""
        log_event(
            "worker_started",
            worker_id=self.worker_id,
            kinds=self.kinds,
            concurrency=self.concurrency,
        )
        executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="job")
        running: dict[Future, ActiveJob] = {}
        while not self.stopping.is_set():
            running = {f: a for f, a in running.items() if not f.done()}
            free = self.concurrency - len(running)
            claimed = self._claim(free) if free else []
            for active in claimed:
                running[executor.submit(self._run_job, active)] = active
            if free and len(claimed) == free:
                continue  # the queue may hold more: claim again right away
            if len(running) == self.concurrency:
                wait(running, timeout=self.poll_interval, return_when=FIRST_COMPLETED)
            else:
                self.stopping.wait(self.poll_interval)
        log_event(
            "worker_stopping",
            worker_id=self.worker_id,
            running=len(running),
            grace_seconds=self.grace_seconds,
        )
        _, left = wait(running, timeout=self.grace_seconds)
        for future in left:
            self._abandon(running[future])
        executor.shutdown(wait=False)
        log_event("worker_stopped", worker_id=self.worker_id, abandoned=len(left))
        return len(left)

    def _claim(self, limit: int) -> list[ActiveJob]:
        try:
            jobs = self.db.rpc(
                "claim_jobs", p_worker_id=self.worker_id, p_kinds=self.kinds, p_limit=limit
            )["jobs"]
        except ApiError as exc:
            if exc.code != "database_unavailable":
                raise
            log_event("claim_failed", logging.WARNING, worker_id=self.worker_id, error=exc.message)
            return []
        return [ActiveJob(job, job.pop("lease_seconds")) for job in jobs]

    def _run_job(self, active: ActiveJob) -> None:
        heartbeat = threading.Thread(
            target=self._heartbeat_loop, args=(active,), daemon=True, name=f"heartbeat-{active.id}"
        )
        heartbeat.start()
        try:
            result = self._call_handler(active)
        except Exception as exc:
            retryable = getattr(exc, "retryable", False) is True
            self._finish(
                active, "fail_job", p_error=f"{type(exc).__name__}: {exc}", p_retryable=retryable
            )
        else:
            self._finish(active, "complete_job", p_result=Json(result))
        finally:
            active.finished.set()
            active.wake.set()

    def _call_handler(self, active: ActiveJob) -> Any:
        def progress(percent: float) -> None:
            active.progress = min(max(float(percent), 0.0), 100.0)
            active.wake.set()

        job = dict(active.job)
        result = self.handler(job, progress=progress) if self._wants_progress else self.handler(job)
        json.dumps(result)  # not serializable: a TypeError now fails the job like any handler bug
        return result

    def _finish(self, active: ActiveJob, function: str, **params: Any) -> None:
        with active.lock:
            if active.finished.is_set():
                self._log_done(active, "dropped", reason="lost or abandoned before it ended")
                return
            active.finished.set()
            try:
                answer = self._report(
                    function, p_job_id=active.id, p_attempt=active.attempt, **params
                )
            except ApiError as exc:
                outcome = "lost" if exc.code in LOST_CODES else "report_failed"
                self._log_done(active, outcome, logging.WARNING, error=exc.message)
                return
        outcome = "completed" if answer["outcome"] == "applied" else answer["outcome"]
        level = logging.INFO if function == "complete_job" else logging.WARNING
        self._log_done(active, outcome, level, error=params.get("p_error"))

    def _abandon(self, active: ActiveJob) -> None:
        # The handler cannot be interrupted; its attempt is failed so another worker can retry it,
        # and the late result is dropped.
        self._finish(
            active, "fail_job", p_error="worker shut down before the job finished", p_retryable=True
        )

    def _heartbeat_loop(self, active: ActiveJob) -> None:
        interval = active.lease_seconds / 3
        # progress reports wake this loop; this keeps them from flooding the database
        min_gap = min(1.0, interval / 4)
        while True:
            active.wake.wait(interval)
            active.wake.clear()
            if active.finished.is_set():
                return
            try:
                self._report(
                    "heartbeat_job",
                    p_job_id=active.id,
                    p_attempt=active.attempt,
                    p_progress=active.progress,
                )
            except ApiError as exc:
                if exc.code in LOST_CODES:
                    # unless the job ended meanwhile (its own final report beat this heartbeat)
                    if not active.finished.is_set():
                        active.finished.set()
                        self._log_job("job_lost", active, logging.WARNING, error=exc.message)
                    return
                self._log_job("heartbeat_failed", active, logging.WARNING, error=exc.message)
            if active.finished.wait(min_gap):
                return

    def _report(self, function: str, **params: Any) -> dict[str, Any]:
        for delay in REPORT_RETRY_DELAYS:
            try:
                return self.db.rpc(function, **params)
            except ApiError as exc:
                if exc.code != "database_unavailable":
                    raise
            time.sleep(delay)
        return self.db.rpc(function, **params)

    def _log_done(
        self, active: ActiveJob, outcome: str, level: int = logging.INFO, **fields: Any
    ) -> None:
        seconds = round(time.monotonic() - active.started, 3)
        self._log_job("job_done", active, level, outcome=outcome, seconds=seconds, **fields)

    def _log_job(self, event: str, active: ActiveJob, level: int, **fields: Any) -> None:
        log_event(
            event,
            level,
            job_id=active.id,
            kind=active.job["kind"],
            attempt=active.attempt,
            worker_id=self.worker_id,
            **fields,
        )


def _accepts_progress(handler: Handler) -> bool:
    try:
        return "progress" in inspect.signature(handler).parameters
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
