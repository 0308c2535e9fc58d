"""HTTP plumbing shared by every function: JSON responses, errors, CORS, limits, one decorator.

    @endpoint(methods=("GET", "POST"))
    def projects(request: flask.Request) -> dict | tuple[dict, int] | flask.Response: ...

The decorator answers CORS preflight, refuses other methods (405) and large bodies (413), and turns
ApiError and pydantic ValidationError into `{"error": {"code", "message"}}`; any other exception
is logged and answered 500 `internal_error`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import flask
import pydantic
from werkzeug.exceptions import RequestEntityTooLarge

from shared.core.errors import (
    ApiError,
    internal_error,
    invalid_request,
    method_not_allowed,
    payload_too_large,
)

logger = logging.getLogger("credit_jobs.http")

# Params and step data are at most 64 KiB; leave room for JSON escaping and the other fields.
MAX_BODY_BYTES = 256 * 1024
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_MAX_AGE_SECONDS = "600"

Handler = Callable[[flask.Request], "dict | tuple[dict, int] | flask.Response"]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body, separators=(",", ":"), default=str),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def error_response(error: ApiError, extra: dict | None = None) -> flask.Response:
    """`{"error": {...}}`, plus any extra top-level fields (e.g. the refunded `job` of a 503)."""
    return json_response({**error.body(), **(extra or {})}, error.status)


def cors_headers(origin: str | None, allowed_origins: Iterable[str]) -> dict[str, str]:
    """Allow-Origin for an allowed Origin; nothing at all for a refused or absent one."""
    allowed = tuple(allowed_origins)
    if not origin:
        return {}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


def json_body(request: flask.Request) -> dict:
    """The request body as a JSON object, or ApiError invalid_request."""
    data = request.get_data(cache=True)
    try:
        body = json.loads(data) if data else None
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid_request("request body must be a JSON object")
    return body


def validation_message(exc: pydantic.ValidationError) -> str:
    """`field: problem; ...` without echoing the submitted values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        field = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{field}: {error['msg']}")
    return "; ".join(parts)


def endpoint(
    *,
    methods: tuple[str, ...],
    max_body_bytes: int = MAX_BODY_BYTES,
    allowed_origins: Callable[[], Iterable[str]] = lambda: (),
) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    """Wrap a handler with CORS, preflight, the method check, the body limit and error bodies.

    `allowed_origins` is called per request (settings are read lazily, after import).
    """
    allow = ", ".join((*methods, "OPTIONS"))

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        @functools.wraps(handler)
        def target(request: flask.Request) -> flask.Response:
            try:
                cors = cors_headers(request.headers.get("Origin"), allowed_origins())
            except Exception:
                logger.exception("could not read the CORS configuration")
                return error_response(internal_error())
            response = _handle(handler, request, methods, allow, max_body_bytes, cors)
            response.headers.update(cors)
            return response

        return target

    return decorate


def _handle(
    handler: Handler,
    request: flask.Request,
    methods: tuple[str, ...],
    allow: str,
    max_body_bytes: int,
    cors: dict[str, str],
) -> flask.Response:
    if request.method == "OPTIONS":
        headers = {"Allow": allow}
        if cors:
            headers |= {
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_SECONDS,
            }
        return flask.Response(status=204, headers=headers)
    if request.method not in methods:
        response = error_response(method_not_allowed(request.method))
        response.headers["Allow"] = allow
        return response
    try:
        if request.content_length is not None and request.content_length > max_body_bytes:
            raise payload_too_large(max_body_bytes)
        # also bounds bodies sent without Content-Length (chunked)
        request.max_content_length = max_body_bytes
        result = handler(request)
    except RequestEntityTooLarge:
        return error_response(payload_too_large(max_body_bytes))
    except ApiError as exc:
        return error_response(exc)
    except pydantic.ValidationError as exc:
        return error_response(invalid_request(validation_message(exc)))
    except Exception:
        logger.exception("unhandled error in %s", getattr(handler, "__name__", "handler"))
        return error_response(internal_error())
    if isinstance(result, flask.Response):
        return result
    if isinstance(result, tuple):
        body, status = result
        return json_response(body, status)
    return json_response(result)
