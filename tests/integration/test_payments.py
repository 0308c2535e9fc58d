"""Purchases through Stripe webhooks (guarantee 11): verified with the official library, granted
exactly once whatever the number and order of deliveries, revoked on refund or dispute."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shared.dev import stripe_events
from tests.integration.http_helpers import http_api
from tests.integration.sqlfns import add_kind, balance, call, discrepancies, race


@pytest.fixture
def api(monkeypatch, db_url):
    with http_api(monkeypatch, db_url) as client:
        yield client


@pytest.fixture
def pack(conn) -> str:
    conn.execute(
        "insert into public.credit_packages (id, credits, expires_after_days)"
        " values ('pack_100', 100, null), ('promo_30', 30, 7)"
    )
    conn.execute(
        "update public.credit_packages set category = 'promo', priority = 0 where id = 'promo_30'"
    )
    return "pack_100"


def grants(conn, user) -> list[dict]:
    return conn.execute(
        "select category, amount, remaining, revoked, expires_at, source, external_id,"
        " payment_intent from public.credit_grants where user_id = %s and source = 'stripe'"
        " order by created_at",
        (user,),
    ).fetchall()


def stored(conn, event) -> dict:
    return conn.execute(
        "select outcome, detail from public.payment_events where id = %s", (event["id"],)
    ).fetchone()


def test_a_paid_checkout_grants_its_package_once(api, conn, make_user, pack):
    user = make_user()
    event = stripe_events.checkout_completed(str(user), pack)
    first = api.stripe(event)
    assert first.status_code == 200, first.json
    assert first.json["outcome"] == "applied" and first.json["balance"] == 100
    session = event["data"]["object"]
    [granted] = grants(conn, user)
    assert (granted["category"], granted["amount"], granted["expires_at"]) == ("paid", 100, None)
    assert granted["external_id"] == session["id"]
    assert granted["payment_intent"] == session["payment_intent"]
    again = api.stripe(event)
    assert again.status_code == 200 and again.json["outcome"] == "duplicate"
    # the session's other event (async payment) is the same purchase
    other = stripe_events.event("checkout.session.async_payment_succeeded", session)
    assert api.stripe(other).json["outcome"] == "duplicate"
    assert balance(conn, user) == 100


def test_a_package_with_an_expiry_grants_credits_that_expire(api, conn, make_user, pack):
    user = make_user()
    assert api.stripe(stripe_events.checkout_completed(str(user), "promo_30")).status_code == 200
    [granted] = grants(conn, user)
    assert granted["category"] == "promo" and granted["expires_at"] is not None


def test_the_same_event_ten_times_in_parallel_grants_once(conn, make_user, pack, db_url):
    """Ten deliveries racing on ten connections (as ten function instances would)."""
    user = make_user()
    event = stripe_events.checkout_completed(str(user), pack)
    outcomes = race(db_url, 10, lambda c, _: call(c, "apply_payment_event", event=event)["outcome"])
    assert outcomes == {"applied": 1, "duplicate": 9}
    assert balance(conn, user) == 100 and len(grants(conn, user)) == 1


def test_a_refund_or_dispute_revokes_what_is_left_and_reports_the_shortfall(
    api, conn, make_user, pack
):
    user = make_user()
    add_kind(conn, "story", 30)
    bought = stripe_events.checkout_completed(str(user), pack)
    api.stripe(bought)
    assert api.post("generate", user=user, json_body={"kind": "story"}).status_code == 201
    payment = bought["data"]["object"]["payment_intent"]
    refunded = api.stripe(stripe_events.charge_refunded(payment))
    assert refunded.json["outcome"] == "applied"
    assert (refunded.json["revoked"], refunded.json["shortfall"]) == (70, 30)
    assert balance(conn, user) == 0
    disputed = api.stripe(stripe_events.dispute_created(payment))
    assert (disputed.json["outcome"], disputed.json["revoked"]) == ("applied", 0)
    assert discrepancies(conn) == []


def test_a_refund_that_arrives_before_its_purchase_is_applied_when_it_comes(
    api, conn, make_user, pack
):
    user = make_user()
    bought = stripe_events.checkout_completed(str(user), pack)
    refund = stripe_events.charge_refunded(bought["data"]["object"]["payment_intent"])
    early = api.stripe(refund)
    assert early.status_code == 200 and early.json["outcome"] == "held"
    assert api.stripe(bought).json["outcome"] == "applied"
    assert balance(conn, user) == 0
    assert stored(conn, refund)["outcome"] == "applied"
    [granted] = grants(conn, user)
    assert (granted["remaining"], granted["revoked"]) == (0, 100)


def test_a_subscription_invoice_grants_its_plan_until_the_period_ends(api, conn, make_user, pack):
    user = make_user()
    conn.execute(
        "insert into public.credit_plans (stripe_price_id, credits) values ('price_pro', 500)"
    )
    bought = stripe_events.checkout_completed(str(user), pack, customer="cus_known")
    api.stripe(bought)
    period_end = int(time.time()) + 30 * 86400
    invoice = stripe_events.invoice_paid("cus_known", "price_pro", period_end=period_end)
    paid = api.stripe(invoice)
    assert paid.json["outcome"] == "applied", paid.json
    subscription = [g for g in grants(conn, user) if g["category"] == "subscription"]
    assert [(g["amount"], int(g["expires_at"].timestamp())) for g in subscription] == [
        (500, period_end)
    ]
    other = stripe_events.invoice_paid("cus_known", "price_not_a_plan")
    assert api.stripe(other).json["outcome"] == "ignored"


@pytest.mark.parametrize(
    "problem", ["unknown package", "unknown user", "not a user id", "unknown customer"]
)
def test_an_event_that_cannot_be_applied_is_held_logged_and_replayable(
    api, conn, make_user, pack, problem, caplog
):
    user = make_user()
    if problem == "unknown customer":
        conn.execute("insert into public.credit_plans (stripe_price_id, credits) values ('p', 5)")
        event = stripe_events.invoice_paid("cus_nobody", "p")
    else:
        reference = {"unknown user": str(uuid.uuid4()), "not a user id": "user-42"}.get(
            problem, str(user)
        )
        event = stripe_events.checkout_completed(
            reference, "pack_nope" if problem == "unknown package" else pack
        )
    response = api.stripe(event)
    assert response.status_code == 200 and response.json["outcome"] == "held"
    assert stored(conn, event)["detail"] == response.json["detail"] != ""
    logged = [json.loads(r.message) for r in caplog.records if r.name == "credit_jobs.events"]
    assert [e["severity"] for e in logged if e["event"] == "payment_event"] == ["ERROR"]
    assert balance(conn, user) == 0
    if problem == "unknown package":
        # the admin adds the package; the stored event is replayed (or delivered again)
        conn.execute("insert into public.credit_packages (id, credits) values ('pack_nope', 9)")
        replayed = conn.execute(
            "select public.apply_payment_event(payload) as r from public.payment_events"
            " where id = %s",
            (event["id"],),
        ).fetchone()["r"]
        assert replayed["outcome"] == "applied" and balance(conn, user) == 9


def test_unpaid_sessions_and_other_types_are_ignored(api, conn, make_user, pack):
    user = make_user()
    unpaid = stripe_events.checkout_completed(str(user), pack, payment_status="unpaid")
    assert api.stripe(unpaid).json["outcome"] == "ignored"
    other = stripe_events.event("customer.created", {"id": "cus_1", "object": "customer"})
    assert api.stripe(other).json["outcome"] == "ignored"
    assert balance(conn, user) == 0


def test_bad_signatures_are_401_and_change_nothing(api, conn, make_user, pack):
    user = make_user()
    event = stripe_events.checkout_completed(str(user), pack)
    forged = api.stripe(event, secret="whsec_not_ours")
    assert forged.status_code == 401 and forged.json["error"]["code"] == "invalid_signature"
    body, headers = stripe_events.signed(event, "whsec_test_only_stripe_secret")
    for header in ({}, {"Stripe-Signature": "garbage"}, {"Stripe-Signature": "t=x,v1=y"}):
        response = api.call(
            "POST", "payments", headers={"Content-Type": "application/json", **header}, data=body
        )
        assert response.status_code == 401, header
    tampered = body.replace("pack_100", "pack_999")
    response = api.call("POST", "payments", headers=headers, data=tampered)
    assert response.status_code == 401
    assert balance(conn, user) == 0
    assert conn.execute("select count(*) as n from public.payment_events").fetchone()["n"] == 0


def test_payments_without_its_secret_is_503(monkeypatch, db_url, make_user):
    with http_api(monkeypatch, db_url, STRIPE_WEBHOOK_SECRET="") as api:
        response = api.stripe(stripe_events.checkout_completed(str(make_user()), "x"))
    assert response.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET" in response.json["error"]["message"]
