"""Delivering the outbox (docs/events.md): `credit_events` rows to EVENTS_URL as Standard Webhooks.

Only `maintenance` runs this, never a user's request. Per batch: `claim_events` takes due events
in one short transaction (event rows only, SKIP LOCKED, leased for CLAIM_LEASE_SECONDS), each is
POSTed outside any transaction, signed with EVENTS_WEBHOOK_SECRET (`webhook-id` = the event's id
on every attempt), and `record_event_deliveries` records the results in another transaction.

A failed attempt is retried RETRY_BASE_SECONDS after the first failure, doubling up to
RETRY_MAX_SECONDS; after MAX_ATTEMPTS the event gives up and stays in `undelivered_events` until
an admin replays it (supabase/admin/replay_events.sql). A receiver that cannot be reached or
does not answer in time ends the run's delivery: the rest of the batch is due again when its
lease ends.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from shared.core.db import Database, Json
from shared.core.log import log_event
from shared.push import webhooks

if TYPE_CHECKING:
    from shared.core.settings import Settings

EVENTS_BATCH = 50
# A receiver should store the event and answer; work belongs in its own queue.
DELIVERY_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# Delivery stops claiming once a run has spent this long, so maintenance stays quick.
TIME_BUDGET_SECONDS = 20.0
# Longer than a claimed batch can wait for its result: the budget plus one request's timeout.
CLAIM_LEASE_SECONDS = 60
# 1, 2, 4, ... minutes, at most 6 hours apart: the last of 12 attempts comes about 20 hours
# after the first.
RETRY_BASE_SECONDS = 60
RETRY_MAX_SECONDS = 6 * 3600
MAX_ATTEMPTS = 12
# How much of a refusing receiver's answer is kept in last_error.
ERROR_BODY_CHARS = 200


class DeliveryError(Exception):
    """The receiver did not accept the event; `unavailable` if it could not be reached or did
    not answer in time (the next events would only wait for it too)."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


def event_body(event: dict[str, Any]) -> str:
    """The JSON a receiver gets: `{id, type, timestamp, data}`, data = the payload and user_id."""
    return json.dumps(
        {
            "id": event["id"],
            "type": event["type"],
            "timestamp": event["created_at"],
            "data": {"user_id": event["user_id"], **event["payload"]},
        },
        separators=(",", ":"),
    )


def retry_delay(attempts: int) -> int | None:
    """Seconds until the next attempt after `attempts` failed ones; None: give up."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return min(RETRY_BASE_SECONDS * 2 ** (attempts - 1), RETRY_MAX_SECONDS)


class EventSender:
    """Signed POSTs of events to one receiver."""

    def __init__(self, url: str, secrets: str, *, timeout: httpx.Timeout | None = None) -> None:
        self.url = url
        self.secrets = secrets
        self.http = httpx.Client(timeout=timeout or DELIVERY_TIMEOUT)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventSender | None:
        """The sender EVENTS_URL configures, or None: events then wait in the outbox."""
        if not settings.events_url or not settings.events_webhook_secret:
            return None
        return cls(settings.events_url, settings.events_webhook_secret)

    def send(self, event: dict[str, Any]) -> None:
        """POST one event; raise DeliveryError unless the receiver answers 2xx."""
        body = event_body(event)
        headers = webhooks.sign(self.secrets, str(event["id"]), body)
        headers["Content-Type"] = "application/json"
        try:
            response = self.http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"{type(exc).__name__} posting to EVENTS_URL", unavailable=True
            ) from exc
        if not response.is_success:
            answer = response.text[:ERROR_BODY_CHARS]
            raise DeliveryError(f"EVENTS_URL answered HTTP {response.status_code}: {answer}")

    def close(self) -> None:
        self.http.close()


def deliver_events(
    db: Database,
    sender: EventSender,
    *,
    batch: int = EVENTS_BATCH,
    budget_seconds: float = TIME_BUDGET_SECONDS,
) -> dict[str, int]:
    """Deliver due events in batches until none are left, the budget is spent or the receiver
    is unavailable; returns `{delivered, failed}` (failed attempts, retried later or given up)."""
    deadline = time.monotonic() + budget_seconds
    delivered = failed = 0
    unavailable = False
    while not unavailable and time.monotonic() < deadline:
        events = db.rpc("claim_events", p_limit=batch, p_lease_seconds=CLAIM_LEASE_SECONDS)[
            "events"
        ]
        results = []
        for event in events:
            if unavailable or time.monotonic() >= deadline:
                break
            results.append(_attempt(sender, event))
            unavailable = results[-1].pop("unavailable")
        if results:
            recorded = db.rpc("record_event_deliveries", p_results=Json(results))
            delivered += recorded["delivered"]
            failed += recorded["failed"]
        if len(events) < batch:
            break
    return {"delivered": delivered, "failed": failed}


def _attempt(sender: EventSender, event: dict[str, Any]) -> dict[str, Any]:
    """One attempt's result for record_event_deliveries, and whether the receiver was available."""
    try:
        sender.send(event)
    except DeliveryError as exc:
        retry_in = retry_delay(event["attempts"] + 1)
        log_event(
            "event_delivery_failed",
            logging.ERROR if retry_in is None else logging.WARNING,
            event_id=event["id"],
            type=event["type"],
            attempt=event["attempts"] + 1,
            error=str(exc),
            retry_in_seconds=retry_in,
        )
        return {
            "id": event["id"],
            "delivered": False,
            "error": str(exc),
            "retry_in_seconds": retry_in,
            "unavailable": exc.unavailable,
        }
    return {"id": event["id"], "delivered": True, "unavailable": False}
