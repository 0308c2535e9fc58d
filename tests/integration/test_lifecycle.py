"""Job lifecycle: terminal states are final, reports are fenced by attempt, stalled jobs are reaped
(guarantees 4, 5, 6 and docs/lifecycle.md)."""

from __future__ import annotations

import typing

import psycopg
import pytest

from shared.api.models import JobStatus
from tests.integration.sqlfns import (
    add_kind,
    assert_late_reports_refused,
    balance,
    call,
    claim,
    claim_one,
    create_job,
    discrepancies,
    expire_lease,
    job_row,
    ledger_for_job,
    raises_error,
)

pytestmark = pytest.mark.integration


def seconds_until(conn: psycopg.Connection, column: str, job_id) -> float:
    row = conn.execute(
        f"select extract(epoch from {column} - now()) as s from public.jobs where id = %s",
        (job_id,),
    ).fetchone()
    return float(row["s"])


def jobs_in_every_terminal_state(conn: psycopg.Connection, user) -> dict[str, dict]:
    completed = create_job(conn, user, "image")
    call(conn, "complete_job", job_id=completed["id"], attempt=claim_one(conn, "image")["attempt"])
    failed = create_job(conn, user, "image")
    call(conn, "fail_job", job_id=failed["id"], attempt=claim_one(conn, "image")["attempt"])
    cancelled = create_job(conn, user, "image")
    call(conn, "cancel_job", job_id=cancelled["id"], user_id=user)
    return {"completed": completed, "failed": failed, "cancelled": cancelled}


def test_late_completion_never_overwrites_failed(conn, make_user):
    """G4: after a job failed (and was refunded), a completion of the same attempt is CJ004 and
    the job stays failed with one refund."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")
    call(conn, "fail_job", job_id=job["id"], attempt=1, error="gpu lost")

    assert_late_reports_refused(conn, job["id"], 1, "invalid_transition")

    assert job_row(conn, job["id"])["status"] == "failed"
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]
    assert balance(conn, user) == 10


def test_no_raw_update_moves_a_job_out_of_a_terminal_state(conn, make_user):
    """G4: the trigger, not only the functions, freezes terminal jobs: an admin's raw UPDATE to any
    other status (or of the money columns) is CJ004."""
    add_kind(conn, "image", 10)
    user = make_user(30)
    jobs = jobs_in_every_terminal_state(conn, user)

    for status, job in jobs.items():
        for target in typing.get_args(JobStatus):
            if target == status:
                continue
            with raises_error("invalid_transition"):
                conn.execute(
                    "update public.jobs set status = %s, finished_at = case when %s"
                    " in ('pending', 'processing') then null else finished_at end where id = %s",
                    (target, target, job["id"]),
                )
        for money in (
            "refunded = cost - refunded",
            "credits_used = 0",
            "cost = cost + 1",
            "attempt = 9",
        ):
            with raises_error("invalid_transition"):
                conn.execute(f"update public.jobs set {money} where id = %s", (job["id"],))
        assert job_row(conn, job["id"])["status"] == status

    # a harmless edit of a finished job (no status or money change) is still allowed
    conn.execute(
        "update public.jobs set error_message = 'note' where id = %s", (jobs["failed"]["id"],)
    )


def test_legal_transitions_pass_the_trigger(conn, make_user):
    """G4 (the other side): the trigger lets every legal move of docs/lifecycle.md through,
    including pending -> pending, processing -> pending (retry) and pending -> completed."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    job = create_job(conn, user, "image")

    def move(status: str) -> None:
        conn.execute("update public.jobs set status = %s where id = %s", (status, job["id"]))

    move("pending")
    move("processing")
    move("pending")
    conn.execute(
        "update public.jobs set status = 'completed', finished_at = now() where id = %s",
        (job["id"],),
    )
    assert job_row(conn, job["id"])["status"] == "completed"


def test_attempt_never_goes_back(conn, make_user):
    """G5: the fence itself can't be rewound, even by a raw UPDATE."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")

    with raises_error("invalid_transition"):
        conn.execute("update public.jobs set attempt = 0 where id = %s", (job["id"],))


def test_reports_for_an_older_attempt_are_rejected_and_change_nothing(conn, make_user):
    """G5: once attempt 2 started, every report carrying attempt 1 is CJ005 and leaves the job
    and the ledger exactly as they were (so is a report for an attempt not yet started)."""
    add_kind(conn, "image", 10)
    user = make_user(10)
    create_job(conn, user, "image")
    job = claim_one(conn, "image")
    call(conn, "fail_job", job_id=job["id"], attempt=1, error="429", retryable=True)
    assert claim_one(conn, "image")["attempt"] == 2
    before = job_row(conn, job["id"])

    stale_reports = [
        ("heartbeat_job", {"progress": 50}),
        ("complete_job", {"result": {"stale": True}, "credits_used": 1}),
        ("fail_job", {"error": "stale", "retryable": False}),
        ("refund_job_atomic", {"reason": "stale"}),
    ]
    for attempt in (1, 3):
        for function, params in stale_reports:
            with raises_error("stale_attempt"):
                call(conn, function, job_id=job["id"], attempt=attempt, **params)

    assert job_row(conn, job["id"]) == before
    assert ledger_for_job(conn, job["id"]) == [("charge", -10)]
    assert balance(conn, user) == 0


def test_claim_starts_a_new_attempt_with_the_kinds_lease(conn, make_user):
    """G5/G6: each claim increments attempt and sets a lease of lease_seconds; a heartbeat of the
    current attempt extends it and records progress."""
    add_kind(conn, "image", 10, lease_seconds=120)
    user = make_user(10)
    create_job(conn, user, "image")

    job = claim_one(conn, "image")

    assert (job["status"], job["attempt"]) == ("processing", 1)
    assert 119 <= seconds_until(conn, "lease_expires_at", job["id"]) <= 120
    assert claim(conn, ["image"]) == []
    conn.execute(
        "update public.jobs set lease_expires_at = now() + interval '5 seconds' where id = %s",
        (job["id"],),
    )
    beat = call(conn, "heartbeat_job", job_id=job["id"], attempt=1, progress=40)
    assert (beat["outcome"], beat["job"]["progress"]) == ("applied", 40)
    assert 119 <= seconds_until(conn, "lease_expires_at", job["id"]) <= 120
    with raises_error("invalid_argument"):
        call(conn, "heartbeat_job", job_id=job["id"], attempt=1, progress=101)


def test_pushed_job_starts_its_first_attempt_at_creation(conn, make_user):
    """G5 (push mode): create_job(p_pipeline => webhook) opens attempt 1 without a worker claim; the
    pipeline's first heartbeat makes it processing, and a completion may even come first."""
    add_kind(conn, "image", 10, lease_seconds=60)
    user = make_user(20)

    pushed = create_job(conn, user, "image", pipeline="webhook")
    fast = create_job(conn, user, "image", pipeline="webhook")

    assert (pushed["status"], pushed["attempt"]) == ("pending", 1)
    assert 59 <= seconds_until(conn, "lease_expires_at", pushed["id"]) <= 60
    assert claim(conn, ["image"]) == []  # already handed to a pipeline
    beat = call(conn, "heartbeat_job", job_id=pushed["id"], attempt=1, progress=10)
    assert beat["job"]["status"] == "processing"
    done = call(conn, "complete_job", job_id=fast["id"], attempt=1, result={"ok": 1})
    assert (done["outcome"], done["job"]["status"]) == ("applied", "completed")


def test_stalled_worker_story(conn, make_user):
    """G6 + G5 + G3: attempt 1 stalls, its lease expires, the reaper retries the job, attempt 2
    fails for good and is refunded once; attempt 1's late completion is rejected as stale."""
    add_kind(conn, "story", 10, max_attempts=3)
    user = make_user(10)
    job = create_job(conn, user, "story")
    assert claim_one(conn, "story")["attempt"] == 1  # worker A
    call(conn, "heartbeat_job", job_id=job["id"], attempt=1, progress=30)
    expire_lease(conn, job["id"])  # worker A froze

    stalled = conn.execute("select id::text, attempt from public.stalled_jobs").fetchall()
    assert stalled == [{"id": job["id"], "attempt": 1}]

    assert call(conn, "reap_stalled_jobs") == {"reaped": 1, "retried": 1}
    assert job_row(conn, job["id"])["status"] == "pending"
    assert conn.execute("select count(*) as n from public.stalled_jobs").fetchone()["n"] == 0

    attempt_2 = claim_one(conn, "story")  # worker B
    assert (attempt_2["id"], attempt_2["attempt"]) == (job["id"], 2)
    failed = call(conn, "fail_job", job_id=job["id"], attempt=2, error="bad input")
    assert failed["outcome"] == "refunded"

    assert_late_reports_refused(conn, job["id"], 1, "stale_attempt")  # worker A wakes up

    assert job_row(conn, job["id"])["status"] == "failed"
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]
    assert balance(conn, user) == 10
    assert discrepancies(conn) == []


def test_reaping_the_last_attempt_fails_and_refunds(conn, make_user):
    """G6: a stalled job with no attempts left is failed and refunded by the reaper, once."""
    add_kind(conn, "story", 10, max_attempts=1)
    user = make_user(10)
    create_job(conn, user, "story")
    job = claim_one(conn, "story")
    expire_lease(conn, job["id"])

    assert call(conn, "reap_stalled_jobs") == {"reaped": 1, "retried": 0}
    assert call(conn, "reap_stalled_jobs") == {"reaped": 0, "retried": 0}

    row = job_row(conn, job["id"])
    assert (row["status"], row["refunded"]) == ("failed", 10)
    assert "stalled" in row["error_message"]
    assert ledger_for_job(conn, job["id"]) == [("charge", -10), ("refund", 10)]
    assert balance(conn, user) == 10
    with raises_error("invalid_transition"):
        call(conn, "complete_job", job_id=job["id"], attempt=1)


def test_reaper_leaves_live_jobs_alone_and_waits_the_retry_delay(conn, make_user):
    """G6: only expired leases are reaped (a heartbeating job is not); a reaped job becomes
    claimable again only after its kind's retry_delay_seconds."""
    add_kind(conn, "story", 10, max_attempts=3, retry_delay_seconds=60)
    user = make_user(20)
    create_job(conn, user, "story")
    create_job(conn, user, "story")
    stalled, alive = claim(conn, ["story"], limit=2)
    expire_lease(conn, stalled["id"])

    assert call(conn, "reap_stalled_jobs") == {"reaped": 1, "retried": 1}

    assert job_row(conn, alive["id"])["status"] == "processing"
    assert 59 <= seconds_until(conn, "available_at", stalled["id"]) <= 60
    assert claim(conn, ["story"]) == []
    conn.execute("update public.jobs set available_at = now() where id = %s", (stalled["id"],))
    assert claim_one(conn, "story")["attempt"] == 2


def test_reap_honours_its_limit(conn, make_user):
    """G6: reap_stalled_jobs works in batches of p_limit, so a backlog drains over calls."""
    add_kind(conn, "story", 1, max_attempts=1)
    user = make_user(5)
    for _ in range(5):
        create_job(conn, user, "story")
    for job in claim(conn, ["story"], limit=5):
        expire_lease(conn, job["id"])

    assert call(conn, "reap_stalled_jobs", limit=3) == {"reaped": 3, "retried": 0}
    assert call(conn, "reap_stalled_jobs", limit=3) == {"reaped": 2, "retried": 0}
    assert balance(conn, user) == 5
