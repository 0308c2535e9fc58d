"""Calling the functions of functions/main.py in-process, as a client and as a pipeline would.

Each target is loaded with `functions_framework.create_app(target=..., source=...)` and driven
through Flask's test client; the environment is set with monkeypatch and the cached services are
rebuilt with `shared.api.services.reset()`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from shared.api import services as app
from shared.core.settings import ENVIRONMENT_VARIABLES
from shared.dev.stripe_events import signed
from shared.dev.tokens import mint_token
from shared.push.webhooks import sign

SOURCE = str(Path(__file__).resolve().parents[2] / "functions" / "main.py")
JWT_SECRET = "test-only-jwt-secret-with-at-least-32-bytes"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test-only webhook secret 32bytes").decode()
MAINTENANCE_TOKEN = "test-maintenance-token"
STRIPE_WEBHOOK_SECRET = "whsec_test_only_stripe_secret"
ALLOWED_ORIGIN = "https://app.example.test"
CALLBACK_URL = "http://127.0.0.1:9/status"


def token(user_id: uuid.UUID | str, *, secret: str = JWT_SECRET, **claims: Any) -> str:
    """An access token for user_id signed with the functions' test secret."""
    return mint_token(user_id, secret, **claims)


class Api:
    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def client(self, target: str):
        if target not in self._clients:
            flask_app = functions_framework.create_app(target=target, source=SOURCE)
            self._clients[target] = flask_app.test_client()
        return self._clients[target]

    def call(
        self,
        method: str,
        target: str,
        *,
        user: uuid.UUID | None = None,
        json_body: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | str | None = None,
    ):
        headers = dict(headers or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {token(user)}"
        if json_body is not None:
            data = json.dumps(json_body)
            headers.setdefault("Content-Type", "application/json")
        return self.client(target).open(
            "/", method=method, query_string=query, headers=headers, data=data
        )

    def get(self, target: str, **kwargs: Any):
        return self.call("GET", target, **kwargs)

    def post(self, target: str, **kwargs: Any):
        return self.call("POST", target, **kwargs)

    def stripe(self, event: dict[str, Any], *, secret: str = STRIPE_WEBHOOK_SECRET):
        """POST a Stripe event to `payments`, signed as Stripe signs it."""
        body, headers = signed(event, secret)
        return self.call("POST", "payments", headers=headers, data=body)

    def callback(self, report: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp=None):
        """POST a pipeline report to `status`, signed like a pipeline signs it."""
        body = json.dumps(report, default=str)
        headers = sign(secret, f"msg_{uuid.uuid4().hex}", body, timestamp)
        headers["Content-Type"] = "application/json"
        return self.call("POST", "status", headers=headers, data=body)


@contextmanager
def http_api(monkeypatch: pytest.MonkeyPatch, db_url: str, **env: str) -> Iterator[Api]:
    """Functions configured for db_url (PIPELINE=queue unless env says otherwise)."""
    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    defaults = {
        "DATABASE_URL": db_url,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "PIPELINE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PIPELINE": "queue",
        "CALLBACK_URL": CALLBACK_URL,
        "CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "MAINTENANCE_TOKEN": MAINTENANCE_TOKEN,
        "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
    }
    for name, value in {**defaults, **env}.items():
        monkeypatch.setenv(name, value)
    app.reset()
    try:
        yield Api()
    finally:
        app.reset()
