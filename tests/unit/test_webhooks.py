"""Standard Webhooks verification of pipeline callbacks, with several secrets for rotation."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from shared.core.errors import ApiError
from shared.push.webhooks import sign, verify

OLD = "whsec_" + base64.b64encode(b"old secret for unit tests 32 byt").decode()
NEW = "whsec_" + base64.b64encode(b"new secret for unit tests 32 byt").decode()
BODY = b'{"job_id": "j", "attempt": 1, "status": "processing"}'


def refused(secrets: str | None, body: bytes, headers: dict[str, str]) -> str:
    with pytest.raises(ApiError) as caught:
        verify(secrets, body, headers)
    assert caught.value.status == 401 and caught.value.code == "invalid_signature"
    return caught.value.message


def test_signed_body_verifies():
    verify(OLD, BODY, sign(OLD, "msg_1", BODY))


def test_headers_are_case_insensitive():
    headers = {key.title(): value for key, value in sign(OLD, "msg_1", BODY).items()}
    verify(OLD, BODY, headers)


def test_wrong_secret_is_refused():
    assert "No matching signature" in refused(NEW, BODY, sign(OLD, "msg_1", BODY))


def test_changed_body_is_refused():
    refused(OLD, BODY.replace(b"processing", b"completed"), sign(OLD, "msg_1", BODY))


def test_old_and_future_timestamps_are_refused():
    now = dt.datetime.now(dt.UTC)
    old = sign(OLD, "msg_1", BODY, now - dt.timedelta(minutes=5, seconds=30))
    assert "too old" in refused(OLD, BODY, old)
    future = sign(OLD, "msg_1", BODY, now + dt.timedelta(minutes=5, seconds=30))
    assert "too new" in refused(OLD, BODY, future)
    verify(OLD, BODY, sign(OLD, "msg_1", BODY, now - dt.timedelta(minutes=4)))


def test_missing_or_malformed_headers_are_refused():
    assert "Missing" in refused(OLD, BODY, {})
    headers = {**sign(OLD, "msg_1", BODY), "webhook-signature": "garbage"}
    assert "malformed" in refused(OLD, BODY, headers)


def test_no_configured_secret_is_a_configuration_error_not_a_bad_signature():
    with pytest.raises(ApiError) as caught:
        verify(None, BODY, sign(OLD, "msg_1", BODY))
    assert caught.value.status == 503 and caught.value.code == "configuration_error"
    assert "PIPELINE_WEBHOOK_SECRET" in caught.value.message


def test_rotation_accepts_either_configured_secret():
    both = f"{OLD} {NEW}"
    verify(both, BODY, sign(OLD, "msg_1", BODY))
    verify(both, BODY, sign(NEW, "msg_1", BODY))


def test_signing_with_two_secrets_satisfies_either_receiver():
    headers = sign(f"{OLD} {NEW}", "msg_1", BODY)
    assert len(headers["webhook-signature"].split()) == 2
    verify(OLD, BODY, headers)
    verify(NEW, BODY, headers)
