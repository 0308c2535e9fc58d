"""Stripe webhook signatures (`Stripe-Signature`), checked by the official `stripe` library."""

from __future__ import annotations

import stripe

from shared.core.errors import configuration_error, invalid_signature

# Stripe's own default: a signed event older than this is refused as a possible replay.
TOLERANCE_SECONDS = 300


def verify_stripe_signature(secret: str | None, body: bytes, header: str | None) -> None:
    """Raise ApiError invalid_signature unless `body` carries a valid, fresh Stripe signature."""
    if not secret:
        raise configuration_error("STRIPE_WEBHOOK_SECRET is not set: payments cannot be verified")
    try:
        stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), header, secret, tolerance=TOLERANCE_SECONDS
        )
    except UnicodeDecodeError:
        raise invalid_signature("the payload is not UTF-8") from None
    except stripe.SignatureVerificationError as exc:
        raise invalid_signature(
            f"Stripe signature verification failed: {exc.user_message or exc}"
        ) from None
    except (ValueError, IndexError):  # a malformed header (no t=, not a number)
        raise invalid_signature("Stripe-Signature header is malformed") from None
