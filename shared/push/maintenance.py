"""Self-healing, run every minute by a scheduler through the `maintenance` function.

1. `reap_stalled_jobs`: processing jobs whose lease expired are retried or failed and refunded.
2. `take_jobs_to_dispatch`: pushed jobs the pipeline never answered are dispatched again (same
   attempt, so the same Prefect idempotency key), retried ones get their new attempt dispatched
   (to the pipeline their kind names), and those past their kind's dispatch deadline are failed
   and refunded.
3. `fail_unstarted_jobs`: jobs nobody started (queue jobs no worker claimed, pushed retries never
   dispatched) within their kind's dispatch_timeout_seconds are failed and refunded.

A dispatch that fails here is left alone: its lease expires again, the next run retries it, and
the deadline eventually fails and refunds it.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.core.db import Database
from shared.core.log import log_event
from shared.push.dispatch import DispatchError, Pipelines

# Small reap batches keep each transaction's account locks short, so users' requests are not held
# up behind a backlog; a run goes on while batches come back full, up to MAX_REAP_BATCHES.
REAP_BATCH = 100
MAX_REAP_BATCHES = 100
DISPATCH_BATCH = 100
UNSTARTED_BATCH = 100


def run_maintenance(db: Database, pipelines: Pipelines) -> dict:
    """Run one pass; returns `{reaped, retried, redispatched, unstarted_failed}`.

    `reaped` counts every job ended or retried here: stalled jobs (of which `retried` went back
    to the queue), pushed jobs failed at their dispatch deadline and `unstarted_failed`.
    """
    reaped = retried = 0
    for _ in range(MAX_REAP_BATCHES):
        batch = db.rpc("reap_stalled_jobs", p_limit=REAP_BATCH)
        reaped += batch["reaped"]
        retried += batch["retried"]
        if batch["reaped"] < REAP_BATCH:
            break
    unstarted = 0
    for _ in range(MAX_REAP_BATCHES):
        failed = db.rpc("fail_unstarted_jobs", p_limit=UNSTARTED_BATCH)["failed"]
        unstarted += failed
        if failed < UNSTARTED_BATCH:
            break
    taken = db.rpc("take_jobs_to_dispatch", p_limit=DISPATCH_BATCH)
    redispatched = sum(_dispatch(pipelines, job) for job in taken["jobs"])
    summary = {
        "reaped": reaped + taken["failed"] + unstarted,
        "retried": retried,
        "redispatched": redispatched,
        "unstarted_failed": unstarted,
    }
    log_event("maintenance_done", **summary, dispatch_deadline_failed=taken["failed"])
    return summary


def _dispatch(pipelines: Pipelines, job: dict[str, Any]) -> bool:
    try:
        pipelines.dispatch(job, job.pop("pipeline", None))
    except DispatchError as exc:
        log_event(
            "redispatch_failed",
            logging.WARNING,
            job_id=job["id"],
            attempt=job["attempt"],
            error=str(exc),
        )
        return False
    log_event("job_redispatched", job_id=job["id"], attempt=job["attempt"], kind=job["kind"])
    return True
