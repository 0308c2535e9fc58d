"""Credit grants (guarantees 10 and 11): burn-down order, expiry never spent, refunds back where
they came from, payments granted once, revocations that never go below zero."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg

from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    create_job,
    discrepancies,
    race,
    raises_error,
)

HOUR = dt.timedelta(hours=1)


def grant(conn, user, amount, **params) -> dict:
    params.setdefault("reason", "test grant")
    return call(conn, "grant_credits", user_id=user, amount=amount, **params)["grant"]


def expire_now(conn, grant_id) -> None:
    """As if the grant's expiry had passed (no sweep ran since)."""
    conn.execute(
        "update public.credit_grants set expires_at = now() - interval '1 second' where id = %s",
        (grant_id,),
    )


def remaining(conn, grant_id) -> int:
    return conn.execute(
        "select remaining from public.credit_grants where id = %s", (grant_id,)
    ).fetchone()["remaining"]


def drawn_from(conn, job_id) -> list[tuple[str, int]]:
    """(grant id, amount) of a job's allocations, in drawing order."""
    rows = conn.execute(
        "select grant_id, amount from public.credit_allocations where job_id = %s order by seq",
        (job_id,),
    ).fetchall()
    return [(str(row["grant_id"]), row["amount"]) for row in rows]


def grant_rows(conn, user) -> list[dict]:
    return conn.execute(
        "select category, amount, remaining, expired, revoked, expires_at"
        " from public.credit_grants where user_id = %s order by created_at, id",
        (user,),
    ).fetchall()


def test_charges_draw_in_burn_down_order(conn, make_user):
    """Priority first, then the earliest expiry (never-expiring last), then the oldest."""
    user = make_user()
    add_kind(conn, "story", 10)
    now = dt.datetime.now(dt.UTC)
    never = grant(conn, user, 3, priority=10)
    later = grant(conn, user, 3, priority=10, expires_at=now + 2 * HOUR)
    sooner = grant(conn, user, 3, priority=10, expires_at=now + HOUR)
    promo = grant(conn, user, 3, priority=0, category="promo", expires_at=now + 3 * HOUR)
    never_too = grant(conn, user, 3, priority=10)
    job = create_job(conn, user, "story")
    assert drawn_from(conn, job["id"]) == [
        (promo["id"], 3),
        (sooner["id"], 3),
        (later["id"], 3),
        (never["id"], 1),
    ]
    assert remaining(conn, never["id"]) == 2 and remaining(conn, never_too["id"]) == 3
    assert balance(conn, user) == 5


def test_an_expired_grant_is_never_spent_even_before_a_sweep(conn, make_user):
    user = make_user(balance=4)
    add_kind(conn, "story", 10)
    promo = grant(conn, user, 8, category="promo", expires_at=dt.datetime.now(dt.UTC) + HOUR)
    expire_now(conn, promo["id"])
    with raises_error("insufficient_credits"):
        create_job(conn, user, "story")
    # the next money function expires it (an `expiry` entry), so balance = unexpired remaining
    call(conn, "admin_grant_credits", user_id=user, amount=1, reason="top up")
    assert balance(conn, user) == 5
    entries = conn.execute(
        "select entry_type, amount, grant_id from public.credit_ledger where user_id = %s"
        " order by id",
        (user,),
    ).fetchall()
    assert ("expiry", -8, uuid.UUID(promo["id"])) in [tuple(e.values()) for e in entries]
    assert discrepancies(conn) == []


def test_a_refund_goes_back_to_the_grants_it_came_from(conn, make_user):
    user = make_user()
    add_kind(conn, "story", 6)
    first = grant(conn, user, 4, priority=1)
    second = grant(conn, user, 4, priority=2)
    job = create_job(conn, user, "story")
    assert (remaining(conn, first["id"]), remaining(conn, second["id"])) == (0, 2)
    call(conn, "cancel_job", job_id=job["id"], user_id=user)
    assert (remaining(conn, first["id"]), remaining(conn, second["id"])) == (4, 4)
    assert balance(conn, user) == 8 and discrepancies(conn) == []


def test_a_partial_capture_returns_the_credits_drawn_last(conn, make_user):
    user = make_user()
    add_kind(conn, "story", 6)
    promo = grant(conn, user, 4, priority=0, category="promo")
    paid = grant(conn, user, 4, priority=50, category="paid")
    job = create_job(conn, user, "story")
    claimed = call(conn, "claim_jobs", worker_id="w")["jobs"][0]
    call(conn, "complete_job", job_id=job["id"], attempt=claimed["attempt"], credits_used=3)
    # 4 promo then 2 paid were drawn; 3 come back: the 2 paid first, then 1 promo
    assert (remaining(conn, promo["id"]), remaining(conn, paid["id"])) == (1, 4)
    assert balance(conn, user) == 5


def test_credits_whose_grant_expired_come_back_as_a_refund_grant_with_grace(conn, make_user):
    user = make_user()
    add_kind(conn, "story", 5)
    conn.execute("update public.credit_settings set refund_grace = interval '2 days'")
    promo = grant(conn, user, 5, category="promo", expires_at=dt.datetime.now(dt.UTC) + HOUR)
    job = create_job(conn, user, "story")
    expire_now(conn, promo["id"])
    call(conn, "refund_job_atomic", job_id=job["id"], reason="pipeline lost it")
    refund = [g for g in grant_rows(conn, user) if g["category"] == "refund"]
    assert [(g["amount"], g["remaining"]) for g in refund] == [(5, 5)]
    grace = refund[0]["expires_at"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=2) - HOUR < grace <= dt.timedelta(days=2)
    assert balance(conn, user) == 5 and discrepancies(conn) == []


def test_an_external_payment_is_granted_once(conn, make_user):
    user = make_user()
    payment = {"reason": "pack", "category": "paid", "source": "stripe", "external_id": "cs_1"}
    first = call(conn, "grant_credits", user_id=user, amount=100, **payment)
    again = call(conn, "grant_credits", user_id=user, amount=100, **payment)
    assert (first["outcome"], again["outcome"]) == ("applied", "duplicate")
    assert again["grant"]["id"] == first["grant"]["id"] and balance(conn, user) == 100


def test_one_payment_delivered_ten_times_at_once_grants_once(db_url, conn, make_user):
    user = make_user()

    def deliver(c: psycopg.Connection, _: int) -> str:
        return call(
            c,
            "grant_credits",
            user_id=user,
            amount=50,
            reason="pack",
            category="paid",
            source="stripe",
            external_id="cs_race",
        )["outcome"]

    assert race(db_url, 10, deliver) == {"applied": 1, "duplicate": 9}
    assert balance(conn, user) == 50


def test_revoking_takes_what_is_left_and_reports_the_shortfall(conn, make_user):
    user = make_user()
    add_kind(conn, "story", 30)
    paid = grant(conn, user, 50, category="paid", source="stripe", external_id="cs_2")
    create_job(conn, user, "story")
    revoked = call(conn, "revoke_grant", grant_id=paid["id"], reason="charge.refunded")
    assert (revoked["revoked"], revoked["shortfall"], revoked["balance"]) == (20, 30, 0)
    assert revoked["outcome"] == "applied"
    again = call(conn, "revoke_grant", grant_id=paid["id"], reason="charge.refunded")
    assert (again["outcome"], again["revoked"], again["balance"]) == ("duplicate", 0, 0)
    assert discrepancies(conn) == []


def test_a_refund_into_a_revoked_grant_is_revoked_too(conn, make_user):
    """The payment went back to the payer: the job's refund must not hand its credits back."""
    user = make_user(balance=5)
    add_kind(conn, "story", 30)
    paid = grant(conn, user, 30, priority=0, category="paid")
    job = create_job(conn, user, "story")
    assert call(conn, "revoke_grant", grant_id=paid["id"], reason="dispute")["shortfall"] == 30
    call(conn, "cancel_job", job_id=job["id"], user_id=user)
    assert balance(conn, user) == 5
    row = next(g for g in grant_rows(conn, user) if g["category"] == "paid")
    assert (row["remaining"], row["revoked"]) == (0, 30)
    assert discrepancies(conn) == []


def test_admin_debits_take_grants_in_burn_down_order_and_never_below_zero(conn, make_user):
    user = make_user()
    promo = grant(conn, user, 3, priority=0, category="promo")
    paid = grant(conn, user, 5, priority=50, category="paid")
    call(conn, "admin_grant_credits", user_id=user, amount=-4, reason="goodwill reversed")
    assert (remaining(conn, promo["id"]), remaining(conn, paid["id"])) == (0, 4)
    with raises_error("insufficient_credits"):
        call(conn, "admin_grant_credits", user_id=user, amount=-5, reason="too much")
    assert balance(conn, user) == 4


def test_expire_credits_sweeps_in_batches_with_expiry_entries(conn, make_user):
    users = [make_user(balance=1) for _ in range(3)]
    for user in users:
        promo = grant(conn, user, 7, category="promo", expires_at=dt.datetime.now(dt.UTC) + HOUR)
        expire_now(conn, promo["id"])
    assert call(conn, "expire_credits", limit=2) == {"expired_grants": 2, "credits": 14}
    assert call(conn, "expire_credits", limit=2) == {"expired_grants": 1, "credits": 7}
    assert call(conn, "expire_credits", limit=2) == {"expired_grants": 0, "credits": 0}
    assert [balance(conn, user) for user in users] == [1, 1, 1]
    assert discrepancies(conn) == []
    with raises_error("invalid_argument"):
        call(conn, "expire_credits", limit=0)


def test_expire_credits_skips_an_account_someone_holds(db_url, conn, make_user):
    user = make_user()
    promo = grant(conn, user, 7, category="promo", expires_at=dt.datetime.now(dt.UTC) + HOUR)
    expire_now(conn, promo["id"])
    with psycopg.connect(db_url) as holder:
        holder.execute(
            "select 1 from public.credit_accounts where user_id = %s for update", (user,)
        )
        assert call(conn, "expire_credits", limit=10) == {"expired_grants": 0, "credits": 0}
    assert call(conn, "expire_credits", limit=10) == {"expired_grants": 1, "credits": 7}


def test_get_credits_shows_grants_and_what_expires_next(conn, make_user):
    user = make_user(balance=2)
    soon = dt.datetime.now(dt.UTC) + HOUR
    grant(conn, user, 3, category="promo", priority=0, expires_at=soon)
    grant(conn, user, 4, category="subscription", expires_at=soon)
    gone = grant(conn, user, 9, category="promo", expires_at=soon + HOUR)
    expire_now(conn, gone["id"])
    credits = call(conn, "get_credits", user_id=user)
    assert credits["balance"] == 9
    assert [g["category"] for g in credits["grants"]] == ["promo", "subscription", "adjustment"]
    assert credits["next_expiry"]["credits"] == 7
    assert credits["entries"][0]["entry_type"] == "expiry"


def test_grants_are_validated(conn, make_user):
    user = make_user()
    past = dt.datetime.now(dt.UTC) - HOUR
    for params in (
        {"amount": 0},
        {"amount": 1, "category": "gift"},
        {"amount": 1, "priority": 101},
        {"amount": 1, "expires_at": past},
        {"amount": 1, "external_id": "x"},
        {"amount": 1, "reason": " "},
    ):
        with raises_error("invalid_argument"):
            grant(conn, user, **params)
    with raises_error("not_found"):
        call(conn, "revoke_grant", grant_id=uuid.uuid4(), reason="x")


def test_discrepancies_show_grants_edited_behind_the_ledgers_back(conn, make_user):
    user = make_user(balance=10)
    conn.execute("update public.credit_grants set remaining = 9 where user_id = %s", (user,))
    assert [(d["ledger_sum"], d["grants_remaining"]) for d in discrepancies(conn)] == [(10, 9)]


def test_conservation_granted_is_balance_plus_captured_expired_revoked(conn, make_user):
    user = make_user(balance=10)
    add_kind(conn, "story", 6)
    promo = grant(
        conn, user, 5, priority=0, category="promo", expires_at=dt.datetime.now(dt.UTC) + HOUR
    )
    paid = grant(conn, user, 8, category="paid")
    done = create_job(conn, user, "story")
    claimed = call(conn, "claim_jobs", worker_id="w")["jobs"][0]
    call(conn, "complete_job", job_id=done["id"], attempt=claimed["attempt"], credits_used=4)
    refunded = create_job(conn, user, "story")
    expire_now(conn, promo["id"])
    call(conn, "cancel_job", job_id=refunded["id"], user_id=user)
    call(conn, "revoke_grant", grant_id=paid["id"], reason="chargeback")
    assert_conserved(conn, user)


def assert_conserved(conn, user) -> None:
    totals = conn.execute(
        "select"
        " (select coalesce(sum(amount), 0) from public.credit_grants"
        "   where user_id = %(u)s and refund_of_job is null) as granted,"
        " (select balance from public.credit_accounts where user_id = %(u)s) as balance,"
        " (select coalesce(sum(a.amount - a.returned), 0) from public.credit_allocations a"
        "   join public.credit_grants g on g.id = a.grant_id where g.user_id = %(u)s) as captured,"
        " (select coalesce(sum(expired), 0) from public.credit_grants where user_id = %(u)s)"
        "   as expired,"
        " (select coalesce(sum(revoked), 0) from public.credit_grants where user_id = %(u)s)"
        "   as revoked",
        {"u": user},
    ).fetchone()
    assert totals["granted"] == (
        totals["balance"] + totals["captured"] + totals["expired"] + totals["revoked"]
    ), totals


def test_one_payment_for_two_accounts_at_once_grants_once(db_url, conn, make_user):
    """The replay check holds one account's lock; across accounts the unique index decides."""
    users = [make_user(), make_user()]
    # widen the race: every grant insert takes a moment, so both accounts' inserts overlap
    conn.execute(
        "create function public.slow_grant() returns trigger language plpgsql as"
        " $$ begin perform pg_sleep(0.2); return new; end $$;"
        " create trigger slow_grant before insert on public.credit_grants"
        " for each row execute function public.slow_grant()"
    )

    def deliver(c: psycopg.Connection, i: int) -> str:
        return call(
            c,
            "grant_credits",
            user_id=users[i % 2],
            amount=50,
            reason="pack",
            source="stripe",
            external_id="cs_two_accounts",
        )["outcome"]

    assert race(db_url, 10, deliver) == {"applied": 1, "duplicate": 9}
    assert sorted(balance(conn, user) for user in users) == [0, 50]
