"""Stripe-shaped test events, signed as Stripe signs them, for the dev server and the tests.

    .venv/bin/python -m shared.dev.stripe_events checkout demo_pack   # buy the demo pack
    .venv/bin/python -m shared.dev.stripe_events refund pi_...        # refund that payment

posts to $API/payments (the dev server's, printed by it) signed with $STRIPE_WEBHOOK_SECRET, and
prints the answer.
The objects carry the fields credit-jobs reads, in the shape of Stripe's API reference.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import stripe

from shared.dev.server import DEFAULT_PORT, DEMO_USER_ID, HOST

API_VERSION = "2026-10-28.clover"
MONTH_SECONDS = 30 * 86400


def stripe_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def event(event_type: str, data_object: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": stripe_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "type": event_type,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": data_object},
    }


def checkout_completed(
    user_id: str,
    package: str,
    *,
    payment_intent: str | None = None,
    customer: str | None = None,
    payment_status: str = "paid",
    event_type: str = "checkout.session.completed",
) -> dict[str, Any]:
    return event(
        event_type,
        {
            "id": stripe_id("cs"),
            "object": "checkout.session",
            "mode": "payment",
            "status": "complete",
            "payment_status": payment_status,
            "client_reference_id": user_id,
            "customer": customer or stripe_id("cus"),
            "payment_intent": payment_intent or stripe_id("pi"),
            "amount_total": 1000,
            "currency": "usd",
            "metadata": {"credit_package": package},
        },
    )


def invoice_paid(customer: str, price_id: str, *, period_end: int | None = None) -> dict[str, Any]:
    start = int(time.time())
    return event(
        "invoice.paid",
        {
            "id": stripe_id("in"),
            "object": "invoice",
            "customer": customer,
            "status": "paid",
            "payment_intent": stripe_id("pi"),
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": stripe_id("il"),
                        "object": "line_item",
                        "price": {"id": price_id, "object": "price"},
                        "period": {"start": start, "end": period_end or start + MONTH_SECONDS},
                    }
                ],
            },
        },
    )


def charge_refunded(payment_intent: str) -> dict[str, Any]:
    return event(
        "charge.refunded",
        {
            "id": stripe_id("ch"),
            "object": "charge",
            "payment_intent": payment_intent,
            "refunded": True,
            "amount_refunded": 1000,
        },
    )


def dispute_created(payment_intent: str) -> dict[str, Any]:
    return event(
        "charge.dispute.created",
        {
            "id": stripe_id("dp"),
            "object": "dispute",
            "charge": stripe_id("ch"),
            "payment_intent": payment_intent,
            "reason": "fraudulent",
            "status": "needs_response",
        },
    )


def signed(body: dict[str, Any], secret: str) -> tuple[str, dict[str, str]]:
    """The JSON text and headers of a delivery, signed with the library's own scheme."""
    payload = json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret)
    return payload, {"Stripe-Signature": header, "Content-Type": "application/json"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.dev.stripe_events", description=__doc__)
    parser.add_argument("what", choices=["checkout", "refund", "dispute"])
    parser.add_argument("target", help="a credit package (checkout) or a payment_intent")
    parser.add_argument("--user", default=DEMO_USER_ID, help="client_reference_id (checkout)")
    args = parser.parse_args(argv)
    if args.what == "checkout":
        body = checkout_completed(args.user, args.target)
    elif args.what == "refund":
        body = charge_refunded(args.target)
    else:
        body = dispute_created(args.target)
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        parser.error("set STRIPE_WEBHOOK_SECRET (the dev server prints it)")
    payload, headers = signed(body, secret)
    api = os.environ.get("API") or f"http://{HOST}:{DEFAULT_PORT}"
    response = httpx.post(f"{api}/payments", content=payload, headers=headers)
    print(response.text)
    return 0 if response.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
