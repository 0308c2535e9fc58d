"""The endpoint decorator on its own: error bodies, limits, methods, CORS (no database)."""

from __future__ import annotations

import io
import json
import logging

import flask
import pytest
from pydantic import BaseModel

from shared.api.http import MAX_JSON_DEPTH, endpoint, json_body
from shared.core.errors import ApiError

ORIGIN = "https://app.example"


class Thing(BaseModel):
    name: str


@endpoint(methods=("POST",), max_body_bytes=100, allowed_origins=lambda: (ORIGIN,))
def handler(request: flask.Request):
    body = json_body(request)
    if body.get("boom"):
        raise RuntimeError("password=hunter2 in some SQL text")
    if body.get("teapot"):
        raise ApiError("not_found", "no such thing", 404)
    return {"thing": Thing.model_validate(body).name}, 201


@pytest.fixture
def client():
    app = flask.Flask(__name__)
    app.add_url_rule(
        "/", "handler", lambda: handler(flask.request), methods=["GET", "POST", "OPTIONS", "PUT"]
    )
    return app.test_client()


def test_success_is_json_with_the_handlers_status(client):
    response = client.post("/", json={"name": "x"})
    assert response.status_code == 201 and response.json == {"thing": "x"}
    assert response.mimetype == "application/json"


def test_api_errors_become_error_bodies(client):
    response = client.post("/", json={"teapot": True})
    assert response.status_code == 404
    assert response.json == {"error": {"code": "not_found", "message": "no such thing"}}


def test_validation_errors_are_400_without_echoing_input(client):
    response = client.post("/", json={"name": ["secret-value"]})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"
    assert "name" in response.json["error"]["message"]
    assert "secret-value" not in response.json["error"]["message"]


def test_unexpected_errors_are_logged_500s_that_leak_nothing(client, caplog):
    with caplog.at_level(logging.ERROR):
        response = client.post("/", json={"boom": True})
    assert response.status_code == 500
    assert response.json == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "hunter2" in caplog.text


def test_body_limit_with_and_without_content_length(client):
    assert client.post("/", data=b"x" * 101).status_code == 413

    # Valid JSON until the limit: a truncated read would pass it to the handler.
    for size, status in ((100, 201), (101, 413), (10_000, 413)):
        body = b'{"name": "y"}'.ljust(size)
        response = chunked(client, body)
        assert response.status_code == status, size
    assert response.json["error"]["code"] == "payload_too_large"


def chunked(client, body: bytes):
    """What a server that decodes `Transfer-Encoding: chunked` hands on: no Content-Length, the
    stream marked as terminated by the server."""
    return client.post(
        "/",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_oversize_is_413_before_the_handler_reads_anything():
    calls = []

    @endpoint(methods=("POST",), max_body_bytes=10)
    def authenticates_first(request: flask.Request):
        calls.append(request)
        raise ApiError("unauthorized", "no token", 401)

    app = flask.Flask(__name__)
    app.add_url_rule("/", "h", lambda: authenticates_first(flask.request), methods=["POST"])
    assert chunked(app.test_client(), b"x" * 11).status_code == 413
    assert app.test_client().post("/", data=b"x" * 11).status_code == 413
    assert calls == []


UNSTORABLE = {
    "NUL in a string": b'{"name": "a\\u0000"}',
    "NUL in a key": b'{"a\\u0000": 1}',
    "lone surrogate": b'{"name": "\\ud800"}',
    "lone surrogate in a key": b'{"\\udfff": 1}',
    "NaN": b'{"name": NaN}',
    "Infinity": b'{"name": [Infinity]}',
    "-Infinity": b'{"name": -Infinity}',
    "overflowing float": b'{"name": 1e400}',
    "too deep": b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
    "deeper than Python recurses": b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "not UTF-8": b'{"name": "\xff"}',
}


@pytest.mark.parametrize("body", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_json_body_refuses_what_postgresql_cannot_store(body):
    app = flask.Flask(__name__)
    with (
        app.test_request_context("/", method="POST", data=body),
        pytest.raises(ApiError) as refused,
    ):
        json_body(flask.request)
    assert refused.value.status == 400 and refused.value.code == "invalid_request"


def test_json_body_keeps_what_it_can_store():
    body = {
        "text": "café 😀 \u2028 \\u0000 escaped",
        "deep": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)),
        "numbers": [0, -1.5e308, 10**100, 1e-400],
    }
    app = flask.Flask(__name__)
    with app.test_request_context("/", method="POST", data=json.dumps(body)):
        assert json_body(flask.request) == body


@pytest.mark.parametrize("query", ["cursor=%00", "a%00=1", "x=1&y=%00"])
def test_query_strings_postgresql_cannot_store_are_400(client, query):
    response = client.post(f"/?{query}", json={"name": "x"})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"


def test_other_methods_are_405_with_allow(client):
    response = client.put("/", json={})
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST, OPTIONS"


def test_preflight_and_cors_headers(client):
    allowed = client.options(
        "/", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    refused = client.options(
        "/", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    error = client.post("/", json={"teapot": True}, headers={"Origin": ORIGIN})
    assert error.headers["Access-Control-Allow-Origin"] == ORIGIN  # errors are readable too
