"""Settings from the environment (docs/configuration.md)."""

from __future__ import annotations

import pytest

from shared.core.settings import ENVIRONMENT_VARIABLES, ConfigurationError, Settings


def test_defaults():
    settings = Settings.from_env({})
    assert settings.pipeline == "queue" and settings.port == 8080
    assert settings.database_url is None and settings.cors_allowed_origins == ()


def test_everything_is_read():
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@h:6543/db",
            "SUPABASE_URL": "https://ref.supabase.co/",
            "SUPABASE_SERVICE_ROLE_KEY": "service",
            "SUPABASE_JWT_SECRET": "secret",
            "SUPABASE_JWT_ISSUER": "https://ref.supabase.co/auth/v1",
            "PIPELINE_WEBHOOK_SECRET": "whsec_a whsec_b",
            "PIPELINE": "Prefect",
            "PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/a/workspaces/w",
            "PREFECT_API_KEY": "pnu_x",
            "PREFECT_DEPLOYMENTS": "story=11111111-1111-1111-1111-111111111111, voice=2222",
            "CALLBACK_URL": "https://fn.example/status",
            "CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "MAINTENANCE_TOKEN": "m",
            "PORT": "9000",
        }
    )
    assert settings.pipeline == "prefect"
    assert settings.prefect_deployments == {
        "story": "11111111-1111-1111-1111-111111111111",
        "voice": "2222",
    }
    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")
    assert settings.jwks_url == "https://ref.supabase.co/auth/v1/.well-known/jwks.json"
    assert settings.port == 9000


def test_explicit_jwks_url_wins():
    settings = Settings.from_env(
        {"SUPABASE_URL": "https://ref.supabase.co", "SUPABASE_JWKS_URL": "https://keys.example"}
    )
    assert settings.jwks_url == "https://keys.example"


@pytest.mark.parametrize(
    "environ",
    [
        {"PIPELINE": "kafka"},
        {"PIPELINE": "webhook", "CALLBACK_URL": "http://x/status"},
        {"PIPELINE": "webhook", "PIPELINE_URL": "http://pipe"},
        {"PIPELINE": "prefect", "PREFECT_API_URL": "http://p", "CALLBACK_URL": "http://x"},
        {"PREFECT_DEPLOYMENTS": "story"},
    ],
)
def test_inconsistent_configuration_fails_early(environ):
    with pytest.raises(ValueError):
        Settings.from_env(environ)


def test_environment_variables_lists_exactly_what_from_env_reads():
    class Recording(dict):
        def get(self, name, default=None):
            read.append(name)
            return super().get(name, default)

    read: list[str] = []
    Settings.from_env(Recording())
    assert sorted(set(read)) == sorted(ENVIRONMENT_VARIABLES)


def test_events_url_needs_its_signing_secret():
    with pytest.raises(ConfigurationError, match="EVENTS_WEBHOOK_SECRET"):
        Settings.from_env({"EVENTS_URL": "https://backend.example/events"})
    settings = Settings.from_env(
        {"EVENTS_URL": "https://backend.example/events", "EVENTS_WEBHOOK_SECRET": "whsec_a"}
    )
    assert settings.events_url == "https://backend.example/events"
