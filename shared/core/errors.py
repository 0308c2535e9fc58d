"""The one place that turns failures into the API's error codes and statuses (docs/errors.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

logger = logging.getLogger("credit_jobs.errors")

# What a 429 tells the client to wait before trying again: about as long as a short job runs.
RETRY_AFTER_SECONDS = 30


class ApiError(Exception):
    """An error the client may see: a stable `code`, a human `message`, an HTTP `status`, and
    any `headers` its response carries (e.g. `Retry-After`)."""

    def __init__(
        self, code: str, message: str, status: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {self.message!r}, {self.status})"


# SQLSTATEs raised by the stored procedures (class CJ) -> (code, HTTP status). Mapped by code only.
SQLSTATE_ERRORS: dict[str, tuple[str, int]] = {
    "CJ001": ("insufficient_credits", 402),
    "CJ002": ("unknown_kind", 400),
    "CJ003": ("not_found", 404),
    "CJ004": ("invalid_transition", 409),
    "CJ005": ("stale_attempt", 409),
    "CJ006": ("idempotency_key_reused", 422),
    "CJ007": ("invalid_argument", 400),
    "CJ008": ("too_many_active_jobs", 429),
}

# PostgREST's own codes for "cannot reach the database" (PGRST000-003): an outage, not a bug.
POSTGREST_UNAVAILABLE = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})


def from_sqlstate(sqlstate: str | None, message: str | None) -> ApiError:
    """Translate a database error by its SQLSTATE.

    Business errors (CJ0xx) carry our own message text, written for clients. Anything else is a
    bug or an outage: logged here, and the client only sees `internal_error` (never SQL text).
    """
    known = SQLSTATE_ERRORS.get(sqlstate or "")
    if known is not None:
        code, status = known
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else None
        return ApiError(code, message or code, status, headers)
    logger.error("unexpected database error sqlstate=%s: %s", sqlstate, message)
    return internal_error()


def internal_error() -> ApiError:
    return ApiError("internal_error", "internal error", 500)


def unauthorized(message: str = "a valid bearer token is required") -> ApiError:
    return ApiError("unauthorized", message, 401)


def invalid_request(message: str) -> ApiError:
    return ApiError("invalid_request", message, 400)


def payload_too_large(limit: int) -> ApiError:
    return ApiError("payload_too_large", f"request body must be at most {limit} bytes", 413)


def method_not_allowed(method: str) -> ApiError:
    return ApiError("method_not_allowed", f"method {method} is not allowed here", 405)


def pipeline_unavailable(message: str = "the pipeline could not be reached") -> ApiError:
    return ApiError("pipeline_unavailable", message, 503)


def invalid_signature(message: str = "webhook signature verification failed") -> ApiError:
    return ApiError("invalid_signature", message, 401)


def configuration_error(message: str) -> ApiError:
    """The deployment is missing configuration: nothing the client can fix, nothing was done."""
    return ApiError("configuration_error", message, 503)


def database_unavailable() -> ApiError:
    return ApiError("database_unavailable", "the database is unavailable, retry shortly", 503)
