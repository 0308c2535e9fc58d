"""The endpoint decorator on its own: error bodies, limits, methods, CORS (no database)."""

from __future__ import annotations

import io
import logging

import flask
import pytest
from pydantic import BaseModel

from shared.api.http import endpoint, json_body
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

    body = io.BytesIO(b'{"name": "' + b"y" * 200 + b'"}')
    # a chunked body: no Content-Length, the server marks the stream as terminated instead
    chunked = client.post("/", input_stream=body, environ_overrides={"wsgi.input_terminated": True})
    assert chunked.status_code == 413
    assert chunked.json["error"]["code"] == "payload_too_large"


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
