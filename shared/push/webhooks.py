"""Standard Webhooks (https://www.standardwebhooks.com) for pipeline <-> API messages.

PIPELINE_WEBHOOK_SECRET holds one or more `whsec_...` secrets separated by spaces: during a
rotation both the old and the new one are configured. Verification accepts a message signed with
any of them (the library allows 5 minutes of clock skew either way); signing signs with all.
"""

from __future__ import annotations

import datetime as dt
import uuid

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.core.errors import configuration_error, invalid_signature


def _webhooks(secrets: str | None) -> list[Webhook]:
    return [Webhook(secret) for secret in (secrets or "").split()]


def verify(secrets: str | None, body: bytes, headers: dict[str, str]) -> None:
    """Raise ApiError invalid_signature unless `body` carries a valid, fresh signature."""
    webhooks = _webhooks(secrets)
    if not webhooks:
        raise configuration_error("PIPELINE_WEBHOOK_SECRET is not set: reports cannot be verified")
    reason = "webhook signature verification failed"
    for webhook in webhooks:
        try:
            webhook.verify(body, headers, json_parse=False)
            return
        except WebhookVerificationError as exc:
            reason = f"webhook signature verification failed: {exc}"
        except ValueError:  # malformed signature header (binascii.Error is a ValueError)
            reason = "webhook signature header is malformed"
    raise invalid_signature(reason)


def sign(
    secrets: str,
    msg_id: str | None,
    body: bytes | str,
    timestamp: dt.datetime | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with every configured secret."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = (timestamp or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    data = body.decode() if isinstance(body, bytes) else body
    signatures = [webhook.sign(msg_id, timestamp, data) for webhook in _webhooks(secrets)]
    if not signatures:
        raise ValueError("no webhook secret to sign with")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
