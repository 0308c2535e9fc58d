"""The supabase-py transport (SupabaseDatabase), tested at its HTTP boundary.

PostgREST cannot run here, so a tiny local HTTP server on 127.0.0.1 stands in for it: it records
what supabase-py sends (path `/rest/v1/rpc/<name>`, `apikey` and `Authorization` headers, JSON
body) and answers either a result or a PostgREST-shaped error (`{"code", "message", "details",
"hint"}`, PostgREST puts the SQLSTATE in `code`). The same ApiError must come out as from the
psycopg transport.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shared.core.db import Json, SupabaseDatabase
from shared.core.errors import SQLSTATE_ERRORS, ApiError
from tests.fake_http import closed_port_url, fake_server

KEY = "test-service-role-key"


def postgrest_error(code: str, message: str, status: int = 400):
    return status, {"code": code, "message": message, "details": None, "hint": None}


def test_rpc_posts_named_parameters_and_returns_the_result():
    result = {"job": {"id": "j"}, "balance": 5, "replayed": False}
    user = uuid.uuid4()
    with fake_server(lambda request: (200, result)) as server:
        db = SupabaseDatabase(server.url, KEY)
        answer = db.rpc(
            "create_job",
            p_user_id=user,
            p_kind="story",
            p_params={"a": [1, 2]},
            p_project_id=None,
            p_result=Json("text"),
            p_completed_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        )
    assert answer == result
    [request] = server.requests
    assert request.method == "POST"
    assert request.path == "/rest/v1/rpc/create_job"
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json() == {
        "p_user_id": str(user),
        "p_kind": "story",
        "p_params": {"a": [1, 2]},
        "p_project_id": None,
        "p_result": "text",
        "p_completed_at": "2026-01-02T03:04:05+00:00",
    }


@pytest.mark.parametrize(
    ("sqlstate", "code", "status"), [(s, *e) for s, e in SQLSTATE_ERRORS.items()]
)
def test_postgrest_errors_map_through_the_same_table(sqlstate, code, status):
    message = "insufficient credits: balance 2, needs 5"

    def respond(request):
        return postgrest_error(sqlstate, message)

    with fake_server(respond) as server, pytest.raises(ApiError) as caught:
        SupabaseDatabase(server.url, KEY).rpc("create_job", p_kind="story")
    assert (caught.value.code, caught.value.status, caught.value.message) == (
        code,
        status,
        message,
    )


def test_unknown_postgrest_errors_are_internal_without_detail():
    missing_function = postgrest_error(
        "PGRST202", "Could not find the function public.nope(p_x) in the schema cache", 404
    )
    with fake_server(lambda request: missing_function) as server, pytest.raises(ApiError) as caught:
        SupabaseDatabase(server.url, KEY).rpc("nope", p_x=1)
    assert (caught.value.code, caught.value.status) == ("internal_error", 500)
    assert "nope" not in caught.value.message


def test_database_outage_behind_postgrest_is_unavailable():
    outage = postgrest_error("PGRST001", "Database client error. Retrying the connection.", 503)
    with fake_server(lambda request: outage) as server, pytest.raises(ApiError) as caught:
        SupabaseDatabase(server.url, KEY).rpc("get_job")
    assert caught.value.code == "database_unavailable" and caught.value.status == 503


def test_unreachable_postgrest_is_unavailable():
    with pytest.raises(ApiError) as caught:
        SupabaseDatabase(closed_port_url(), KEY).rpc("get_job")
    assert caught.value.code == "database_unavailable"
