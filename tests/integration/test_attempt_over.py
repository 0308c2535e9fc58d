"""An attempt that was retried is over (guarantee 5): until the next attempt starts, its late
reports must neither revive the job nor move money."""

from __future__ import annotations

import pytest

from tests.integration.sqlfns import (
    add_kind,
    assert_late_reports_refused,
    balance,
    call,
    claim_one,
    create_job,
    job_row,
    ledger_for_job,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def retried_job(conn, make_user):
    """A queue job whose attempt 1 failed retryably and now waits (no one claimed attempt 2)."""
    add_kind(conn, "story", cost=10, max_attempts=3, retry_delay_seconds=3600)
    user = make_user(balance=10)
    job = create_job(conn, user, "story")
    claim_one(conn, "story")
    failed = call(
        conn, "fail_job", job_id=job["id"], attempt=1, error="rate limited", retryable=True
    )
    assert failed["outcome"] == "retried"
    return user, job["id"]


def test_late_heartbeat_and_completion_of_a_retried_attempt_are_stale(conn, retried_job):
    user, job_id = retried_job
    assert_late_reports_refused(conn, job_id, 1, "stale_attempt")
    assert job_row(conn, job_id)["status"] == "pending"
    assert balance(conn, user) == 0


def test_replayed_failure_of_a_retried_attempt_is_a_duplicate_not_a_refund(conn, retried_job):
    user, job_id = retried_job
    replay = call(conn, "fail_job", job_id=job_id, attempt=1, error="fatal", retryable=False)
    assert replay["outcome"] == "duplicate"
    assert job_row(conn, job_id)["status"] == "pending"
    assert ledger_for_job(conn, job_id) == [("charge", -10)]
    assert balance(conn, user) == 0
