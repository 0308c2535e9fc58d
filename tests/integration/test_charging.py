"""Charging: create_job charges atomically, never overdraws, replays once (guarantees 1, 2, 8)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    create_job,
    discrepancies,
    error_code,
    ledger_for_job,
    race,
    raises_error,
    unpaid_or_orphan_charges,
)

pytestmark = pytest.mark.integration


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"select count(*) as n from public.{table}").fetchone()["n"]


def test_create_job_charges_the_kinds_price_with_the_job(conn, make_user):
    """G1: a created job and its charge entry exist together, at the price from job_kinds."""
    add_kind(conn, "image", 7)
    user = make_user(20)

    response = call(conn, "create_job", user_id=user, kind="image", params={"prompt": "a cat"})

    job = response["job"]
    assert (job["status"], job["cost"], job["attempt"], job["refunded"]) == ("pending", 7, 0, 0)
    assert job["params"] == {"prompt": "a cat"}
    assert response["balance"] == 13 == balance(conn, user)
    assert response["replayed"] is False
    assert ledger_for_job(conn, job["id"]) == [("charge", -7)]
    owner = conn.execute("select user_id from public.projects where id = %s", (job["project_id"],))
    assert owner.fetchone()["user_id"] == user


@pytest.mark.parametrize(
    ("sabotage", "params", "sqlstate"),
    [
        # fails after the job row is written and the balance is updated, at the ledger insert
        (
            "alter table public.credit_ledger add constraint test_refuse_charges"
            " check (entry_type <> 'charge') not valid",
            {},
            "23514",
        ),
        # fails at the job row, whichever order the function charges in
        (
            "alter table public.jobs add constraint test_refuse_boom"
            " check (not params ? 'boom') not valid",
            {"boom": True},
            "23514",
        ),
    ],
    ids=["ledger-insert-fails", "job-insert-fails"],
)
def test_create_job_that_fails_midway_leaves_no_charge_and_no_job(
    conn, make_user, sabotage, params, sqlstate
):
    """G1: the charge and the job commit together or not at all, even when the failure comes
    after the balance was already decremented."""
    add_kind(conn, "image", 7)
    user = make_user(20)
    ledger_before = count(conn, "credit_ledger")
    conn.execute(sabotage)

    with raises_error(sqlstate):
        create_job(conn, user, "image", params=params)

    assert balance(conn, user) == 20
    assert count(conn, "credit_ledger") == ledger_before
    assert count(conn, "jobs") == 0
    assert count(conn, "projects") == 0


def test_create_job_rejects_bad_requests_before_charging(conn, make_user):
    """G1: an unknown project, kind or argument charges nothing and creates nothing."""
    add_kind(conn, "image", 7)
    user, other = make_user(20), make_user(20)
    others_project = create_job(conn, other, "image")["project_id"]
    poor = make_user(6)
    ledger_before = count(conn, "credit_ledger")

    with raises_error("not_found"):
        create_job(conn, user, "image", project_id="00000000-0000-0000-0000-000000000000")
    with raises_error("not_found"):
        create_job(conn, user, "image", project_id=others_project)
    with raises_error("unknown_kind"):
        create_job(conn, user, "no_such_kind")
    with raises_error("invalid_argument"):
        create_job(conn, user, "image", params=Jsonb(["not", "an", "object"]))
    with raises_error("invalid_argument"):
        create_job(conn, user, "image", step_number=0)
    with raises_error("insufficient_credits"):
        create_job(conn, poor, "image")

    assert balance(conn, user) == 20 and balance(conn, poor) == 6
    assert count(conn, "credit_ledger") == ledger_before
    assert count(conn, "jobs") == 1


def test_every_job_has_exactly_one_charge_and_every_charge_a_job(conn, make_user):
    """G1: across a mix of successful and failed creations, jobs and charges pair up one to one."""
    add_kind(conn, "image", 3)
    add_kind(conn, "free", 0)
    user = make_user(10)
    for kind in ["image", "free", "image", "image", "image", "free"]:
        try:
            create_job(conn, user, kind)
        except psycopg.Error as e:
            assert error_code(e) == "insufficient_credits"

    assert count(conn, "jobs") == 5
    assert balance(conn, user) == 1
    assert unpaid_or_orphan_charges(conn) == []
    assert discrepancies(conn) == []


def test_parallel_create_job_never_overdraws(conn, db_url, make_user):
    """G2: 24 clients on separate connections race against a balance that pays for exactly 5 jobs:
    exactly 5 jobs exist, the balance is the exact remainder and never went negative."""
    add_kind(conn, "image", 10)
    user = make_user(55)

    def create(c: psycopg.Connection, _i: int) -> str:
        try:
            create_job(c, user, "image")
            return "created"
        except psycopg.Error as e:
            return error_code(e)

    outcomes = race(db_url, 24, create)

    assert outcomes == {"created": 5, "insufficient_credits": 19}
    assert count(conn, "jobs") == 5
    assert balance(conn, user) == 5
    assert unpaid_or_orphan_charges(conn) == []
    assert discrepancies(conn) == []


def test_same_idempotency_key_and_request_replays_the_job_and_charges_once(conn, make_user):
    """G8: a retried create_job with the same key returns the same job, replayed, charged once."""
    add_kind(conn, "image", 5)
    user = make_user(20)
    request = {"user_id": user, "kind": "image", "params": {"p": 1}, "idempotency_key": "k-1"}

    first = call(conn, "create_job", **request)
    again = call(conn, "create_job", **request)

    assert again["replayed"] is True and first["replayed"] is False
    assert again["job"]["id"] == first["job"]["id"]
    assert again["balance"] == first["balance"] == 15 == balance(conn, user)
    assert ledger_for_job(conn, first["job"]["id"]) == [("charge", -5)]
    assert count(conn, "jobs") == 1


def test_same_idempotency_key_for_a_different_request_is_rejected(conn, make_user):
    """G8: reusing a key for another request is CJ006 and charges nothing; keys are per user."""
    add_kind(conn, "image", 5)
    add_kind(conn, "video", 5)
    user, other = make_user(20), make_user(20)
    create_job(conn, user, "image", params={"p": 1}, idempotency_key="k-1")

    with raises_error("idempotency_key_reused"):
        create_job(conn, user, "image", params={"p": 2}, idempotency_key="k-1")
    with raises_error("idempotency_key_reused"):
        create_job(conn, user, "video", params={"p": 1}, idempotency_key="k-1")
    assert balance(conn, user) == 15

    others = call(conn, "create_job", user_id=other, kind="image", idempotency_key="k-1")
    assert others["replayed"] is False and balance(conn, other) == 15


def test_concurrent_calls_with_one_idempotency_key_create_one_job(conn, db_url, make_user):
    """G8: 12 simultaneous retries with one key on separate connections: one job, one charge,
    and every caller gets that same job."""
    add_kind(conn, "image", 5)
    user = make_user(100)

    def create(c: psycopg.Connection, _i: int) -> str:
        try:
            return str(create_job(c, user, "image", params={"p": 1}, idempotency_key="same")["id"])
        except psycopg.Error as e:
            return e.sqlstate

    job_ids = race(db_url, 12, create)

    assert len(job_ids) == 1 and sum(job_ids.values()) == 12
    assert count(conn, "jobs") == 1
    assert balance(conn, user) == 95
    assert unpaid_or_orphan_charges(conn) == []


def test_admin_grant_credits_moves_balance_both_ways_but_never_below_zero(conn, make_user):
    """G2/G7: admin grants and deductions are ledger entries; a deduction can't overdraw."""
    user = make_user()

    granted = call(conn, "admin_grant_credits", user_id=user, amount=50, reason="welcome")
    deducted = call(conn, "admin_grant_credits", user_id=user, amount=-20, reason="correction")

    assert (granted["balance"], granted["outcome"]) == (50, "applied")
    assert deducted["balance"] == 30 == balance(conn, user)
    with raises_error("insufficient_credits"):
        call(conn, "admin_grant_credits", user_id=user, amount=-31, reason="too much")
    with raises_error("invalid_argument"):
        call(conn, "admin_grant_credits", user_id=user, amount=0, reason="nothing")
    with raises_error("invalid_argument"):
        call(conn, "admin_grant_credits", user_id=user, amount=5, reason=" ")
    with raises_error("not_found"):
        call(
            conn,
            "admin_grant_credits",
            user_id="00000000-0000-0000-0000-000000000000",
            amount=5,
            reason="nobody",
        )

    entries = conn.execute(
        "select entry_type, amount, balance_after, reason from public.credit_ledger"
        " where user_id = %s order by id",
        (user,),
    ).fetchall()
    assert [tuple(e.values()) for e in entries] == [
        ("grant", 50, 50, "welcome"),
        ("adjustment", -20, 30, "correction"),
    ]
    assert balance(conn, user) == 30
