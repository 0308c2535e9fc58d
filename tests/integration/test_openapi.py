"""openapi.yaml is a valid OpenAPI 3.1 document, and real responses of the functions match it.

Every response below comes from functions/main.py (functions-framework test client) against the
real test database; it is validated against the schema openapi.yaml gives for that path, method
and status — so an undocumented status or a field the document does not describe fails here.
"""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.fake_http import closed_port_url, fake_server
from tests.integration.http_helpers import MAINTENANCE_TOKEN, http_api, token
from tests.integration.sqlfns import add_kind

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
SPEC_URI = "urn:credit-jobs:openapi"
REGISTRY = Registry().with_resource(
    SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012)
)
MAINTENANCE = {"Authorization": f"Bearer {MAINTENANCE_TOKEN}"}


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def response_schema_pointer(path: str, method: str, status: int) -> str:
    """JSON pointer (into openapi.yaml) of the JSON schema documented for this response."""
    operation = SPEC["paths"][path].get(method.lower())
    assert operation is not None, f"{method} {path} is not documented"
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which is not documented"
    pointer = f"/paths/{_pointer_escape(path)}/{method.lower()}/responses/{status}"
    if "$ref" in responses[str(status)]:
        pointer = responses[str(status)]["$ref"].removeprefix("#")
    return pointer + "/content/application~1json/schema"


def check(response: Any, path: str, method: str, status: int) -> dict:
    """Assert the status, then validate the JSON body against openapi.yaml; return the body."""
    return _validate(response, status, response_schema_pointer(path, method, status), path)


def _validate(response: Any, status: int, pointer: str, where: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    schema = {"$ref": f"{SPEC_URI}#{pointer}"}
    validator = Draft202012Validator(
        schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(response.json), key=str)
    assert not errors, "\n".join(
        f"{where} {status}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )
    return response.json


def generate(api, user, body: dict, status: int, headers: dict | None = None) -> dict:
    """POST /generate as user, checked against openapi.yaml."""
    response = api.post("generate", user=user, json_body=body, headers=headers)
    return check(response, "/generate", "POST", status)


def exported_targets() -> set[str]:
    """Names of the functions-framework targets in functions/main.py (its decorated functions)."""
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) == "functions_framework.http" for d in node.decorator_list)
    }


@pytest.fixture
def api(monkeypatch, db_url):
    # A real (stand-in) webhook pipeline, so generate starts attempt 1 and callbacks apply.
    with (
        fake_server() as pipeline,
        http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=pipeline.url) as client,
    ):
        yield client


# --- the document ---------------------------------------------------------------------------------


def test_openapi_document_is_valid_openapi_3_1():
    assert SPEC["openapi"].startswith("3.1")
    validate_openapi(SPEC)


def test_every_function_is_described_and_nothing_else():
    assert {path.removeprefix("/") for path in SPEC["paths"]} == exported_targets()


def test_date_times_and_uuids_are_really_checked():
    # Without a date-time checker installed, format: date-time would pass anything.
    assert {"date-time", "uuid"} <= set(Draft202012Validator.FORMAT_CHECKER.checkers)


# --- real responses -------------------------------------------------------------------------------


def test_job_lifecycle_responses_match(api, conn, make_user):
    add_kind(conn, "story", cost=10)
    user = make_user(balance=100)

    job = generate(api, user, {"kind": "story", "params": {"p": "x"}}, 201)["job"]
    replay_headers = {"Idempotency-Key": "order-1"}
    generate(api, user, {"kind": "story"}, 201, replay_headers)
    replayed = generate(api, user, {"kind": "story"}, 200, replay_headers)
    assert replayed["replayed"] is True

    check(api.get("status", user=user, query={"job_id": job["id"]}), "/status", "GET", 200)
    report = {"job_id": job["id"], "attempt": job["attempt"]}
    processing = {**report, "status": "processing", "progress": 40}
    check(api.callback(processing), "/status", "POST", 200)
    completed = {**report, "status": "completed", "result": {"story": "..."}, "credits_used": 8}
    applied = check(api.callback(completed), "/status", "POST", 200)
    assert applied["outcome"] == "applied"
    duplicate = check(api.callback(completed), "/status", "POST", 200)
    assert duplicate["outcome"] == "duplicate"
    check(api.callback({**completed, "attempt": 2}), "/status", "POST", 409)
    doomed = generate(api, user, {"kind": "story"}, 201)["job"]
    failed = {"job_id": doomed["id"], "attempt": doomed["attempt"], "status": "failed"}
    assert check(api.callback(failed), "/status", "POST", 200)["outcome"] == "refunded"

    page = check(api.get("history", user=user, query={"limit": 1}), "/history", "GET", 200)
    assert page["next_cursor"] is not None
    check(
        api.get("history", user=user, query={"cursor": page["next_cursor"], "status": "pending"}),
        "/history",
        "GET",
        200,
    )
    ledger = check(api.get("credits", user=user, query={"limit": 2}), "/credits", "GET", 200)
    check(
        api.get("credits", user=user, query={"cursor": ledger["next_cursor"]}),
        "/credits",
        "GET",
        200,
    )

    pending = replayed["job"]
    cancelled = check(
        api.post("cancel", user=user, json_body={"job_id": pending["id"]}), "/cancel", "POST", 200
    )
    assert cancelled["job"]["status"] == "cancelled"
    check(api.post("cancel", user=user, json_body={"job_id": job["id"]}), "/cancel", "POST", 409)
    check(api.post("maintenance", headers=MAINTENANCE), "/maintenance", "POST", 200)


def test_project_and_step_responses_match(api, conn, make_user):
    user = make_user()
    project = check(
        api.post("projects", user=user, json_body={"title": "Book"}), "/projects", "POST", 201
    )["project"]
    step = {"project_id": project["id"], "step_number": 1, "data": {"outline": "..."}}
    check(api.post("steps", user=user, json_body=step), "/steps", "POST", 201)
    done = {**step, "completed_at": "2026-01-02T03:04:05Z"}
    check(api.post("steps", user=user, json_body=done), "/steps", "POST", 200)
    check(api.get("steps", user=user, query={"project_id": project["id"]}), "/steps", "GET", 200)
    one = check(
        api.get("projects", user=user, query={"project_id": project["id"]}),
        "/projects",
        "GET",
        200,
    )
    assert [s["step_number"] for s in one["project"]["steps"]] == [1]
    check(api.get("projects", user=user, query={"limit": 1}), "/projects", "GET", 200)

    stranger = make_user()
    missing = {"project_id": project["id"]}
    check(api.get("projects", user=stranger, query=missing), "/projects", "GET", 404)
    check(api.get("steps", user=stranger, query=missing), "/steps", "GET", 404)
    check(api.post("steps", user=stranger, json_body=step), "/steps", "POST", 404)


def test_error_responses_match(api, conn, make_user):
    add_kind(conn, "story", cost=10)
    add_kind(conn, "film", cost=500)
    user = make_user(balance=20)

    check(api.post("generate", json_body={"kind": "story"}), "/generate", "POST", 401)
    expired = {"Authorization": f"Bearer {token(user, exp=1)}"}
    check(api.get("credits", headers=expired), "/credits", "GET", 401)
    generate(api, user, {"kind": "nope"}, 400)
    generate(api, user, {"kind": "film"}, 402)
    generate(api, user, {"kinds": "x"}, 400)
    generate(api, user, {"kind": "story", "params": {"text": "x" * 300_000}}, 413)
    key = {"Idempotency-Key": "k"}
    generate(api, user, {"kind": "story"}, 201, key)
    generate(api, user, {"kind": "film"}, 422, key)
    add_kind(conn, "voice", cost=1, max_active_per_user=1)
    generate(api, user, {"kind": "voice"}, 201)
    response = api.post("generate", user=user, json_body={"kind": "voice"})
    assert check(response, "/generate", "POST", 429)["error"]["code"] == "too_many_active_jobs"
    retry_after = SPEC["paths"]["/generate"]["post"]["responses"]["429"]["headers"]["Retry-After"]
    assert re.fullmatch(retry_after["schema"]["pattern"], response.headers["Retry-After"])

    unknown_job = {"job_id": str(uuid.uuid4())}
    check(api.get("status", user=user, query=unknown_job), "/status", "GET", 404)
    check(api.get("status", user=user, query={"job_id": "nope"}), "/status", "GET", 400)
    check(api.post("cancel", user=user, json_body=unknown_job), "/cancel", "POST", 404)
    check(api.get("history", user=user, query={"limit": 0}), "/history", "GET", 400)
    check(api.post("maintenance"), "/maintenance", "POST", 401)

    report = {**unknown_job, "attempt": 1, "status": "processing"}
    check(api.callback(report), "/status", "POST", 404)
    check(api.callback(report, secret="whsec_" + "A" * 43), "/status", "POST", 401)


def test_price_list_and_health_responses_match(api, conn):
    add_kind(conn, "story", cost=10, description="a short story")
    add_kind(conn, "film", cost=500, paused=True, max_active_per_user=2)
    kinds = check(api.get("kinds"), "/kinds", "GET", 200)
    assert [kind["kind"] for kind in kinds["items"]] == ["film", "story"]
    assert [kind["max_active_per_user"] for kind in kinds["items"]] == [2, None]
    check(api.get("health"), "/health", "GET", 200)
    conn.execute("truncate supabase_migrations.schema_migrations")
    assert check(api.get("health"), "/health", "GET", 503)["latest_migration"] is None


def test_method_not_allowed_is_the_documented_error(api, make_user):
    # A method a path does not have has no operation to document it: it answers the Error schema.
    response = api.call("PUT", "generate", user=make_user())
    body = _validate(response, 405, "/components/schemas/Error", "PUT /generate")
    assert body["error"]["code"] == "method_not_allowed"


def test_dispatch_failure_matches(monkeypatch, db_url, conn, make_user):
    add_kind(conn, "story", cost=10)
    user = make_user(balance=10)
    with http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=closed_port_url()) as api:
        body = check(
            api.post("generate", user=user, json_body={"kind": "story"}),
            "/generate",
            "POST",
            503,
        )
    assert body["error"]["code"] == "pipeline_unavailable"
    assert body["job"]["status"] == "failed"
