"""The dev server's local defaults: every unset variable filled, every set one kept."""

from __future__ import annotations

import uuid

from standardwebhooks.webhooks import Webhook

from shared.api.auth import TokenVerifier
from shared.core.settings import Settings
from shared.dev.server import DEMO_USER_ID, apply_defaults, demo_token, walkthrough


def test_defaults_fill_every_unset_variable_and_make_valid_settings(tmp_path):
    environ: dict[str, str] = {}
    apply_defaults(environ, tmp_path)
    assert environ["PIPELINE"] == "local"
    assert environ["PORT"] == "8080"
    assert environ["CALLBACK_URL"] == "http://127.0.0.1:8080/status"
    assert environ["CORS_ALLOWED_ORIGINS"] == "*"
    assert environ["MAINTENANCE_TOKEN"]
    Webhook(environ["PIPELINE_WEBHOOK_SECRET"])  # a usable whsec_ secret
    settings = Settings.from_env(environ)
    assert settings.pipeline == "local" and settings.jwt_secret


def test_set_variables_win_and_callback_follows_the_port(tmp_path):
    environ = {
        "PORT": "9999",
        "PIPELINE": "queue",
        "SUPABASE_JWT_SECRET": "mine",
        "CALLBACK_URL": "",
    }
    apply_defaults(environ, tmp_path)
    assert environ["PIPELINE"] == "queue"
    assert environ["SUPABASE_JWT_SECRET"] == "mine"
    assert environ["CALLBACK_URL"] == "http://127.0.0.1:9999/status"


def test_generated_secrets_are_kept_for_the_next_start(tmp_path):
    first: dict[str, str] = {}
    again: dict[str, str] = {}
    apply_defaults(first, tmp_path)
    apply_defaults(again, tmp_path)
    names = ("SUPABASE_JWT_SECRET", "PIPELINE_WEBHOOK_SECRET", "MAINTENANCE_TOKEN")
    assert {n: first[n] for n in names} == {n: again[n] for n in names}
    assert (tmp_path / "dev-secrets.json").stat().st_mode & 0o077 == 0


def test_the_demo_token_passes_the_functions_verifier():
    token = demo_token("a-dev-secret-of-at-least-32-bytes!!", issuer="https://x.test/auth/v1")
    verifier = TokenVerifier(
        jwt_secret="a-dev-secret-of-at-least-32-bytes!!", issuer="https://x.test/auth/v1"
    )
    assert verifier.user_id(f"Bearer {token}") == uuid.UUID(DEMO_USER_ID)


def test_printed_commands_carry_the_token_and_the_url():
    text = walkthrough("http://127.0.0.1:8123", "tok.en.value", "maint", "whsec_stripe")
    assert text.splitlines()[:2] == [
        "export TOKEN=tok.en.value",
        "export API=http://127.0.0.1:8123",
    ]
    assert "'Authorization: Bearer maint'" in text
    assert "export STRIPE_WEBHOOK_SECRET=whsec_stripe" in text
