"""The ledger: append-only, and every balance is the sum of its entries (guarantee 7)."""

from __future__ import annotations

import pytest

from tests.integration.sqlfns import (
    add_kind,
    balance,
    broken_balance_after_chain,
    call,
    claim_one,
    create_job,
    discrepancies,
    raises_error,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "statement",
    [
        "update public.credit_ledger set amount = amount * 2",
        "update public.credit_ledger set reason = 'edited'",
        "delete from public.credit_ledger",
        "truncate public.credit_ledger",
    ],
    ids=["update-amount", "update-reason", "delete", "truncate"],
)
def test_ledger_rejects_every_change_even_from_the_owner(conn, make_user, statement):
    """G7: ledger entries are immutable: UPDATE, DELETE and TRUNCATE fail, even as the superuser."""
    make_user(10)

    with raises_error("invalid_transition"):
        conn.execute(statement)

    rows = conn.execute("select amount, reason from public.credit_ledger").fetchall()
    assert rows == [{"amount": 10, "reason": "test"}]


def test_balance_after_chains_through_every_kind_of_entry(conn, make_user):
    """G7: every balance change is one entry whose balance_after is the running sum, ending at the
    account's balance, across grants, charges, refunds, partial captures and adjustments."""
    add_kind(conn, "image", 10)
    alice, bob = make_user(25), make_user(10)
    for _ in range(2):
        create_job(conn, alice, "image")
    first = claim_one(conn, "image")
    call(conn, "complete_job", job_id=first["id"], attempt=1, credits_used=4)
    second = claim_one(conn, "image")
    call(conn, "fail_job", job_id=second["id"], attempt=1, error="boom")
    bobs = create_job(conn, bob, "image")
    call(conn, "cancel_job", job_id=bobs["id"], user_id=bob)
    call(conn, "admin_grant_credits", user_id=alice, amount=-5, reason="correction")

    entries = conn.execute(
        "select entry_type, amount, balance_after from public.credit_ledger"
        " where user_id = %s order by id",
        (alice,),
    ).fetchall()
    assert [tuple(e.values()) for e in entries] == [
        ("grant", 25, 25),
        ("charge", -10, 15),
        ("charge", -10, 5),
        ("refund", 6, 11),
        ("refund", 10, 21),
        ("adjustment", -5, 16),
    ]
    assert (balance(conn, alice), balance(conn, bob)) == (16, 10)
    assert broken_balance_after_chain(conn) == []
    assert discrepancies(conn) == []


def test_credit_discrepancies_reports_a_balance_edited_behind_the_ledgers_back(conn, make_user):
    """G7: the monitor is not vacuous: a raw balance edit without a ledger entry shows up."""
    user = make_user(10)
    assert discrepancies(conn) == []

    conn.execute("update public.credit_accounts set balance = 11 where user_id = %s", (user,))

    assert discrepancies(conn) == [
        {"user_id": user, "balance": 11, "ledger_sum": 10, "difference": 1, "grants_remaining": 10}
    ]


def test_every_auth_user_gets_an_empty_account(conn, make_user):
    """G7: a new auth.users row has a credit account with balance 0 and no entries."""
    user = make_user()

    assert balance(conn, user) == 0
    assert conn.execute(
        "select count(*) as n from public.credit_ledger where user_id = %s", (user,)
    ).fetchone() == {"n": 0}
