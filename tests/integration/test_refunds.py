"""Refunds: exactly once, in the transaction that ends the job (guarantee 3, partial capture)."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    claim,
    claim_one,
    create_job,
    discrepancies,
    job_row,
    ledger_for_job,
    outcome_or_error,
    race,
    raises_error,
    slow_down_job_updates,
)

pytestmark = pytest.mark.integration

UNIQUE_VIOLATION = "23505"


def refund_entry_time(conn: psycopg.Connection, job_id) -> object:
    row = conn.execute(
        "select created_at from public.credit_ledger where job_id = %s and entry_type = 'refund'",
        (job_id,),
    ).fetchone()
    return row["created_at"]


def test_parallel_refunds_of_one_job_refund_once(conn, db_url, make_user):
    """G3: 16 simultaneous refund_job_atomic calls on separate connections: one refund, the
    others wait for it (row lock) and answer already_refunded."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    job = create_job(conn, user, "image")
    slow_down_job_updates(conn, 0.2)

    outcomes = race(
        db_url, 16, lambda c, _i: outcome_or_error(c, "refund_job_atomic", job_id=job["id"])
    )

    assert outcomes == {"refunded": 1, "already_refunded": 15}
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]
    assert balance(conn, user) == 10


def test_racing_refund_fail_and_cancel_end_the_job_once(conn, db_url, make_user):
    """G3: refund_job_atomic, fail_job and cancel_job racing on one running job: exactly one of
    them refunds; the others see the job already ended (already_refunded, duplicate or CJ004)."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")
    slow_down_job_updates(conn, 0.2)

    def end_it(c: psycopg.Connection, i: int) -> str:
        match i % 3:
            case 0:
                return outcome_or_error(c, "refund_job_atomic", job_id=job["id"], reason="admin")
            case 1:
                return outcome_or_error(c, "fail_job", job_id=job["id"], attempt=1, error="x")
            case _:
                return outcome_or_error(c, "cancel_job", job_id=job["id"], user_id=user)

    outcomes = race(db_url, 18, end_it)

    assert outcomes["refunded"] == 1
    assert set(outcomes) <= {"refunded", "already_refunded", "duplicate", "invalid_transition"}
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]
    assert job_row(conn, job["id"])["status"] in ("failed", "cancelled")
    assert balance(conn, user) == 10
    assert discrepancies(conn) == []


def test_database_rejects_a_second_refund_or_charge_entry_for_a_job(conn, make_user):
    """G3: even a raw INSERT into the ledger cannot refund (or charge) a job twice: the unique
    indexes refuse it, not only the functions' checks."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    job = create_job(conn, user, "image")
    call(conn, "refund_job_atomic", job_id=job["id"], reason="first")
    insert = (
        "insert into public.credit_ledger (user_id, job_id, entry_type, amount, balance_after)"
        " values (%s, %s, %s, %s, 100)"
    )

    with raises_error(UNIQUE_VIOLATION):
        conn.execute(insert, (user, job["id"], "refund", 10))
    with raises_error(UNIQUE_VIOLATION):
        conn.execute(insert, (user, job["id"], "charge", -10))
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]


def test_refund_happens_in_the_transaction_that_fails_the_job(conn, make_user):
    """G3: a failed job's refund entry is written by the same transaction (same now()) that
    set it failed, and a refund of a completed job is refused."""
    add_kind(conn, "image", 10)
    user = make_user(20)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")

    failed = call(conn, "fail_job", job_id=job["id"], attempt=1, error="boom", retryable=False)

    assert failed["outcome"] == "refunded"
    assert (failed["job"]["status"], failed["job"]["refunded"]) == ("failed", 10)
    assert failed["job"]["error_message"] == "boom"
    assert refund_entry_time(conn, job["id"]) == job_row(conn, job["id"])["finished_at"]
    assert balance(conn, user) == 20

    done = create_job(conn, user, "image")
    call(conn, "complete_job", job_id=done["id"], attempt=claim_one(conn, "image")["attempt"])
    with raises_error("invalid_transition"):
        call(conn, "refund_job_atomic", job_id=done["id"], reason="too late")
    assert ledger_for_job(conn, done["id"]) == [("charge", -10)]


def test_retryable_failure_retries_after_the_delay_until_attempts_run_out(conn, make_user):
    """Retries: a retryable failure with attempts left goes back to pending, unrefunded, claimable
    only after retry_delay_seconds; the last attempt's failure refunds once."""
    add_kind(conn, "voice", 10, max_attempts=2, retry_delay_seconds=30)
    user = make_user(10)
    job = create_job(conn, user, "voice")
    claim_one(conn, "voice")

    retried = call(conn, "fail_job", job_id=job["id"], attempt=1, error="429", retryable=True)

    assert retried["outcome"] == "retried"
    assert (retried["job"]["status"], retried["job"]["refunded"]) == ("pending", 0)
    wait = conn.execute(
        "select extract(epoch from available_at - now()) as s from public.jobs where id = %s",
        (job["id"],),
    ).fetchone()["s"]
    assert 29 <= wait <= 30
    assert ledger_for_job(conn, job["id"]) == [("charge", -10)]
    assert claim(conn, ["voice"]) == []  # still inside the retry delay

    conn.execute("update public.jobs set available_at = now() where id = %s", (job["id"],))
    second = claim_one(conn, "voice")
    assert (second["id"], second["attempt"], second["status"]) == (job["id"], 2, "processing")

    last = call(conn, "fail_job", job_id=job["id"], attempt=2, error="429", retryable=True)

    assert last["outcome"] == "refunded"
    assert (last["job"]["status"], last["job"]["refunded"]) == ("failed", 10)
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]
    assert balance(conn, user) == 10
    duplicate = call(conn, "fail_job", job_id=job["id"], attempt=2, error="again", retryable=True)
    assert duplicate["outcome"] == "duplicate"
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]


def test_partial_capture_refunds_the_unused_credits_with_the_completion(conn, make_user):
    """Partial capture: completing with credits_used below the price refunds the difference in
    the completing transaction; a replayed completion changes nothing."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")

    done = call(
        conn, "complete_job", job_id=job["id"], attempt=1, result={"url": "x"}, credits_used=3
    )

    assert done["outcome"] == "applied"
    assert (done["job"]["status"], done["job"]["credits_used"], done["job"]["refunded"]) == (
        "completed",
        3,
        7,
    )
    assert done["job"]["result"] == {"url": "x"}
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 7)]
    assert refund_entry_time(conn, job["id"]) == job_row(conn, job["id"])["finished_at"]
    assert balance(conn, user) == 7

    again = call(conn, "complete_job", job_id=job["id"], attempt=1, credits_used=1)
    assert again["outcome"] == "duplicate" and again["job"]["credits_used"] == 3
    assert balance(conn, user) == 7


def test_completion_without_credits_used_captures_the_whole_price(conn, make_user):
    """Partial capture: no credits_used means the full price was used: no refund entry."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")

    done = call(conn, "complete_job", job_id=job["id"], attempt=1)

    assert (done["job"]["credits_used"], done["job"]["refunded"]) == (10, 0)
    assert ledger_for_job(conn, job["id"]) == [("charge", -10)]
    assert balance(conn, user) == 0


@pytest.mark.parametrize("credits_used", [11, -1])
def test_credits_used_outside_the_price_is_rejected(conn, make_user, credits_used):
    """Partial capture: a pipeline can't capture more than the price (or less than nothing)."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")

    with raises_error("invalid_argument"):
        call(conn, "complete_job", job_id=job["id"], attempt=1, credits_used=credits_used)

    assert job_row(conn, job["id"])["status"] == "processing"
    assert ledger_for_job(conn, job["id"]) == [("charge", -10)]


@pytest.mark.parametrize("claimed", [False, True], ids=["pending", "processing"])
def test_cancel_refunds_a_running_or_waiting_job_once(conn, make_user, claimed):
    """Cancel: a pending or processing job is cancelled with its refund; cancelling again is
    already_refunded; the worker's late completion can't revive it."""
    add_kind(conn, "image", 10)
    user = make_user(15)
    job = create_job(conn, user, "image")
    if claimed:
        claim_one(conn, "image")

    cancelled = call(conn, "cancel_job", job_id=job["id"], user_id=user)

    assert cancelled["outcome"] == "refunded"
    assert (cancelled["job"]["status"], cancelled["job"]["refunded"]) == ("cancelled", 10)
    assert cancelled["balance"] == 15 == balance(conn, user)
    again = call(conn, "cancel_job", job_id=job["id"], user_id=user)
    assert (again["outcome"], again["balance"]) == ("already_refunded", 15)
    if claimed:
        with raises_error("invalid_transition"):
            call(conn, "complete_job", job_id=job["id"], attempt=1)
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]


def test_cancel_refuses_finished_jobs_and_other_users_jobs(conn, make_user):
    """Cancel: a completed or failed job can't be cancelled (CJ004); another user's job looks
    missing (CJ003); neither moves any credit."""
    add_kind(conn, "image", 10)
    user, stranger = make_user(30), make_user(10)
    completed = create_job(conn, user, "image")
    call(conn, "complete_job", job_id=completed["id"], attempt=claim_one(conn, "image")["attempt"])
    failed = create_job(conn, user, "image")
    call(conn, "refund_job_atomic", job_id=failed["id"], reason="admin")
    pending = create_job(conn, user, "image")

    with raises_error("invalid_transition"):
        call(conn, "cancel_job", job_id=completed["id"], user_id=user)
    with raises_error("invalid_transition"):
        call(conn, "cancel_job", job_id=failed["id"], user_id=user)
    with raises_error("not_found"):
        call(conn, "cancel_job", job_id=pending["id"], user_id=stranger)

    assert job_row(conn, pending["id"])["status"] == "pending"
    assert (balance(conn, user), balance(conn, stranger)) == (10, 10)
