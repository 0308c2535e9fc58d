"""Prefect flows that report for themselves; the only module that imports Prefect.

    from shared.pipeline.prefect import pipeline_flow


    @pipeline_flow
    def story(attempt: Attempt) -> dict:
        attempt.progress(50)
        return {"story": "..."}


    story.serve(name="story")  # then PREFECT_DEPLOYMENTS=story=<this deployment's id>

The flow's parameters are the dispatch payload, so `PIPELINE=prefect` can start it. Its run
reports as `shared.pipeline.client.reports` does, `completed` before Prefect records the run's
end (a Completed flow run means a completed job). The state hooks report `failed` for what the
run cannot report itself: a cancellation from the Prefect UI or API (refunded), a crash of its
process (retryable, as an expired lease would be), a failure outside the handler. A run whose
attempt is lost ends Cancelled. Retries belong to the job kind (`max_attempts`), so Prefect's
`retries` is refused. In full: docs/pipelines.md, "Pipeline helpers".
"""

# No `from __future__ import annotations`: Prefect reads the flow's parameter types at runtime.
import logging
from collections.abc import Callable
from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, State

from shared.core.log import log_event
from shared.pipeline.client import (
    HEARTBEAT_SECONDS,
    Attempt,
    AttemptLost,
    Job,
    ReportError,
    default_client,
)

Handler = Callable[[Attempt], Any]


def pipeline_flow(
    handler: Handler | None = None,
    /,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    **options: Any,
) -> Any:
    """Decorator: `handler(attempt) -> result` becomes a Prefect flow for one job kind.

    `options` go to `prefect.flow` (name, log_prints, timeout_seconds, ...).
    """
    if "retries" in options:
        raise TypeError("retries belong to the job kind (max_attempts), not to the Prefect flow")

    def wrap(handler: Handler) -> Flow:
        def run(
            job_id: str,
            attempt: int,
            kind: str,
            callback_url: str,
            params: dict[str, Any] | None = None,
            project_id: str | None = None,
        ) -> Any:
            job = Job(job_id, attempt, kind, params or {}, project_id, callback_url)
            try:
                return default_client().run(handler, job, heartbeat_seconds=heartbeat_seconds)
            except AttemptLost as exc:
                return Cancelled(message=f"attempt {attempt} of job {job_id} is over: {exc}")

        # Named after the handler, so the flow's entrypoint (module:name) loads this flow.
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(run, attribute, getattr(handler, attribute))
        return flow(
            run,
            on_cancellation=[report_cancellation],
            on_crashed=[report_crash],
            on_failure=[report_failure],
            **options,
        )

    return wrap if handler is None else wrap(handler)


def report_cancellation(flow: Flow, flow_run: FlowRun, state: State) -> None:
    _report_failed(flow_run, f"cancelled in Prefect: {state.message or state.name}", False)


def report_crash(flow: Flow, flow_run: FlowRun, state: State) -> None:
    _report_failed(flow_run, f"flow run crashed: {state.message or state.name}", True)


def report_failure(flow: Flow, flow_run: FlowRun, state: State) -> None:
    _report_failed(flow_run, f"flow run failed: {state.message or state.name}", False)


def _report_failed(flow_run: FlowRun, error: str, retryable: bool) -> None:
    try:
        job = Job.from_dispatch(flow_run.parameters)
    except (KeyError, TypeError, ValueError):
        log_event("flow_run_unreported", logging.ERROR, flow_run=str(flow_run.id), error=error)
        return
    try:
        default_client().report(job, "failed", error=error, retryable=retryable)
    except ReportError as exc:
        # AttemptLost: the job already ended or moved on; otherwise its lease decides
        log_event(
            "flow_run_report_refused",
            logging.WARNING,
            job_id=job.job_id,
            attempt=job.attempt,
            flow_run=str(flow_run.id),
            error=str(exc),
        )
