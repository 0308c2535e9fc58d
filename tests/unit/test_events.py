"""The outbox's delivery policy and wire format (docs/events.md#delivery)."""

from __future__ import annotations

import json

from shared.push import events


def test_retries_back_off_exponentially_up_to_a_cap_then_give_up():
    delays = [events.retry_delay(attempts) for attempts in range(1, events.MAX_ATTEMPTS + 1)]
    assert delays[:4] == [60, 120, 240, 480]
    *retries, last = delays
    assert retries == sorted(retries) and retries[-1] == events.RETRY_MAX_SECONDS
    assert last is None  # the MAX_ATTEMPTS-th failure gives up
    hours = sum(retries) / 3600
    assert 18 < hours < 24


def test_a_claimed_batch_is_recorded_before_its_lease_ends():
    longest_request = events.DELIVERY_TIMEOUT.read + events.DELIVERY_TIMEOUT.connect
    assert events.TIME_BUDGET_SECONDS + longest_request < events.CLAIM_LEASE_SECONDS


def test_the_body_is_the_standard_webhooks_envelope_with_the_user_in_data():
    body = events.event_body(
        {
            "id": "evt-1",
            "type": "credits.low",
            "created_at": "2026-12-01T15:00:00+00:00",
            "user_id": "u1",
            "payload": {"balance": 4, "threshold": 10},
            "attempts": 0,
        }
    )
    assert json.loads(body) == {
        "id": "evt-1",
        "type": "credits.low",
        "timestamp": "2026-12-01T15:00:00+00:00",
        "data": {"user_id": "u1", "balance": 4, "threshold": 10},
    }
    assert " " not in body
