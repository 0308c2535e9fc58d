"""HTTP plumbing shared by every function: JSON responses, errors, CORS, limits, one decorator.

    @endpoint(methods=("GET", "POST"))
    def projects(request: flask.Request) -> dict | tuple[dict, int] | flask.Response: ...

The decorator answers CORS preflight, refuses other methods (405), reads the whole body before the
handler runs (so an oversize body is 413 however it is framed and whatever the credentials),
refuses query strings PostgreSQL cannot store, and turns ApiError and pydantic ValidationError
into `{"error": {"code", "message"}}`; any other exception is logged and answered 500
`internal_error`. `json_body` is the one JSON parser: every value it returns can be stored.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import flask
import pydantic

from shared.core import jsoncodec
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
# A pipeline's report: a completed job's result may be up to 1 MiB (complete_job's limit).
MAX_CALLBACK_BYTES = 1024 * 1024 + 64 * 1024
# Deeper than any real params or result; far below Python's recursion limit (the parser's own).
MAX_JSON_DEPTH = 64
# PostgreSQL text and jsonb cannot hold NUL, and UTF-8 cannot encode an unpaired surrogate.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE = "must not contain NUL characters or unpaired surrogates"
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
# Response headers a web client may read besides the CORS-safelisted ones (a 429's wait).
CORS_EXPOSED_HEADERS = "Retry-After"
CORS_MAX_AGE_SECONDS = "600"

Handler = Callable[[flask.Request], "dict | tuple[dict, int] | flask.Response"]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        jsoncodec.dumps(body),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def error_response(error: ApiError, extra: dict | None = None) -> flask.Response:
    """`{"error": {...}}`, plus any extra top-level fields (e.g. the refunded `job` of a 503), with
    the error's own headers."""
    return json_response({**error.body(), **(extra or {})}, error.status, error.headers)


def cors_headers(origin: str | None, allowed_origins: Iterable[str]) -> dict[str, str]:
    """Allow-Origin for an allowed Origin; nothing at all for a refused or absent one."""
    allowed = tuple(allowed_origins)
    if not origin:
        return {}
    exposed = {"Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"} | exposed
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} | exposed
    return {}


def read_body(request: flask.Request, limit: int) -> bytes:
    """The whole body, with a Content-Length or chunked, or ApiError 413 when it exceeds `limit`.

    Cached on the request: `request.get_data(cache=True)` returns it afterwards.
    """
    if request.content_length is not None and request.content_length > limit:
        raise payload_too_large(limit)
    # Werkzeug stops a stream without Content-Length at max_content_length and returns what it
    # read: one byte past the limit tells an oversize body from one exactly at it.
    request.max_content_length = limit + 1
    data = request.get_data(cache=True)
    if len(data) > limit:
        raise payload_too_large(limit)
    return data


def storable_json(value: Any) -> None:
    """ApiError invalid_request unless every string and key of `value` can be stored and it is
    nested at most MAX_JSON_DEPTH deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE_TEXT.search(item):
                raise invalid_request(f"strings {UNSTORABLE_MESSAGE}")
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise invalid_request(f"JSON must be nested at most {MAX_JSON_DEPTH} deep")
            if isinstance(item, dict):
                if any(UNSTORABLE_TEXT.search(key) for key in item):
                    raise invalid_request(f"keys {UNSTORABLE_MESSAGE}")
                item = item.values()
            stack.extend((child, depth + 1) for child in item)


def json_body(request: flask.Request) -> dict:
    """The request body as a JSON object that PostgreSQL can store, or ApiError invalid_request."""
    data = request.get_data(cache=True)
    try:
        body = jsoncodec.loads(data, finite=True) if data else None
    except jsoncodec.NonFiniteNumber as exc:
        raise invalid_request(str(exc)) from None
    except RecursionError:
        raise invalid_request(f"JSON must be nested at most {MAX_JSON_DEPTH} deep") from None
    except ValueError:  # includes UnicodeDecodeError
        raise invalid_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid_request("request body must be a JSON object")
    storable_json(body)
    return body


def storable_query(request: flask.Request) -> None:
    """ApiError invalid_request unless every query parameter name and value can be stored."""
    if not request.query_string:
        return
    for name, value in request.args.items(multi=True):
        if UNSTORABLE_TEXT.search(name) or UNSTORABLE_TEXT.search(value):
            raise invalid_request(f"query parameters {UNSTORABLE_MESSAGE}")


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
        read_body(request, max_body_bytes)
        storable_query(request)
        result = handler(request)
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
