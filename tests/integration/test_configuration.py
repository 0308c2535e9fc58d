"""An incomplete configuration stops a function from starting, or answers 503 naming what is
missing; never a 500 per request (issue 9 finding 4). Plus the dev server's own start checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from werkzeug.test import Client

from shared.api import services as app
from shared.core.settings import ConfigurationError
from shared.dev.server import build_app
from tests.integration.http_helpers import ALLOWED_ORIGIN, http_api

ROOT = Path(__file__).resolve().parents[2]


def test_a_push_pipeline_without_its_url_refuses_to_start(monkeypatch, db_url):
    with (
        http_api(monkeypatch, db_url, PIPELINE="webhook") as api,
        pytest.raises(ConfigurationError, match="PIPELINE_URL"),
    ):
        api.client("generate")


def test_no_database_configured_refuses_to_start(monkeypatch, db_url):
    with http_api(monkeypatch, db_url) as api:
        monkeypatch.delenv("DATABASE_URL")
        app.reset()
        with pytest.raises(ConfigurationError, match="DATABASE_URL"):
            api.client("history")


def test_configuration_broken_after_start_is_503_naming_it(monkeypatch, db_url, make_user):
    with http_api(monkeypatch, db_url) as api:
        api.client("history")
        monkeypatch.setenv("PIPELINE", "kafka")
        app.reset()
        response = api.get("history", user=make_user())
    assert response.status_code == 503
    assert response.json["error"]["code"] == "configuration_error"
    assert "PIPELINE must be one of" in response.json["error"]["message"]


def test_maintenance_without_its_token_is_503(monkeypatch, db_url):
    with http_api(monkeypatch, db_url, MAINTENANCE_TOKEN="") as api:
        response = api.post("maintenance", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 503
    assert "MAINTENANCE_TOKEN" in response.json["error"]["message"]


def test_callbacks_without_a_webhook_secret_are_503(monkeypatch, db_url):
    with http_api(monkeypatch, db_url, PIPELINE_WEBHOOK_SECRET="") as api:
        response = api.callback({"job_id": str(os.urandom(16).hex()), "attempt": 1})
    assert response.status_code == 503
    assert "PIPELINE_WEBHOOK_SECRET" in response.json["error"]["message"]


def test_the_dev_server_refuses_to_start_on_an_incomplete_configuration(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "CREDIT_JOBS_DATA_DIR": str(tmp_path),
        "PIPELINE": "prefect",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared.dev"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PREFECT_DEPLOYMENTS" in done.stderr
    assert "dev server on" not in done.stdout
    assert not (tmp_path / "pgdata").exists()  # refused before starting anything


def test_the_dev_servers_404_carries_cors_headers(monkeypatch, db_url):
    """Issue 9 finding 7: without them a browser only sees "Failed to fetch"."""
    with http_api(monkeypatch, db_url):
        response = Client(build_app(("history",))).get("/nope", headers={"Origin": ALLOWED_ORIGIN})
    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert response.json["error"]["code"] == "not_found"
