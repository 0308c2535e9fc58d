"""Every HTTP function through functions-framework's test client, against the real test database."""

from __future__ import annotations

import uuid

import pytest

from shared.core.errors import RETRY_AFTER_SECONDS
from shared.dev.server import TARGETS
from tests.fake_http import closed_port_url, fake_server
from tests.integration.http_helpers import (
    ALLOWED_ORIGIN,
    MAINTENANCE_TOKEN,
    http_api,
    token,
)
from tests.integration.sqlfns import add_kind, balance


@pytest.fixture
def api(monkeypatch, db_url):
    with http_api(monkeypatch, db_url) as client:
        yield client


# --- generate -----------------------------------------------------------------------------------


def test_generate_charges_and_creates_a_pending_job(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=12)
    response = api.post("generate", user=user, json_body={"kind": "story", "params": {"p": 1}})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["balance"] == 7
    job = body["job"]
    assert job["status"] == "pending" and job["cost"] == 5 and job["params"] == {"p": 1}
    assert set(job) >= {
        "id",
        "project_id",
        "step_number",
        "kind",
        "status",
        "attempt",
        "cost",
        "credits_used",
        "refunded",
        "params",
        "result",
        "error_message",
        "progress",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
    }
    assert balance(conn, user) == 7


def test_generate_without_enough_credits_is_402(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=4)
    response = api.post("generate", user=user, json_body={"kind": "story"})
    assert response.status_code == 402
    assert response.json["error"]["code"] == "insufficient_credits"
    assert balance(conn, user) == 4


def test_generate_unknown_kind_is_400(api, make_user):
    response = api.post("generate", user=make_user(balance=10), json_body={"kind": "nope"})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "unknown_kind"


@pytest.mark.parametrize(
    "body",
    [
        {"params": {}},
        {"kind": "story", "params": []},
        {"kind": "story", "step_number": 0},
        {"kind": "story", "project_id": "not-a-uuid"},
        {"kind": "story", "typo": 1},
        {"kind": "story", "params": {"big": "x" * 70_000}},
    ],
)
def test_generate_rejects_invalid_bodies_with_400(api, conn, make_user, body):
    add_kind(conn, "story", cost=5)
    response = api.post("generate", user=make_user(balance=10), json_body=body)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"


def test_generate_rejects_non_json_body(api, make_user):
    response = api.post(
        "generate",
        user=make_user(),
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"


def test_generate_rejects_a_huge_body_with_413_before_parsing(api, make_user):
    response = api.post("generate", user=make_user(), data=b"x" * (300 * 1024))
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"


def test_generate_refuses_get_with_405(api, make_user):
    response = api.get("generate", user=make_user())
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_generate_replay_with_the_same_idempotency_key_charges_once(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=20)
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("generate", user=user, json_body={"kind": "story"}, headers=headers)
    again = api.post("generate", user=user, json_body={"kind": "story"}, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json["replayed"] is True
    assert again.json["job"]["id"] == first.json["job"]["id"]
    assert balance(conn, user) == 15


def test_generate_reusing_an_idempotency_key_for_another_request_is_422(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=20)
    headers = {"Idempotency-Key": "order-43"}
    api.post("generate", user=user, json_body={"kind": "story"}, headers=headers)
    reused = api.post(
        "generate", user=user, json_body={"kind": "story", "params": {"x": 1}}, headers=headers
    )
    assert reused.status_code == 422
    assert reused.json["error"]["code"] == "idempotency_key_reused"
    assert balance(conn, user) == 15


def test_generate_beyond_the_kinds_active_limit_is_429_with_retry_after(api, conn, make_user):
    """G15: the limit's refusal is 429 with Retry-After, readable by a web client (CORS)."""
    add_kind(conn, "story", cost=5, max_active_per_user=2)
    user = make_user(balance=50)
    origin = {"Origin": ALLOWED_ORIGIN}
    for _ in range(2):
        assert api.post("generate", user=user, json_body={"kind": "story"}).status_code == 201

    refused = api.post("generate", user=user, json_body={"kind": "story"}, headers=origin)

    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "too_many_active_jobs"
    assert "2 active story jobs" in refused.json["error"]["message"]
    assert refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    exposed = refused.headers["Access-Control-Expose-Headers"].lower()
    assert "retry-after" in {header.strip() for header in exposed.split(",")}
    assert balance(conn, user) == 40
    kinds = api.get("kinds").json["items"]
    assert [kind["max_active_per_user"] for kind in kinds] == [2]


def test_generate_in_another_users_project_is_404(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    owner, intruder = make_user(balance=10), make_user(balance=10)
    project = api.post("projects", user=owner, json_body={"title": "mine"}).json["project"]
    response = api.post(
        "generate", user=intruder, json_body={"kind": "story", "project_id": project["id"]}
    )
    assert response.status_code == 404
    assert balance(conn, intruder) == 10


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        "Bearer not-a-jwt",
        "expired",
        "wrong-audience",
        "wrong-key",
        "no-sub",
    ],
)
def test_user_functions_need_a_valid_token(api, make_user, authorization):
    user = make_user(balance=10)
    tokens = {
        "expired": token(user, exp=1_000_000),
        "wrong-audience": token(user, aud="anon"),
        "wrong-key": token(user, secret="another-secret-that-is-long-enough-for-hs256"),
        "no-sub": token(user, sub=None),
    }
    header = tokens.get(authorization, authorization)
    if header in tokens.values():
        header = f"Bearer {header}"
    headers = {"Authorization": header} if header else {}
    for method, target in [
        ("POST", "generate"),
        ("GET", "history"),
        ("GET", "credits"),
        ("GET", "projects"),
        ("POST", "cancel"),
    ]:
        response = api.call(method, target, headers=headers, json_body={})
        assert response.status_code == 401, (target, response.json)
        assert response.json["error"]["code"] == "unauthorized"


# --- status (GET), history, cancel ----------------------------------------------------------------


def test_status_returns_the_callers_job_and_404_for_anyone_else(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    owner, other = make_user(balance=10), make_user(balance=10)
    job = api.post("generate", user=owner, json_body={"kind": "story"}).json["job"]
    mine = api.get("status", user=owner, query={"job_id": job["id"]})
    assert mine.status_code == 200 and mine.json["job"]["id"] == job["id"]
    theirs = api.get("status", user=other, query={"job_id": job["id"]})
    assert theirs.status_code == 404
    assert theirs.json["error"]["code"] == "not_found"
    missing = api.get("status", user=owner, query={"job_id": str(uuid.uuid4())})
    assert missing.status_code == 404
    bad = api.get("status", user=owner, query={"job_id": "nope"})
    assert bad.status_code == 400


def test_history_pages_newest_first_and_filters_by_status(api, conn, make_user):
    add_kind(conn, "story", cost=1)
    user, other = make_user(balance=10), make_user(balance=10)
    ids = [
        api.post("generate", user=user, json_body={"kind": "story"}).json["job"]["id"]
        for _ in range(5)
    ]
    api.post("generate", user=other, json_body={"kind": "story"})
    api.post("cancel", user=user, json_body={"job_id": ids[0]})

    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("history", user=user, query=query)
        assert page.status_code == 200
        seen += [job["id"] for job in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    cancelled = api.get("history", user=user, query={"status": "cancelled"}).json
    assert [job["id"] for job in cancelled["items"]] == [ids[0]]
    assert api.get("history", user=user, query={"limit": 101}).status_code == 400
    assert api.get("history", user=user, query={"status": "lost"}).status_code == 400
    foreign_cursor = api.get("history", user=user, query={"cursor": str(uuid.uuid4())})
    assert foreign_cursor.status_code == 400


def test_cancel_refunds_once_and_404s_for_another_user(api, conn, make_user):
    add_kind(conn, "story", cost=5)
    user, other = make_user(balance=10), make_user(balance=10)
    job = api.post("generate", user=user, json_body={"kind": "story"}).json["job"]
    assert api.post("cancel", user=other, json_body={"job_id": job["id"]}).status_code == 404
    cancelled = api.post("cancel", user=user, json_body={"job_id": job["id"]})
    assert cancelled.status_code == 200
    assert cancelled.json["job"]["status"] == "cancelled"
    assert cancelled.json["balance"] == 10
    again = api.post("cancel", user=user, json_body={"job_id": job["id"]})
    assert again.status_code == 200 and again.json["balance"] == 10
    assert balance(conn, user) == 10


# --- projects, steps, credits ---------------------------------------------------------------------


def test_projects_create_get_and_list(api, make_user):
    user, other = make_user(), make_user()
    created = api.post("projects", user=user, json_body={"title": "  Picture book  "})
    assert created.status_code == 201
    project = created.json["project"]
    assert project["title"] == "Picture book"
    second = api.post("projects", user=user, json_body={"title": "Second"}).json["project"]

    one = api.get("projects", user=user, query={"project_id": project["id"]})
    assert one.status_code == 200
    assert one.json["project"]["steps"] == [] and one.json["project"]["jobs_count"] == 0
    assert api.get("projects", user=other, query={"project_id": project["id"]}).status_code == 404

    page = api.get("projects", user=user, query={"limit": 1}).json
    assert [p["id"] for p in page["items"]] == [second["id"]]
    rest = api.get("projects", user=user, query={"cursor": page["next_cursor"]}).json
    assert [p["id"] for p in rest["items"]] == [project["id"]] and rest["next_cursor"] is None
    assert api.get("projects", user=other).json["items"] == []

    for title in ("", " ", "x" * 201):
        assert api.post("projects", user=user, json_body={"title": title}).status_code == 400


def test_steps_upsert_and_list(api, make_user):
    user, other = make_user(), make_user()
    project = api.post("projects", user=user, json_body={"title": "p"}).json["project"]
    step = {"project_id": project["id"], "step_number": 2, "data": {"text": "hi"}}
    created = api.post("steps", user=user, json_body={**step, "skip_reason": "later"})
    assert created.status_code == 201 and created.json["created"] is True
    updated = api.post(
        "steps",
        user=user,
        json_body={**step, "data": {"text": "bye"}, "completed_at": "2026-01-02T03:04:05Z"},
    )
    assert updated.status_code == 200 and updated.json["created"] is False
    assert updated.json["step"]["data"] == {"text": "bye"}
    assert updated.json["step"]["skip_reason"] == "later"  # null keeps the old value

    listed = api.get("steps", user=user, query={"project_id": project["id"]})
    assert listed.status_code == 200
    assert [s["step_number"] for s in listed.json["steps"]] == [2]
    assert api.get("steps", user=other, query={"project_id": project["id"]}).status_code == 404
    assert api.post("steps", user=other, json_body=step).status_code == 404
    too_big = {**step, "data": {"x": "y" * 70_000}}
    assert api.post("steps", user=user, json_body=too_big).status_code == 400
    assert api.post("steps", user=user, json_body={**step, "step_number": 1001}).status_code == 400


def test_credits_shows_balance_and_ledger_pages(api, conn, make_user):
    add_kind(conn, "story", cost=3)
    user = make_user(balance=10)
    job = api.post("generate", user=user, json_body={"kind": "story"}).json["job"]
    api.post("cancel", user=user, json_body={"job_id": job["id"]})

    first = api.get("credits", user=user, query={"limit": 2})
    assert first.status_code == 200
    assert first.json["balance"] == 10
    entries = first.json["entries"]
    assert [e["entry_type"] for e in entries] == ["refund", "charge"]
    assert set(entries[0]) == {
        "id",
        "job_id",
        "entry_type",
        "amount",
        "balance_after",
        "reason",
        "created_at",
    }
    rest = api.get("credits", user=user, query={"cursor": first.json["next_cursor"]}).json
    assert [e["entry_type"] for e in rest["entries"]] == ["grant"]
    assert rest["next_cursor"] is None


# --- maintenance --------------------------------------------------------------------------------


def test_maintenance_needs_its_token_and_reaps(api, conn, make_user):
    add_kind(conn, "story", cost=5, max_attempts=1)
    user = make_user(balance=5)
    job = api.post("generate", user=user, json_body={"kind": "story"}).json["job"]
    conn.execute(
        "update public.jobs set status = 'processing', attempt = 1, started_at = now(),"
        " lease_expires_at = now() - interval '1 minute' where id = %s",
        (job["id"],),
    )
    for header in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {token(user)}"},
    ):
        refused = api.post("maintenance", headers=header)
        assert refused.status_code == 401
    response = api.post("maintenance", headers={"Authorization": f"Bearer {MAINTENANCE_TOKEN}"})
    assert response.status_code == 200
    assert response.json == {
        "reaped": 1,
        "retried": 0,
        "redispatched": 0,
        "unstarted_failed": 0,
        "expired_credits": 0,
        "events_delivered": 0,
        "events_failed": 0,
    }
    assert balance(conn, user) == 5


# --- dispatch failure -----------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["closed port", "answers 500"])
def test_dispatch_failure_fails_and_refunds_the_job_with_503(
    monkeypatch, db_url, conn, make_user, pipeline
):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=5)
    with fake_server(lambda request: (500, {"error": "down"})) as server:
        url = closed_port_url() if pipeline == "closed port" else server.url
        with http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=url) as api:
            response = api.post("generate", user=user, json_body={"kind": "story"})
    assert response.status_code == 503
    assert response.json["error"]["code"] == "pipeline_unavailable"
    job = response.json["job"]
    assert job["status"] == "failed" and job["refunded"] == 5
    assert balance(conn, user) == 5
    refunds = conn.execute(
        "select count(*) as n from public.credit_ledger"
        " where job_id = %s and entry_type = 'refund'",
        (job["id"],),
    ).fetchone()["n"]
    assert refunds == 1


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_preflight_for_an_allowed_origin(api):
    for target in TARGETS:
        response = api.call(
            "OPTIONS",
            target,
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert response.status_code == 204, target
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "content-type", "idempotency-key"} <= {
            h.strip() for h in allowed_headers.split(",")
        }


def test_cors_refuses_other_origins(api, make_user):
    preflight = api.call(
        "OPTIONS",
        "generate",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = api.get("history", user=make_user(), headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    allowed = api.get("history", user=make_user(), headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


def test_cors_wildcard(monkeypatch, db_url):
    with http_api(monkeypatch, db_url, CORS_ALLOWED_ORIGINS="*") as api:
        response = api.call(
            "OPTIONS",
            "history",
            headers={"Origin": "https://anything.example", "Access-Control-Request-Method": "GET"},
        )
    assert response.headers["Access-Control-Allow-Origin"] == "*"
