"""Reporting back from a pipeline, in plain Python (httpx): no Prefect needed.

A pushed job arrives as the dispatch payload `{job_id, attempt, kind, params, project_id,
callback_url}`. `PipelineClient.report()` sends one signed report to `callback_url` (the `status`
function); `reports` wraps a handler so that a run cannot forget to report:

    @reports
    def story(attempt: Attempt) -> dict:
        attempt.progress(50)  # raises AttemptLost once the job is no longer this attempt's
        attempt.credits_used = 8  # optional: charge less than the price, refund the rest
        return {"story": f"Once upon a time... {attempt.params['prompt']}"}

    story(payload)  # in the webhook service, for each dispatch it accepts

It reports `processing` on entry and every `heartbeat_seconds` (the job's lease: keep it under
a third of the kind's `lease_seconds`), progress when asked, `completed` with the return value,
or `failed` when the handler raises. `PipelineClient.attempt()` is the same as a context manager.
The rules in full: docs/pipelines.md, "Pipeline helpers".
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx

from shared.core.log import log_event
from shared.push.webhooks import sign

# the worker's class, so a handler raises the same one in pull and push mode
from shared.worker import RetryableError as RetryableError

# Pauses (seconds) between tries of a report that met a transient failure; then it gives up.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
REPORT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
HEARTBEAT_SECONDS = 10.0
# progress() calls closer together than this are sent with the next heartbeat instead.
PROGRESS_MIN_SECONDS = 1.0
# The status function's limit on `error`.
MAX_ERROR_CHARS = 2000
# Answers meaning "stop working on this attempt": a newer attempt runs, or the job has ended
# (completed, failed, or cancelled by its user).
LOST_CODES = frozenset({"stale_attempt", "invalid_transition"})
TRANSIENT_STATUSES = frozenset({429})

Status = Literal["processing", "completed", "failed"]


class ReportError(Exception):
    """The report was not applied: refused, or still failing after every retry."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class AttemptLost(ReportError):
    """The job is no longer this attempt's: stop working on it; its result will not be taken."""


class _Transient(Exception):
    """A try that may succeed when repeated: no answer, 5xx or 429."""


@dataclass(frozen=True)
class Job:
    """One dispatched attempt of a job: what every pipeline receives."""

    job_id: str
    attempt: int
    kind: str
    params: dict[str, Any]
    project_id: str | None
    callback_url: str

    @classmethod
    def from_dispatch(cls, payload: Mapping[str, Any]) -> Job:
        return cls(
            job_id=str(payload["job_id"]),
            attempt=int(payload["attempt"]),
            kind=str(payload["kind"]),
            params=dict(payload.get("params") or {}),
            project_id=payload.get("project_id"),
            callback_url=str(payload["callback_url"]),
        )


class PipelineClient:
    """Signed reports to the `status` function (PIPELINE_WEBHOOK_SECRET unless `secret`)."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        http: httpx.Client | None = None,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.secret = secret or os.environ.get("PIPELINE_WEBHOOK_SECRET", "").strip()
        if not self.secret:
            raise ValueError("a pipeline needs PIPELINE_WEBHOOK_SECRET to sign its reports")
        self.http = http or httpx.Client(timeout=REPORT_TIMEOUT)
        self.retry_delays = retry_delays

    def close(self) -> None:
        self.http.close()

    def report(
        self,
        job: Job,
        status: Status,
        *,
        progress: float | None = None,
        result: Any = None,
        error: str | None = None,
        credits_used: int | None = None,
        retryable: bool | None = None,
    ) -> dict[str, Any]:
        """Send one report; return the job as the API now has it (`duplicate` counts as done).

        Transport errors, 5xx and 429 are tried again with the same `webhook-id` after each of
        `retry_delays`. Raises AttemptLost on `stale_attempt` / `invalid_transition`, and
        ReportError on any other refusal or when the retries are used up.
        """
        fields = {
            "progress": progress,
            "result": result,
            "error": None if error is None else error[:MAX_ERROR_CHARS],
            "credits_used": credits_used,
            "retryable": retryable,
        }
        body = json.dumps(
            {
                "job_id": job.job_id,
                "attempt": job.attempt,
                "status": status,
                **{k: v for k, v in fields.items() if v is not None},
            },
            separators=(",", ":"),
        )
        msg_id = f"msg_{uuid.uuid4().hex}"
        delays = iter(self.retry_delays)
        while True:
            try:
                return self._send(job.callback_url, msg_id, body)
            except _Transient as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ReportError(f"{status} report failed: {exc}") from None
                log_event(
                    "report_retry",
                    logging.WARNING,
                    job_id=job.job_id,
                    attempt=job.attempt,
                    status=status,
                    error=str(exc),
                    retry_in=delay,
                )
                time.sleep(delay)

    def _send(self, url: str, msg_id: str, body: str) -> dict[str, Any]:
        """The job as answered; raises _Transient when the try may be repeated."""
        # Signed anew each try (fresh timestamp), under the same message id.
        headers = sign(self.secret, msg_id, body)
        headers["Content-Type"] = "application/json"
        try:
            response = self.http.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in TRANSIENT_STATUSES:
            raise _Transient(f"HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.is_success and isinstance(answer.get("job"), dict):
            return answer["job"]
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        code, message = error.get("code"), error.get("message") or response.text[:200]
        refused = AttemptLost if code in LOST_CODES else ReportError
        raise refused(
            f"HTTP {response.status_code} {code}: {message}", status=response.status_code, code=code
        )

    def attempt(
        self, job: Job | Mapping[str, Any], *, heartbeat_seconds: float = HEARTBEAT_SECONDS
    ) -> Attempt:
        """A context manager for one attempt; see the module docstring."""
        return Attempt(
            self, job if isinstance(job, Job) else Job.from_dispatch(job), heartbeat_seconds
        )

    def run(
        self,
        handler: Callable[[Attempt], Any],
        job: Job | Mapping[str, Any],
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> Any:
        """Run handler(attempt) as one reported attempt; return its result."""
        with self.attempt(job, heartbeat_seconds=heartbeat_seconds) as attempt:
            attempt.result = handler(attempt)
        return attempt.result


class Attempt:
    """One attempt being worked on: reports on entry, while it runs, and how it ended."""

    def __init__(self, client: PipelineClient, job: Job, heartbeat_seconds: float) -> None:
        self.client = client
        self.job = job
        self.heartbeat_seconds = heartbeat_seconds
        self.result: Any = None
        self.credits_used: int | None = None
        self.lost: AttemptLost | None = None
        self._progress: float | None = None
        self._last_report = 0.0
        # one report at a time, so the final one is never overtaken by a heartbeat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def progress(self, percent: float) -> None:
        """Record progress (0-100) and report it; raises AttemptLost once the job is not ours."""
        self._progress = min(max(float(percent), 0.0), 100.0)
        if time.monotonic() - self._last_report >= PROGRESS_MIN_SECONDS:
            self._processing()
        if self.lost is not None:
            raise self.lost

    def __enter__(self) -> Attempt:
        # Nothing is worked on unless the API took this first report (refusals raise).
        self._last_report = time.monotonic()
        self.client.report(self.job, "processing")
        self._heartbeat = threading.Thread(
            target=self._beat, daemon=True, name=f"heartbeat-{self.job.job_id}"
        )
        self._heartbeat.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if exc is None:
            try:
                self._final("completed", result=self.result, credits_used=self.credits_used)
            except (TypeError, ValueError, ReportError) as refused:
                # A result the API cannot take (not JSON, over 1 MiB, credits_used above the
                # price) fails the job like a bug would, so its user is refunded now. A lost
                # attempt is not ours to fail; an undelivered report is left to the lease.
                if not isinstance(refused, ReportError) or (
                    refused.status is not None and not isinstance(refused, AttemptLost)
                ):
                    self._fail(refused)
                raise
        elif isinstance(exc, Exception) and not isinstance(exc, AttemptLost):
            self._fail(exc)
        # Anything else (AttemptLost, KeyboardInterrupt, a termination signal) is not reported
        # here: the job is someone else's now, or whoever stops the process reports (Prefect's
        # hooks), or the lease expires.

    def _fail(self, exc: BaseException) -> None:
        retryable = getattr(exc, "retryable", False) is True
        self._final("failed", error=f"{type(exc).__name__}: {exc}", retryable=retryable)

    def _final(self, status: Status, **fields: Any) -> None:
        with self._lock:
            self.client.report(self.job, status, **fields)

    def _processing(self) -> None:
        with self._lock:
            if self.lost is not None:
                return
            self._last_report = time.monotonic()
            try:
                self.client.report(self.job, "processing", progress=self._progress)
            except AttemptLost as exc:
                self.lost = exc
                log_event(
                    "attempt_lost",
                    logging.WARNING,
                    job_id=self.job.job_id,
                    attempt=self.job.attempt,
                    error=str(exc),
                )
            except ReportError as exc:
                # the next heartbeat tries again; the lease gives it time
                log_event(
                    "heartbeat_failed",
                    logging.WARNING,
                    job_id=self.job.job_id,
                    attempt=self.job.attempt,
                    error=str(exc),
                )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds) and self.lost is None:
            self._processing()


@functools.cache
def default_client() -> PipelineClient:
    """One client per process, configured from the environment."""
    return PipelineClient()


def reports(
    handler: Callable[[Attempt], Any] | None = None,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    client: PipelineClient | None = None,
) -> Any:
    """Decorator: `handler(attempt) -> result` becomes `run(dispatch_payload) -> result`."""

    def wrap(handler: Callable[[Attempt], Any]) -> Callable[[Job | Mapping[str, Any]], Any]:
        @functools.wraps(handler)
        def run(job: Job | Mapping[str, Any]) -> Any:
            return (client or default_client()).run(
                handler, job, heartbeat_seconds=heartbeat_seconds
            )

        return run

    return wrap if handler is None else wrap(handler)
