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

from shared.core.db import Database
from shared.core.log import log_event
from shared.push.dispatch import Dispatcher, DispatchError

# Small reap batches keep each transaction's account locks short, so users' requests are not held
# up behind a backlog; a run goes on while batches come back full, up to MAX_REAP_BATCHES.
REAP_BATCH = 100
MAX_REAP_BATCHES = 100
DISPATCH_BATCH = 100


def run_maintenance(db: Database, dispatcher: Dispatcher, callback_url: str | None) -> dict:
    """Run one pass; returns `{reaped, retried, redispatched}`.

    `reaped` counts every job ended or retried here: stalled jobs (of which `retried` went back
    to the queue) plus pushed jobs failed at their dispatch deadline.
    """
    reaped = retried = 0
    for _ in range(MAX_REAP_BATCHES):
        batch = db.rpc("reap_stalled_jobs", p_limit=REAP_BATCH)
        reaped += batch["reaped"]
        retried += batch["retried"]
        if batch["reaped"] < REAP_BATCH:
            break
    taken = db.rpc("take_jobs_to_dispatch", p_limit=DISPATCH_BATCH)
    redispatched = sum(_dispatch(dispatcher, job, callback_url) for job in taken["jobs"])
    summary = {
        "reaped": reaped + taken["failed"],
        "retried": retried,
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
