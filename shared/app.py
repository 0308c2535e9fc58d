"""The process-wide services of the functions, built once on first use from the environment.

Tests (and the dev server) change the environment, then call `reset()` to rebuild on next use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from shared import log
from shared.auth import TokenVerifier
from shared.db import Database, close_pools, database_from_settings
from shared.dispatch import Dispatcher, dispatcher_from_settings
from shared.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
    tokens: TokenVerifier


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def services() -> Services:
    log.configure()
    config = settings()
    return Services(
        settings=config,
        db=database_from_settings(config),
        dispatcher=dispatcher_from_settings(config),
        tokens=TokenVerifier(
            jwt_secret=config.jwt_secret, jwks_url=config.jwks_url, issuer=config.jwt_issuer
        ),
    )


def allowed_origins() -> tuple[str, ...]:
    return settings().cors_allowed_origins


def reset() -> None:
    """Forget settings and services and close database pools; the next request rebuilds them."""
    if services.cache_info().currsize:
        close = getattr(services().dispatcher, "close", None)
        if close is not None:
            close()
    settings.cache_clear()
    services.cache_clear()
    close_pools()
