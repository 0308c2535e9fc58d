"""The whole life of a credit over real HTTP, against `python -m shared.dev`: purchase, spend,
refund, expiry, chargeback; afterwards every balance agrees with its ledger and its grants."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.dev import stripe_events
from tests.acceptance.test_dev_server_e2e import (  # noqa: F401 (fixtures)
    Api,
    data_dir,
    start_dev,
    wait_until_ready,
)

pytestmark = pytest.mark.acceptance


def test_purchase_spend_refund_expiry_chargeback(db_url, start_dev):  # noqa: F811
    server = start_dev(DATABASE_URL=db_url)
    api = Api(server)
    wait_until_ready(api)
    secret = re.search(r"export STRIPE_WEBHOOK_SECRET=(\S+)", server.walkthrough).group(1)
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "insert into public.credit_packages (id, credits, category, priority,"
            " expires_after_days) values ('pack_200', 200, 'paid', 50, null),"
            " ('promo_15', 15, 'promo', 0, 30)"
        )
        user = conn.execute("select id from auth.users").fetchone()["id"]
        conn.execute(  # the demo user's seeded credits, out of the way
            "select public.admin_grant_credits(%s, -(select balance from public.credit_accounts"
            " where user_id = %s), 'story starts at zero')",
            (user, user),
        )

        def pay(event: dict) -> dict:
            body, headers = stripe_events.signed(event, secret)
            response = api.http.post("/payments", content=body, headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        # purchase: a paid pack, and a promo that is spent first
        pack = stripe_events.checkout_completed(str(user), "pack_200")
        assert pay(pack)["outcome"] == "applied"
        assert pay(pack)["outcome"] == "duplicate"
        assert pay(stripe_events.checkout_completed(str(user), "promo_15"))["balance"] == 215

        # spend: 10 credits, all from the promo
        story = api.wait_until_finished(api.generate("story")["id"])
        assert story["status"] == "completed"
        credits = api.http.get("/credits").json()
        assert credits["balance"] == 205
        assert [(g["category"], g["remaining"]) for g in credits["grants"]] == [
            ("promo", 5),
            ("paid", 200),
        ]

        # refund: a failing job's 5 credits go back to the promo they came from
        failed = api.wait_until_finished(api.generate("demo_fail")["id"])
        assert failed["status"] == "failed" and failed["refunded"] == 5
        assert api.http.get("/credits").json()["grants"][0]["remaining"] == 5

        # expiry: the promo's end passes; its 5 credits expire before anything can spend them
        conn.execute("update public.credit_grants set expires_at = now() where category = 'promo'")
        credits = api.http.get("/credits").json()
        assert credits["balance"] == 200 and credits["entries"][0]["entry_type"] == "expiry"

        # chargeback: a voice job spends 25 of the pack; the dispute takes back the other 175
        voice = api.wait_until_finished(api.generate("voice")["id"])
        assert voice["status"] == "completed"
        payment = pack["data"]["object"]["payment_intent"]
        disputed = pay(stripe_events.dispute_created(payment))
        assert (disputed["revoked"], disputed["shortfall"]) == (175, 25)
        assert api.balance() == 0
        refunded_twice = pay(stripe_events.charge_refunded(payment))
        assert refunded_twice["outcome"] == "applied" and refunded_twice["revoked"] == 0

        assert conn.execute("select * from public.credit_discrepancies").fetchall() == []
        ledger = conn.execute(
            "select entry_type, sum(amount) as total from public.credit_ledger"
            " where user_id = %s group by entry_type order by entry_type",
            (user,),
        ).fetchall()
        assert {row["entry_type"]: row["total"] for row in ledger} == {
            "adjustment": -1000 - 175,
            "charge": -10 - 5 - 25,
            "expiry": -5,
            "grant": 1000 + 200 + 15,
            "refund": 5,
        }
    assert server.stop() == 0
