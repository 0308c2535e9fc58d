"""The outbox (guarantee 12, docs/events.md): each money change writes its event in its own
transaction, exactly once — never missing, never twice, rolled back with the change."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    claim_one,
    create_job,
    expire_lease,
    raises_error,
)
from tests.integration.test_grants import expire_now, grant
from tests.integration.test_security import INSUFFICIENT_PRIVILEGE, USER_ROLES, as_role

DEFAULT_THRESHOLD = 10


def last_seq(conn) -> int:
    return conn.execute("select coalesce(max(seq), 0) as seq from public.credit_events").fetchone()[
        "seq"
    ]


def events_since(conn, seq: int, *types: str) -> list[dict]:
    """Events written after `seq` (of those types, if named), in outbox order."""
    return conn.execute(
        "select user_id, type, payload from public.credit_events"
        " where seq > %s and (cardinality(%s::text[]) = 0 or type = any(%s::text[])) order by seq",
        (seq, list(types), list(types)),
    ).fetchall()


def types_since(conn, seq: int) -> list[str]:
    return [event["type"] for event in events_since(conn, seq)]


def test_a_completion_emits_job_completed_once_with_its_partial_capture(conn, make_user):
    add_kind(conn, "story", 10)
    user = make_user(30)
    create_job(conn, user, "story", params={"big": "x" * 100})
    job = claim_one(conn, "story")
    mark = last_seq(conn)

    call(conn, "complete_job", job_id=job["id"], attempt=1, result={"text": "…"}, credits_used=4)
    call(conn, "complete_job", job_id=job["id"], attempt=1, result={"text": "…"})  # duplicate

    [event] = events_since(conn, mark)
    assert (event["type"], event["user_id"]) == ("job.completed", user)
    assert event["payload"]["job"]["id"] == job["id"]
    assert event["payload"]["job"]["status"] == "completed"
    assert (event["payload"]["refunded"], event["payload"]["balance"]) == (6, 26)
    assert "params" not in event["payload"]["job"] and "result" not in event["payload"]["job"]


def fail_by(conn, how: str, job_id, attempt: int) -> None:
    """End the job failed (refunded) the way `how` does."""
    match how:
        case "fail_job":
            call(conn, "fail_job", job_id=job_id, attempt=attempt, error="boom")
        case "pipeline report":
            call(conn, "apply_pipeline_report", job_id=job_id, attempt=attempt, status="failed")
        case "refund_job_atomic":
            call(conn, "refund_job_atomic", job_id=job_id, reason="admin")
        case "reap_stalled_jobs":
            expire_lease(conn, job_id)
            call(conn, "reap_stalled_jobs", limit=10)
        case "take_jobs_to_dispatch":
            conn.execute(
                "update public.jobs set dispatched_at = now() - interval '1 hour',"
                " lease_expires_at = now() - interval '1 second' where id = %s",
                (job_id,),
            )
            call(conn, "take_jobs_to_dispatch", limit=10)
        case "fail_unstarted_jobs":
            conn.execute(
                "update public.jobs set available_at = now() - interval '1 hour' where id = %s",
                (job_id,),
            )
            call(conn, "fail_unstarted_jobs", limit=10)


FAILURES = [
    "fail_job",
    "pipeline report",
    "refund_job_atomic",
    "reap_stalled_jobs",
    "take_jobs_to_dispatch",
    "fail_unstarted_jobs",
]


@pytest.mark.parametrize("how", FAILURES)
def test_every_way_a_job_fails_emits_job_failed_once_with_its_refund(conn, make_user, how):
    add_kind(conn, "story", 10, max_attempts=1, dispatch_timeout_seconds=600)
    user = make_user(30)
    if how == "take_jobs_to_dispatch":
        job = create_job(conn, user, "story", pipeline="webhook")
    elif how == "fail_unstarted_jobs":
        job = create_job(conn, user, "story")
    else:
        create_job(conn, user, "story")
        job = claim_one(conn, "story")
    mark = last_seq(conn)

    fail_by(conn, how, job["id"], job["attempt"])
    fail_by(conn, how, job["id"], job["attempt"])  # again: already failed, nothing new

    [event] = events_since(conn, mark)
    assert event["type"] == "job.failed" and event["payload"]["job"]["id"] == job["id"]
    assert (event["payload"]["refunded"], event["payload"]["balance"]) == (10, 30)
    assert event["payload"]["job"]["error_message"]
    assert balance(conn, user) == 30


def test_a_retried_failure_is_no_event_until_the_job_ends(conn, make_user):
    add_kind(conn, "story", 10, max_attempts=2)
    user = make_user(30)
    create_job(conn, user, "story")
    job = claim_one(conn, "story")
    mark = last_seq(conn)

    call(conn, "fail_job", job_id=job["id"], attempt=1, error="flaky", retryable=True)
    assert types_since(conn, mark) == []
    again = claim_one(conn, "story")
    call(conn, "fail_job", job_id=again["id"], attempt=2, error="flaky", retryable=True)
    assert types_since(conn, mark) == ["job.failed"]


def test_a_cancel_emits_job_cancelled_once(conn, make_user):
    add_kind(conn, "story", 10)
    user = make_user(30)
    job = create_job(conn, user, "story")
    mark = last_seq(conn)

    call(conn, "cancel_job", job_id=job["id"], user_id=user)
    call(conn, "cancel_job", job_id=job["id"], user_id=user)  # already_refunded

    [event] = events_since(conn, mark)
    assert event["type"] == "job.cancelled" and event["payload"]["job"]["status"] == "cancelled"
    assert (event["payload"]["refunded"], event["payload"]["balance"]) == (10, 30)


def test_a_free_job_still_reports_its_end_and_moves_no_credits(conn, make_user):
    add_kind(conn, "free", 0)
    user = make_user(30)
    job = create_job(conn, user, "free")
    mark = last_seq(conn)

    call(conn, "cancel_job", job_id=job["id"], user_id=user)

    [event] = events_since(conn, mark)
    assert event["type"] == "job.cancelled"
    assert (event["payload"]["refunded"], event["payload"]["balance"]) == (0, 30)


def test_every_grant_emits_credits_granted_once(conn, make_user):
    user = make_user()
    mark = last_seq(conn)

    paid = grant(conn, user, 40, category="paid", source="stripe", external_id="cs_1")
    grant(conn, user, 40, category="paid", source="stripe", external_id="cs_1")  # duplicate
    call(conn, "admin_grant_credits", user_id=user, amount=15, reason="goodwill")
    call(conn, "admin_grant_credits", user_id=user, amount=-5, reason="correction")

    granted = events_since(conn, mark, "credits.granted")
    assert [(e["payload"]["amount"], e["payload"]["balance"]) for e in granted] == [
        (40, 40),
        (15, 55),
    ]
    assert granted[0]["payload"]["grant"]["id"] == paid["id"]
    assert granted[0]["payload"]["grant"]["external_id"] == "cs_1"
    assert granted[1]["payload"]["grant"]["category"] == "adjustment"
    assert granted[1]["payload"]["reason"] == "goodwill"


def test_credits_low_fires_once_per_crossing_and_rearms_above_the_threshold(conn, make_user):
    add_kind(conn, "story", 8)
    user = make_user(30)
    mark = last_seq(conn)

    create_job(conn, user, "story")  # 22
    second = create_job(conn, user, "story")  # 14
    crossing = create_job(conn, user, "story")  # 6: below 10
    assert types_since(conn, mark) == ["credits.low"]
    call(conn, "admin_grant_credits", user_id=user, amount=-1, reason="still below")  # 5
    call(conn, "cancel_job", job_id=second["id"], user_id=user)  # 13: above again, re-armed
    call(conn, "admin_grant_credits", user_id=user, amount=-3, reason="to the threshold")  # 10
    assert types_since(conn, mark) == ["credits.low", "job.cancelled"]
    create_job(conn, user, "story")  # 2: crosses again

    low = events_since(conn, mark, "credits.low")
    assert [(e["payload"]["balance"], e["payload"]["entry_type"]) for e in low] == [
        (6, "charge"),
        (2, "charge"),
    ]
    assert low[0]["payload"]["job_id"] == crossing["id"]
    assert low[0]["payload"]["threshold"] == DEFAULT_THRESHOLD
    entry = conn.execute(
        "select balance_after from public.credit_ledger where id = %s",
        (low[0]["payload"]["entry_id"],),
    ).fetchone()
    assert entry["balance_after"] == 6


def test_an_accounts_threshold_overrides_the_deployments(conn, make_user):
    add_kind(conn, "story", 10)
    user = make_user(100)
    answer = call(conn, "set_low_balance_threshold", user_id=user, threshold=80)
    assert (answer["low_balance_threshold"], answer["effective_threshold"]) == (80, 80)
    mark = last_seq(conn)

    create_job(conn, user, "story")  # 90
    create_job(conn, user, "story")  # 80: not below
    create_job(conn, user, "story")  # 70: below 80
    call(conn, "set_low_balance_threshold", user_id=user, threshold=0)  # off
    create_job(conn, user, "story")  # 60
    call(conn, "set_low_balance_threshold", user_id=user, threshold=None)  # the default again
    conn.execute("update public.credit_settings set low_balance_threshold = 55")
    create_job(conn, user, "story")  # 50: below 55

    low = events_since(conn, mark, "credits.low")
    assert [(e["payload"]["balance"], e["payload"]["threshold"]) for e in low] == [
        (70, 80),
        (50, 55),
    ]
    with raises_error("invalid_argument"):
        call(conn, "set_low_balance_threshold", user_id=user, threshold=-1)


def test_credits_depleted_fires_each_time_the_balance_reaches_zero(conn, make_user):
    add_kind(conn, "story", 10)
    user = make_user(10)
    mark = last_seq(conn)

    job = create_job(conn, user, "story")  # 0: low (from 10) and depleted
    call(conn, "cancel_job", job_id=job["id"], user_id=user)  # 10
    create_job(conn, user, "story")  # 0 again
    with raises_error("insufficient_credits"):
        create_job(conn, user, "story")

    assert types_since(conn, mark) == [
        "credits.low",
        "credits.depleted",
        "job.cancelled",
        "credits.low",
        "credits.depleted",
    ]
    depleted = events_since(conn, mark, "credits.depleted")
    assert [e["payload"]["balance"] for e in depleted] == [0, 0]
    assert depleted[0]["payload"]["job_id"] == job["id"]


def test_every_expired_grant_emits_credits_expired_once(conn, make_user):
    add_kind(conn, "story", 5)
    user = make_user()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    promo = grant(conn, user, 20, category="promo", expires_at=soon)
    pack = grant(conn, user, 30, category="paid", expires_at=soon)
    grant(conn, user, 50, category="paid")
    mark = last_seq(conn)
    expire_now(conn, promo["id"])
    expire_now(conn, pack["id"])

    call(conn, "expire_credits", limit=10)
    call(conn, "expire_credits", limit=10)  # nothing left to expire
    create_job(conn, user, "story")

    expired = events_since(conn, mark, "credits.expired")
    assert {(e["payload"]["grant"]["id"], e["payload"]["amount"]) for e in expired} == {
        (promo["id"], -20),
        (pack["id"], -30),
    }
    assert expired[-1]["payload"]["balance"] == 50
    assert types_since(conn, mark) == ["credits.expired", "credits.expired"]


def test_a_money_function_that_meets_a_due_grant_first_emits_its_expiry(conn, make_user):
    add_kind(conn, "story", 5)
    user = make_user()
    promo = grant(
        conn, user, 20, category="promo", expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    grant(conn, user, 12, category="paid")
    expire_now(conn, promo["id"])
    mark = last_seq(conn)

    create_job(conn, user, "story")  # expires the promo (32 -> 12), then charges 5: below 10

    assert types_since(conn, mark) == ["credits.expired", "credits.low"]
    call(conn, "expire_credits", limit=10)
    assert types_since(conn, mark) == ["credits.expired", "credits.low"]


class Undo(Exception):
    """Raised to roll a transaction back."""


def test_events_roll_back_with_their_change(conn, make_user):
    """Written in the money function's own transaction: no change, no event."""
    add_kind(conn, "story", 10)
    user = make_user(10)
    create_job(conn, user, "story")
    job = claim_one(conn, "story")
    mark = last_seq(conn)

    with pytest.raises(Undo), conn.transaction():
        call(conn, "complete_job", job_id=job["id"], attempt=1, credits_used=2)
        assert types_since(conn, mark) == ["job.completed"]
        raise Undo
    with raises_error("insufficient_credits"):
        create_job(conn, user, "story")

    assert types_since(conn, mark) == []
    assert (
        conn.execute("select status from public.jobs where id = %s", (job["id"],)).fetchone()[
            "status"
        ]
        == "processing"
    )


@pytest.mark.parametrize("role", USER_ROLES)
def test_data_api_users_neither_read_nor_write_the_outbox(conn, make_user, role):
    user = make_user(10)
    for relation in ("credit_events", "undelivered_events"):
        for query in (
            sql.SQL("select * from public.{}"),
            sql.SQL("delete from public.{}"),
        ):
            statement = query.format(sql.Identifier(relation))
            with pytest.raises(psycopg.Error) as refused, as_role(conn, role, user):
                conn.execute(statement)
            assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE, statement.as_string(conn)
    for function in ("claim_events()", "replay_events()"):
        with pytest.raises(psycopg.Error) as refused, as_role(conn, role, user):
            conn.execute(f"select public.{function}")
        assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE
