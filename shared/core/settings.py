"""Configuration from the environment (docs/configuration.md), read once into `Settings`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

PIPELINES = ("local", "webhook", "prefect", "queue")
DEFAULT_PORT = 8080


# Every variable Settings.from_env reads (tests clear them to start from a known environment).
ENVIRONMENT_VARIABLES = (
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_JWT_SECRET",
    "SUPABASE_JWKS_URL",
    "SUPABASE_JWT_ISSUER",
    "PIPELINE_WEBHOOK_SECRET",
    "PIPELINE",
    "PIPELINE_URL",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_DEPLOYMENTS",
    "CALLBACK_URL",
    "CORS_ALLOWED_ORIGINS",
    "MAINTENANCE_TOKEN",
    "STRIPE_WEBHOOK_SECRET",
    "EVENTS_URL",
    "EVENTS_WEBHOOK_SECRET",
    "PORT",
)


class ConfigurationError(ValueError):
    """The environment is incomplete or inconsistent; the message names what to set."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: str | None = None
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    pipeline_webhook_secret: str | None = None
    pipeline: str = "queue"
    pipeline_url: str | None = None
    prefect_api_url: str | None = None
    prefect_api_key: str | None = None
    prefect_deployments: Mapping[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    cors_allowed_origins: tuple[str, ...] = ()
    maintenance_token: str | None = None
    stripe_webhook_secret: str | None = None
    events_url: str | None = None
    events_webhook_secret: str | None = None
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            choices = ", ".join(PIPELINES)
            raise ConfigurationError(f"PIPELINE must be one of {choices}, not {self.pipeline!r}")
        needs = {
            "webhook": {
                "PIPELINE_URL": self.pipeline_url,
                "PIPELINE_WEBHOOK_SECRET": self.pipeline_webhook_secret,
            },
            "prefect": {
                "PREFECT_API_URL": self.prefect_api_url,
                "PREFECT_DEPLOYMENTS": self.prefect_deployments,
            },
        }.get(self.pipeline, {})
        if needs:
            needs["CALLBACK_URL"] = self.callback_url
        missing = [name for name, value in needs.items() if not value]
        if missing:
            raise ConfigurationError(f"PIPELINE={self.pipeline} needs {', '.join(missing)}")
        if self.events_url and not self.events_webhook_secret:
            raise ConfigurationError("EVENTS_URL needs EVENTS_WEBHOOK_SECRET to sign the events")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        supabase_url = get("SUPABASE_URL")
        jwks_url = get("SUPABASE_JWKS_URL")
        if jwks_url is None and supabase_url:
            # Supabase publishes its asymmetric signing keys here; HS256 tokens never use it.
            jwks_url = supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return cls(
            database_url=get("DATABASE_URL"),
            supabase_url=supabase_url,
            supabase_service_role_key=get("SUPABASE_SERVICE_ROLE_KEY"),
            jwt_secret=get("SUPABASE_JWT_SECRET"),
            jwks_url=jwks_url,
            jwt_issuer=get("SUPABASE_JWT_ISSUER"),
            pipeline_webhook_secret=get("PIPELINE_WEBHOOK_SECRET"),
            pipeline=(get("PIPELINE") or "queue").lower(),
            pipeline_url=get("PIPELINE_URL"),
            prefect_api_url=get("PREFECT_API_URL"),
            prefect_api_key=get("PREFECT_API_KEY"),
            prefect_deployments=_parse_map(get("PREFECT_DEPLOYMENTS") or ""),
            callback_url=get("CALLBACK_URL"),
            cors_allowed_origins=tuple(_split(get("CORS_ALLOWED_ORIGINS") or "")),
            maintenance_token=get("MAINTENANCE_TOKEN"),
            stripe_webhook_secret=get("STRIPE_WEBHOOK_SECRET"),
            events_url=get("EVENTS_URL"),
            events_webhook_secret=get("EVENTS_WEBHOOK_SECRET"),
            port=_port(get("PORT")),
        )


def _port(value: str | None) -> int:
    if value is None:
        return DEFAULT_PORT
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigurationError(f"PORT must be a TCP port number, not {value!r}")
    return int(value)


def _parse_map(value: str) -> dict[str, str]:
    """`"story=<uuid>,voice=<uuid>"` -> `{"story": "<uuid>", "voice": "<uuid>"}`."""
    result = {}
    for item in _split(value):
        key, sep, val = item.partition("=")
        if not sep or not key or not val:
            raise ConfigurationError(
                f"PREFECT_DEPLOYMENTS entries are kind=deployment_id, not {item!r}"
            )
        result[key] = val
    return result


def _split(value: str) -> list[str]:
    """Items separated by commas and/or spaces."""
    return value.replace(",", " ").split()
