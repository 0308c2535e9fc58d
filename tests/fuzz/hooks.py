"""schemathesis hooks for scripts/fuzz: pipeline callbacks and Stripe events are signed as their
senders sign them, and `generate` asks for the dev server's job kinds as often as for invented
ones."""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
import stripe
from hypothesis import strategies as st
from schemathesis.core import NotSet

from shared.dev.server import DEMO_KINDS
from shared.push.webhooks import sign

KINDS = tuple(kind for kind, *_ in DEMO_KINDS)


@schemathesis.hook
def flatmap_body(ctx: Any, body: Any) -> st.SearchStrategy:
    generate = ctx.operation is not None and ctx.operation.label == "POST /generate"
    if generate and isinstance(body, dict) and "kind" in body:
        return st.sampled_from((*KINDS, body["kind"])).map(lambda kind: {**body, "kind": kind})
    return st.just(body)


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    signer = SIGNERS.get((case.method.upper(), case.path))
    if signer is None:
        return
    # Sign exactly the bytes that are sent: the body is serialized here, not by the transport.
    if isinstance(case.body, NotSet):
        body = b""
    elif isinstance(case.body, bytes):
        body = case.body
    else:
        body = json.dumps(case.body).encode()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return  # both schemes sign text: left unsigned, the server must answer 401
    kwargs["data"] = body
    case.headers = {**(case.headers or {}), **signer(text)}


def _pipeline_signature(text: str) -> dict[str, str]:
    return sign(os.environ["FUZZ_WEBHOOK_SECRET"], None, text)


def _stripe_signature(text: str) -> dict[str, str]:
    secret = os.environ["FUZZ_STRIPE_WEBHOOK_SECRET"]
    return {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(text, secret)}


SIGNERS = {("POST", "/status"): _pipeline_signature, ("POST", "/payments"): _stripe_signature}
