"""The two functions a caller needs no token for: the price list and the health check."""

from __future__ import annotations

import pytest

from shared.core import db as db_module
from shared.migrate import SCHEMA_VERSION
from tests.fake_http import closed_port_url
from tests.integration.http_helpers import ALLOWED_ORIGIN, http_api
from tests.integration.sqlfns import add_kind

pytestmark = pytest.mark.integration


@pytest.fixture
def api(monkeypatch, db_url):
    with http_api(monkeypatch, db_url) as client:
        yield client


def test_kinds_is_the_price_list_without_a_token_and_cacheable(api, conn):
    add_kind(conn, "voice", cost=25, description="a voice-over", max_attempts=2)
    add_kind(conn, "story", cost=10, description="a short story", max_active_per_user=3)
    add_kind(conn, "film", cost=500, paused=True)

    response = api.get("kinds", headers={"Origin": ALLOWED_ORIGIN})

    assert response.status_code == 200, response.json
    assert response.headers["Cache-Control"] == "public, max-age=60"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert response.json["items"] == [
        {"kind": "film", "cost": 500, "description": "", "paused": True, "max_attempts": 3,
         "max_active_per_user": None},
        {"kind": "story", "cost": 10, "description": "a short story", "paused": False,
         "max_attempts": 3, "max_active_per_user": 3},
        {"kind": "voice", "cost": 25, "description": "a voice-over", "paused": False,
         "max_attempts": 2, "max_active_per_user": None},
    ]  # fmt: skip


def test_kinds_with_no_kinds_is_an_empty_list(api):
    assert api.get("kinds").json == {"items": []}


def test_health_is_ok_on_a_migrated_database(api):
    response = api.get("health")
    assert response.status_code == 200, response.json
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json == {
        "status": "ok",
        "checks": {"database": "ok", "migrations": "ok"},
        "expected_migration": SCHEMA_VERSION,
        "latest_migration": SCHEMA_VERSION,
    }


def test_health_is_503_when_the_newest_migration_is_not_applied(api, conn):
    conn.execute(
        "delete from supabase_migrations.schema_migrations where version = %s", (SCHEMA_VERSION,)
    )
    response = api.get("health")
    assert response.status_code == 503
    body = response.json
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "migrations": "behind"}
    assert body["latest_migration"] < SCHEMA_VERSION
    assert SCHEMA_VERSION in body["message"]


def test_health_is_503_when_the_database_is_unreachable(monkeypatch, db_url):
    monkeypatch.setattr(db_module, "POOL_TIMEOUT_SECONDS", 1.0)
    url = closed_port_url().replace("http://", "postgresql://postgres@").replace("/pipeline", "/x")
    with http_api(monkeypatch, db_url, DATABASE_URL=url + "?connect_timeout=1") as api:
        response = api.get("health")
    assert response.status_code == 503
    assert response.json["checks"] == {"database": "database_unavailable", "migrations": "unknown"}
    assert response.json["latest_migration"] is None
