"""Guarantee 13: no credit is held by a job nobody starts within dispatch_timeout_seconds.

Queue jobs no worker claims and pushed retries never dispatched (e.g. a paused kind) are failed
and refunded by fail_unstarted_jobs (run by maintenance); claim_jobs never starts an overdue job.
"""

from __future__ import annotations

from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    claim,
    create_job,
    job_row,
    ledger_for_job,
    raises_error,
)


def become_available(conn, job_id, seconds_ago: int) -> None:
    conn.execute(
        "update public.jobs set available_at = now() - make_interval(secs => %s) where id = %s",
        (seconds_ago, job_id),
    )


def test_a_queue_job_nobody_claims_is_refunded_after_its_deadline(conn, make_user):
    add_kind(conn, "video", cost=7, dispatch_timeout_seconds=60)
    user = make_user(balance=7)
    waiting = create_job(conn, user, "video")
    become_available(conn, waiting["id"], 59)
    assert call(conn, "fail_unstarted_jobs", limit=100) == {"failed": 0}
    become_available(conn, waiting["id"], 61)
    assert claim(conn, ["video"]) == []  # overdue: not started any more
    assert call(conn, "fail_unstarted_jobs", limit=100) == {"failed": 1}
    job = job_row(conn, waiting["id"])
    assert job["status"] == "failed" and job["refunded"] == 7
    assert "no worker started attempt 1 within 60 s" in job["error_message"]
    assert ledger_for_job(conn, waiting["id"]) == [("charge", -7), ("refund", 7)]
    assert balance(conn, user) == 7
    assert call(conn, "fail_unstarted_jobs", limit=100) == {"failed": 0}


def test_a_paused_kind_holds_no_credit_forever(conn, make_user):
    add_kind(conn, "video", cost=3, dispatch_timeout_seconds=60, paused=True)
    add_kind(conn, "film", cost=3, dispatch_timeout_seconds=60, paused=True)
    user = make_user(balance=6)
    conn.execute("update public.job_kinds set paused = false")
    queued = create_job(conn, user, "video")
    pushed = create_job(conn, user, "film", pipeline="webhook")
    # the pushed job's attempt 1 failed as retryable; its attempt 2 waits for a dispatch
    call(conn, "fail_job", job_id=pushed["id"], attempt=1, error="busy", retryable=True)
    conn.execute("update public.job_kinds set paused = true")
    for job in (queued, pushed):
        become_available(conn, job["id"], 61)
    assert call(conn, "take_jobs_to_dispatch", limit=100)["jobs"] == []
    assert call(conn, "fail_unstarted_jobs", limit=100) == {"failed": 2}
    assert job_row(conn, pushed["id"])["error_message"].startswith("no pipeline started attempt 2")
    assert balance(conn, user) == 6


def test_jobs_in_flight_and_fresh_jobs_are_left_alone(conn, make_user):
    add_kind(conn, "video", cost=1, dispatch_timeout_seconds=60)
    user = make_user(balance=3)
    running = create_job(conn, user, "video")
    claim(conn, ["video"])
    dispatched = create_job(conn, user, "video", pipeline="webhook")
    fresh = create_job(conn, user, "video")
    for job in (running, dispatched):
        become_available(conn, job["id"], 3600)
    assert call(conn, "fail_unstarted_jobs", limit=100) == {"failed": 0}
    assert [job_row(conn, j["id"])["status"] for j in (running, dispatched, fresh)] == [
        "processing",
        "pending",
        "pending",
    ]


def test_fail_unstarted_jobs_works_in_batches(conn, make_user):
    add_kind(conn, "video", cost=1, dispatch_timeout_seconds=60)
    add_kind(conn, "image", cost=1, dispatch_timeout_seconds=60)
    user = make_user(balance=5)
    for kind in ("video", "video", "video", "image", "image"):
        become_available(conn, create_job(conn, user, kind)["id"], 61)
    assert call(conn, "fail_unstarted_jobs", limit=2) == {"failed": 2}
    assert call(conn, "fail_unstarted_jobs", limit=2) == {"failed": 2}
    assert call(conn, "fail_unstarted_jobs", limit=2) == {"failed": 1}
    assert balance(conn, user) == 5
    with raises_error("invalid_argument"):
        call(conn, "fail_unstarted_jobs", limit=0)
