"""Self-healing, run every minute by a scheduler through the `maintenance` function.

1. `reap_stalled_jobs`: processing jobs whose lease expired are retried or failed and refunded.
2. `take_jobs_to_dispatch`: pushed jobs the pipeline never answered are dispatched again (same
   attempt, so the same Prefect idempotency key), retried ones get their new attempt dispatched
   (to the pipeline their kind names), and those past their kind's dispatch deadline are failed
   and refunded.
3. `fail_unstarted_jobs`: jobs nobody started (queue jobs no worker claimed, pushed retries never
   dispatched) within their kind's dispatch_timeout_seconds are failed and refunded.
4. `expire_credits`: grants past their expiry on idle accounts are expired (every money function
   expires its own account's due grants first, so this only keeps idle balances current).
5. Events (`credit_events`, written by the money functions) are delivered to EVENTS_URL
   (shared.push.events), last, so those of this run's refunds and expiries go out too.

A dispatch that fails here is left alone: its lease expires again, the next run retries it, and
the deadline eventually fails and refunds it.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.core.db import Database
from shared.core.log import log_event
from shared.push.dispatch import DispatchError, Pipelines
from shared.push.events import EventSender, deliver_events

# Small batches keep each transaction's account locks short, so users' requests are not held up
# behind a backlog; a run goes on while batches come back full, up to MAX_BATCHES each.
REAP_BATCH = 100
UNSTARTED_BATCH = 100
EXPIRE_BATCH = 100
MAX_BATCHES = 100
DISPATCH_BATCH = 100


def run_maintenance(db: Database, pipelines: Pipelines, events: EventSender | None = None) -> dict:
    """Run one pass; returns `{reaped, retried, redispatched, unstarted_failed, expired_credits,
    events_delivered, events_failed}`.

    `reaped` counts every job ended or retried here: stalled jobs (of which `retried` went back
    to the queue), pushed jobs failed at their dispatch deadline and `unstarted_failed`. Without
    an EventSender (no EVENTS_URL) events wait in the outbox.
    """
    reaps = _drain(db, "reap_stalled_jobs", REAP_BATCH, "reaped")
    unstarted = sum(
        b["failed"] for b in _drain(db, "fail_unstarted_jobs", UNSTARTED_BATCH, "failed")
    )
    expired = _drain(db, "expire_credits", EXPIRE_BATCH, "expired_grants")
    taken = db.rpc("take_jobs_to_dispatch", p_limit=DISPATCH_BATCH)
    redispatched = sum(_dispatch(pipelines, job) for job in taken["jobs"])
    sent = deliver_events(db, events) if events else {"delivered": 0, "failed": 0}
    summary = {
        "reaped": sum(b["reaped"] for b in reaps) + taken["failed"] + unstarted,
        "retried": sum(b["retried"] for b in reaps),
        "redispatched": redispatched,
        "unstarted_failed": unstarted,
        "expired_credits": sum(b["credits"] for b in expired),
        "events_delivered": sent["delivered"],
        "events_failed": sent["failed"],
    }
    log_event("maintenance_done", **summary, dispatch_deadline_failed=taken["failed"])
    return summary


def _drain(db: Database, function: str, limit: int, count: str) -> list[dict[str, Any]]:
    """Call function in batches of `limit` until one handles fewer (its `count` field)."""
    batches = []
    for _ in range(MAX_BATCHES):
        batches.append(db.rpc(function, p_limit=limit))
        if batches[-1][count] < limit:
            break
    return batches


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
