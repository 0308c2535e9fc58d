"""The process-wide services of the functions, built once on first use from the environment.

Tests (and the dev server) change the environment, then call `reset()` to rebuild on next use.
The dev server hands in its demo pipeline with `use_local_pipeline` (PIPELINE=local).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from shared.api.auth import TokenVerifier
from shared.core import log
from shared.core.db import Database, close_pools, database_from_settings
from shared.core.settings import Settings
from shared.push.dispatch import Dispatcher, dispatcher_from_settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
    tokens: TokenVerifier


# Set only by the dev server; deployed functions have no local pipeline.
_local_pipeline: Callable[[Settings], Dispatcher] | None = None


def use_local_pipeline(factory: Callable[[Settings], Dispatcher] | None) -> None:
    """Build PIPELINE=local's dispatcher with factory from now on (None: no local pipeline)."""
    global _local_pipeline
    _local_pipeline = factory
    reset()


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
        dispatcher=dispatcher_from_settings(config, _local_pipeline),
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
