"""Per-user active-job limits (guarantee 15) and create_job's replays under concurrency (G8).

job_kinds.max_active_per_user caps how many of one user's jobs of a kind are pending or
processing; create_job refuses one more with CJ008 and charges nothing, exactly, however many
requests race. A replay is answered before the account lock, or by the job insert (ON CONFLICT)
when the first request committed meanwhile.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    claim_one,
    connect,
    create_job,
    discrepancies,
    error_code,
    race,
    raises_error,
    unpaid_or_orphan_charges,
)

pytestmark = pytest.mark.integration


def count(conn: psycopg.Connection, sql: str, *params) -> int:
    return conn.execute(f"select count(*) as n from {sql}", params).fetchone()["n"]


def active(conn: psycopg.Connection, user, kind: str) -> int:
    return count(
        conn,
        "public.jobs where user_id = %s and kind = %s and status in ('pending', 'processing')",
        user,
        kind,
    )


def test_a_user_at_the_limit_is_refused_and_charged_nothing(conn, make_user):
    """G15: the (L+1)-th active job of a kind is CJ008; no job, project, charge or event."""
    add_kind(conn, "story", 10, max_active_per_user=2)
    user = make_user(100)
    create_job(conn, user, "story")
    create_job(conn, user, "story")
    before = {
        table: count(conn, f"public.{table}")
        for table in ("jobs", "projects", "credit_ledger", "credit_events", "credit_allocations")
    }

    with raises_error("too_many_active_jobs") as refused:
        create_job(conn, user, "story")

    assert refused.value.sqlstate == "CJ008"
    assert refused.value.diag.message_primary == (
        "you already have 2 active story jobs (the limit); try again when one finishes"
    )
    assert balance(conn, user) == 80
    assert {table: count(conn, f"public.{table}") for table in before} == before


def test_the_limit_is_per_user_and_per_kind(conn, make_user):
    """G15: other users and other kinds (limited or not) are unaffected."""
    add_kind(conn, "story", 10, max_active_per_user=1)
    add_kind(conn, "voice", 5, max_active_per_user=1)
    add_kind(conn, "image", 1)
    user, other = make_user(100), make_user(100)
    create_job(conn, user, "story")

    with raises_error("too_many_active_jobs") as refused:
        create_job(conn, user, "story")
    assert "you already have 1 active story job (the limit)" in str(refused.value)
    create_job(conn, other, "story")
    create_job(conn, user, "voice")
    for _ in range(5):
        create_job(conn, user, "image")

    assert (active(conn, user, "story"), active(conn, other, "story")) == (1, 1)
    assert (active(conn, user, "voice"), active(conn, user, "image")) == (1, 5)


def test_a_terminal_job_frees_its_slot(conn, make_user):
    """G15: completed, failed and cancelled jobs do not count; processing ones do."""
    add_kind(conn, "story", 10, max_attempts=1, max_active_per_user=1)
    user = make_user(100)

    job = create_job(conn, user, "story")
    claimed = claim_one(conn, "story")  # processing: still active
    with raises_error("too_many_active_jobs"):
        create_job(conn, user, "story")
    call(conn, "complete_job", job_id=job["id"], attempt=claimed["attempt"], result={})

    job = create_job(conn, user, "story")
    call(conn, "cancel_job", job_id=job["id"], user_id=user)

    job = create_job(conn, user, "story")
    claimed = claim_one(conn, "story")
    call(conn, "fail_job", job_id=job["id"], attempt=claimed["attempt"], error="boom")

    create_job(conn, user, "story")
    assert active(conn, user, "story") == 1
    assert balance(conn, user) == 80  # one completed, two refunded, one pending


def test_a_lower_limit_refuses_new_jobs_and_leaves_running_ones(conn, make_user):
    """G15: lowering a kind's limit below what a user runs cancels nothing; null lifts it."""
    add_kind(conn, "story", 10)
    user = make_user(100)
    for _ in range(3):
        create_job(conn, user, "story")
    conn.execute("update public.job_kinds set max_active_per_user = 2 where kind = 'story'")

    with raises_error("too_many_active_jobs"):
        create_job(conn, user, "story")
    assert active(conn, user, "story") == 3

    conn.execute("update public.job_kinds set max_active_per_user = null where kind = 'story'")
    create_job(conn, user, "story")
    assert active(conn, user, "story") == 4


def test_the_limit_must_be_positive(conn):
    with raises_error("23514"):
        add_kind(conn, "story", 10, max_active_per_user=0)


def test_a_replay_at_the_limit_returns_the_first_job(conn, make_user):
    """G8 before G15: a retried request is answered with its job even when the user is at the
    limit, and a new request under a used key is still CJ006, not CJ008."""
    add_kind(conn, "story", 10, max_active_per_user=1)
    user = make_user(100)
    request = {"user_id": user, "kind": "story", "params": {"p": 1}, "idempotency_key": "k-1"}
    first = call(conn, "create_job", **request)

    again = call(conn, "create_job", **request)

    assert again["replayed"] is True and again["job"]["id"] == first["job"]["id"]
    assert again["balance"] == 90 == balance(conn, user)
    with raises_error("idempotency_key_reused"):
        call(conn, "create_job", **{**request, "params": {"p": 2}})
    with raises_error("too_many_active_jobs"):
        call(conn, "create_job", **{**request, "idempotency_key": "k-2"})
    assert count(conn, "public.jobs") == count(conn, "public.projects") == 1


def test_racing_creates_at_a_limit_of_3_make_exactly_3_jobs(conn, db_url, make_user):
    """G15: 16 clients create for one user at once against a limit of 3: exactly 3 jobs, 3
    charges; the other 13 are CJ008 and charged nothing. Racing with them, 8 other users' jobs
    of the kind and 8 of the user's jobs of another kind all go through."""
    add_kind(conn, "story", 10, max_active_per_user=3)
    add_kind(conn, "image", 1)
    user = make_user(1000)
    others = [make_user(1000) for _ in range(8)]

    def create(c: psycopg.Connection, i: int) -> str:
        if i % 4 == 1:
            return "other user: " + create_job(c, others[i // 4], "story")["status"]
        if i % 4 == 3:
            return "other kind: " + create_job(c, user, "image")["status"]
        try:
            create_job(c, user, "story")
            return "created"
        except psycopg.Error as e:
            return error_code(e)

    outcomes = race(db_url, 32, create)

    assert outcomes == {
        "created": 3,
        "too_many_active_jobs": 13,
        "other user: pending": 8,
        "other kind: pending": 8,
    }
    assert active(conn, user, "story") == 3
    assert balance(conn, user) == 1000 - 3 * 10 - 8 * 1
    assert count(conn, "public.credit_ledger where entry_type = 'charge'") == 3 + 8 + 8
    assert count(conn, "public.jobs") == count(conn, "public.projects") == 3 + 8 + 8
    assert unpaid_or_orphan_charges(conn) == []
    assert discrepancies(conn) == []


def test_concurrent_replays_make_one_job_and_one_charge(conn, db_url, make_user):
    """G8: 16 clients send the same key and request at the same instant: one job, one charge,
    one project; the first answer is the creation, the 15 others replays of that same job."""
    add_kind(conn, "story", 10)
    user = make_user(100)

    def create(c: psycopg.Connection, _i: int) -> str:
        response = call(
            c, "create_job", user_id=user, kind="story", params={"p": 1}, idempotency_key="same"
        )
        return f"{response['job']['id']} replayed={response['replayed']}"

    outcomes = race(db_url, 16, create)

    [job_id] = {outcome.split()[0] for outcome in outcomes}
    assert outcomes == {f"{job_id} replayed=False": 1, f"{job_id} replayed=True": 15}
    assert count(conn, "public.jobs") == count(conn, "public.projects") == 1
    assert count(conn, "public.credit_ledger where entry_type = 'charge'") == 1
    assert balance(conn, user) == 90
    assert unpaid_or_orphan_charges(conn) == []


def test_one_key_for_two_requests_at_once_never_makes_two_jobs(conn, db_url, make_user):
    """G8: 16 clients race one key with two different requests: one job; the clients with its
    request get it (one created, the rest replayed), the others CJ006; nothing else charged."""
    add_kind(conn, "story", 10)
    user = make_user(100)

    def create(c: psycopg.Connection, i: int) -> str:
        try:
            response = call(
                c, "create_job", user_id=user, kind="story", params={"p": i % 2},
                idempotency_key="same",
            )  # fmt: skip
        except psycopg.Error as e:
            return error_code(e)
        return f"p={response['job']['params']['p']} replayed={response['replayed']}"

    outcomes = race(db_url, 16, create)

    [job] = conn.execute("select params from public.jobs").fetchall()
    won = job["params"]["p"]
    assert outcomes == {
        f"p={won} replayed=False": 1,
        f"p={won} replayed=True": 7,
        "idempotency_key_reused": 8,
    }
    assert count(conn, "public.projects") == 1
    assert balance(conn, user) == 90
    assert unpaid_or_orphan_charges(conn) == []


def test_a_request_waiting_on_a_key_whose_first_request_rolls_back_creates_the_job(
    conn, db_url, make_user
):
    """G8: a request with the key of a request whose transaction is still open waits for it; when
    that transaction rolls back, the waiting request creates (and pays for) the job itself."""
    add_kind(conn, "story", 10)
    user = make_user(10)
    answers: list[dict] = []
    with psycopg.connect(db_url) as first, connect(db_url) as second:
        first.execute(CREATE_WITH_KEY, (user,))  # inserted and charged, not committed
        waiter = threading.Thread(
            target=lambda: answers.append(second.execute(CREATE_WITH_KEY, (user,)).fetchone())
        )
        waiter.start()
        wait_until_blocked(conn, second.info.backend_pid)
        first.rollback()
        waiter.join(timeout=30)

    [job] = conn.execute("select id from public.jobs").fetchall()
    [(answer,)] = [tuple(a.values()) for a in answers]
    assert answer["replayed"] is False and answer["job"]["id"] == str(job["id"])
    assert balance(conn, user) == 0
    assert count(conn, "public.projects") == 1


CREATE_WITH_KEY = (
    "select public.create_job(p_user_id => %s, p_kind => 'story', p_idempotency_key => 'k')"
)


def wait_until_blocked(conn: psycopg.Connection, pid: int) -> None:
    """Return once backend pid waits for another transaction (a row or key it must see end)."""
    for _ in range(300):
        row = conn.execute(
            "select wait_event from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        if row and row["wait_event"] == "transactionid":
            return
        time.sleep(0.01)
    pytest.fail("the second request never waited for the first")
