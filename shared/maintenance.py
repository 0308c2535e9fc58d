"""Self-healing, run every minute by a scheduler through the `maintenance` function.

1. `reap_stalled_jobs`: processing jobs whose lease expired are retried or failed and refunded.
2. `take_jobs_to_dispatch`: pushed jobs the pipeline never answered are dispatched again (same
   attempt, so the same Prefect idempotency key), retried ones get their new attempt dispatched,
   and those past their kind's dispatch deadline are failed and refunded.

A dispatch that fails here is left alone: its lease expires again, the next run retries it, and
the deadline eventually fails and refunds it.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.db import Database
from shared.dispatch import Dispatcher, DispatchError
from shared.log import log_event

REAP_BATCH = 1000
DISPATCH_BATCH = 100


def run_maintenance(db: Database, dispatcher: Dispatcher, callback_url: str | None) -> dict:
    """Run one pass; returns `{reaped, retried, redispatched}`.

    `reaped` counts every job ended or retried here: stalled jobs (of which `retried` went back
    to the queue) plus pushed jobs failed at their dispatch deadline.
    """
    stalled = db.rpc("reap_stalled_jobs", p_limit=REAP_BATCH)
    taken = db.rpc("take_jobs_to_dispatch", p_limit=DISPATCH_BATCH)
    redispatched = sum(_dispatch(dispatcher, job, callback_url) for job in taken["jobs"])
    summary = {
        "reaped": stalled["reaped"] + taken["failed"],
        "retried": stalled["retried"],
        "redispatched": redispatched,
    }
    log_event("maintenance_done", **summary, dispatch_deadline_failed=taken["failed"])
    return summary


def _dispatch(dispatcher: Dispatcher, job: dict[str, Any], callback_url: str | None) -> bool:
    try:
        dispatcher.dispatch(job, callback_url)
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
