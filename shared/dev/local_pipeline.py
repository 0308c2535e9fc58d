"""The built-in demo pipeline (PIPELINE=local) of the embedded dev server.

It behaves like an external pipeline would: each dispatched job runs on a background thread and
reports back over real HTTP to the `status` function with signed Standard Webhooks callbacks —
`processing` (progress 0, then 50), then `completed` with a small demo result. Jobs of the kind
`demo_fail` always end `failed` (not retryable), which refunds them.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from shared.core.log import log_event
from shared.dev.demo_handlers import story_result
from shared.push.dispatch import DispatchError
from shared.push.webhooks import sign

if TYPE_CHECKING:
    from shared.core.settings import Settings

FAILING_KIND = "demo_fail"
WORKERS = 4
# Jobs waiting for a worker; beyond this dispatch fails and `generate` refunds (503).
QUEUE_SIZE = 100
STEP_SECONDS = 0.2
# A voice-over takes a little longer: long enough to try `cancel` while it runs.
SLOW_KINDS = {"voice": 1.0}
CALLBACK_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
CALLBACK_TRIES = 3


class CallbackRejected(Exception):
    """The status function refused a report (e.g. the user cancelled the job): stop the run."""


class LocalPipeline:
    def __init__(self, settings: Settings) -> None:
        if not settings.pipeline_webhook_secret:
            raise ValueError("PIPELINE=local needs PIPELINE_WEBHOOK_SECRET to sign its callbacks")
        self._secrets = settings.pipeline_webhook_secret
        self._runs: queue.Queue[tuple[dict, str] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._closing = threading.Event()
        self._http = httpx.Client(timeout=CALLBACK_TIMEOUT)
        # Daemon threads: a stopping dev server never waits for a demo job; maintenance
        # re-dispatches or reaps whatever was left in flight.
        for number in range(WORKERS):
            threading.Thread(
                target=self._work, name=f"local-pipeline-{number}", daemon=True
            ).start()

    def dispatch(self, job: dict, callback_url: str | None) -> None:
        """Queue the job and return at once; the run reports back to callback_url."""
        if not callback_url or self._closing.is_set():
            raise DispatchError("the local pipeline needs CALLBACK_URL and must be running")
        try:
            self._runs.put_nowait((dict(job), callback_url))
        except queue.Full as exc:
            raise DispatchError("the local pipeline is busy") from exc

    def close(self) -> None:
        """Stop the workers after their current run; queued runs are dropped."""
        self._closing.set()
        for _ in range(WORKERS):
            try:
                self._runs.put_nowait(None)
            except queue.Full:
                break
        self._http.close()

    def _work(self) -> None:
        while True:
            run = self._runs.get()
            if run is None or self._closing.is_set():
                return
            job, callback_url = run
            try:
                self._run(job, callback_url)
            except CallbackRejected as exc:
                log_event(
                    "local_pipeline_stopped",
                    job_id=job["id"],
                    attempt=job["attempt"],
                    outcome=str(exc),
                )
            except Exception as exc:
                log_event(
                    "local_pipeline_failed",
                    logging.ERROR,
                    job_id=job["id"],
                    attempt=job["attempt"],
                    outcome=type(exc).__name__,
                )

    def _run(self, job: dict, callback_url: str) -> None:
        step_seconds = SLOW_KINDS.get(job["kind"], STEP_SECONDS)
        for progress in (0, 50):
            self._report(callback_url, job, status="processing", progress=progress)
            time.sleep(step_seconds)
        if job["kind"] == FAILING_KIND:
            self._report(
                callback_url,
                job,
                status="failed",
                error=f"the {FAILING_KIND} kind always fails (demo of the refund path)",
                retryable=False,
            )
        else:
            self._report(callback_url, job, status="completed", result=demo_result(job))

    def _report(self, callback_url: str, job: dict, **fields: Any) -> None:
        body = json.dumps({"job_id": str(job["id"]), "attempt": job["attempt"], **fields})
        headers = sign(self._secrets, f"msg_{uuid.uuid4().hex}", body)
        headers["Content-Type"] = "application/json"
        for attempt in range(1, CALLBACK_TRIES + 1):
            try:
                response = self._http.post(callback_url, content=body, headers=headers)
            except httpx.TransportError:
                if attempt == CALLBACK_TRIES:
                    raise
            else:
                if response.status_code < 500 or attempt == CALLBACK_TRIES:
                    break
            time.sleep(STEP_SECONDS * attempt)
        if response.status_code >= 400:
            raise CallbackRejected(f"{fields['status']} answered {response.status_code}")


def demo_result(job: dict) -> dict:
    """A small, deterministic stand-in for what a real generation would return."""
    params = job.get("params") or {}
    if job["kind"] == "story":
        return story_result(params)
    return {"kind": job["kind"], "echo": params}
