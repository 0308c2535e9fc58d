"""The process-wide services of the functions, built once on first use from the environment.

Tests (and the dev server) change the environment, then call `reset()` to rebuild on next use.
The dev server hands in its demo pipeline with `use_local_pipeline` (PIPELINE=local).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from shared.api.auth import TokenVerifier
from shared.core import errors, log
from shared.core.db import Database, close_pools, database_from_settings
from shared.core.settings import ConfigurationError, Settings
from shared.push.dispatch import Dispatcher, Pipelines
from shared.push.events import EventSender


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    pipelines: Pipelines
    tokens: TokenVerifier
    events: EventSender | None


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


def check_configuration() -> None:
    """Raise ConfigurationError now, naming what is missing, instead of failing per request."""
    database_from_settings(settings())


def services() -> Services:
    """The services, or ApiError configuration_error (503) naming what the environment lacks."""
    try:
        return _services()
    except ConfigurationError as exc:
        raise errors.configuration_error(str(exc)) from None


@functools.cache
def _services() -> Services:
    log.configure()
    config = settings()
    return Services(
        settings=config,
        db=database_from_settings(config),
        pipelines=Pipelines.from_settings(config, _local_pipeline),
        tokens=TokenVerifier(
            jwt_secret=config.jwt_secret, jwks_url=config.jwks_url, issuer=config.jwt_issuer
        ),
        events=EventSender.from_settings(config),
    )


def allowed_origins() -> tuple[str, ...]:
    try:
        return settings().cors_allowed_origins
    except ConfigurationError:
        return ()  # the handler answers configuration_error


def reset() -> None:
    """Forget settings and services and close database pools; the next request rebuilds them."""
    if _services.cache_info().currsize:
        built = _services()
        built.pipelines.close()
        if built.events:
            built.events.close()
    settings.cache_clear()
    _services.cache_clear()
    close_pools()
