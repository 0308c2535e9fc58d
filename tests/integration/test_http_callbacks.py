"""Push pipelines end to end in-process: `generate` dispatches to a fake pipeline (a real local
HTTP server), and the pipeline's signed callbacks to `status` move the job."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import uuid

import pytest

from shared.push.webhooks import verify
from tests.fake_http import fake_server
from tests.integration.http_helpers import CALLBACK_URL, WEBHOOK_SECRET, http_api
from tests.integration.sqlfns import add_kind, balance

OTHER_SECRET = "whsec_" + base64.b64encode(b"another test-only secret, 32 b!!").decode()


@pytest.fixture
def pipeline():
    with fake_server() as server:
        yield server


@pytest.fixture
def api(monkeypatch, db_url, pipeline):
    with http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=pipeline.url) as client:
        yield client


@pytest.fixture
def job(api, conn, make_user):
    add_kind(conn, "story", cost=10, max_attempts=2, retry_delay_seconds=0)
    user = make_user(balance=10)
    response = api.post("generate", user=user, json_body={"kind": "story", "params": {"q": 1}})
    assert response.status_code == 201, response.json
    return {**response.json["job"], "user_id": user}


def report(job, **fields):
    return {"job_id": job["id"], "attempt": job["attempt"], **fields}


def test_generate_dispatches_a_signed_payload_to_the_pipeline(job, pipeline):
    assert job["attempt"] == 1 and job["status"] == "pending"
    [request] = pipeline.requests
    verify(WEBHOOK_SECRET, request.body, request.headers)
    assert request.json() == {
        "job_id": job["id"],
        "attempt": 1,
        "kind": "story",
        "params": {"q": 1},
        "project_id": job["project_id"],
        "callback_url": CALLBACK_URL,
    }


def test_processing_then_completed_then_replay(api, job, conn):
    processing = api.callback(report(job, status="processing", progress=40))
    assert processing.status_code == 200, processing.json
    assert processing.json["outcome"] == "applied"
    assert processing.json["job"]["status"] == "processing"
    assert processing.json["job"]["progress"] == 40

    done = report(job, status="completed", result={"story": "..."}, credits_used=7)
    completed = api.callback(done)
    assert completed.status_code == 200
    assert completed.json["outcome"] == "applied"
    assert completed.json["job"]["status"] == "completed"
    assert completed.json["job"]["credits_used"] == 7
    assert balance(conn, job["user_id"]) == 3  # partial capture: 3 of 10 back

    replay = api.callback(done)
    assert replay.status_code == 200 and replay.json["outcome"] == "duplicate"
    late_progress = api.callback(report(job, status="processing", progress=90))
    assert late_progress.status_code == 200 and late_progress.json["outcome"] == "duplicate"
    assert balance(conn, job["user_id"]) == 3

    history = api.get("history", user=job["user_id"]).json["items"]
    assert [(j["id"], j["status"], j["result"]) for j in history] == [
        (job["id"], "completed", {"story": "..."})
    ]


def test_any_json_result_is_stored(api, job):
    completed = api.callback(report(job, status="completed", result=["a", 1, None]))
    assert completed.json["job"]["result"] == ["a", 1, None]


def refund_events(caplog) -> list[dict]:
    events = (json.loads(r.message) for r in caplog.records if r.name == "credit_jobs.events")
    return [e for e in events if e["event"] == "job_refunded"]


def test_failed_refunds_once_and_replay_is_duplicate(api, job, conn, caplog):
    failed = report(job, status="failed", error="model crashed", retryable=False)
    with caplog.at_level(logging.INFO, logger="credit_jobs.events"):
        first = api.callback(failed)
    assert [e["job_id"] for e in refund_events(caplog)] == [job["id"]]
    assert first.status_code == 200 and first.json["outcome"] == "refunded"
    assert first.json["job"]["status"] == "failed"
    assert first.json["job"]["error_message"] == "model crashed"
    assert balance(conn, job["user_id"]) == 10
    again = api.callback(failed)
    assert again.status_code == 200 and again.json["outcome"] == "duplicate"
    assert balance(conn, job["user_id"]) == 10
    late = api.callback(report(job, status="completed", result={}))
    assert late.status_code == 409 and late.json["error"]["code"] == "invalid_transition"


def test_retryable_failure_ends_the_attempt(api, job, conn, caplog):
    failed = report(job, status="failed", error="busy", retryable=True)
    with caplog.at_level(logging.INFO, logger="credit_jobs.events"):
        retried = api.callback(failed)
    assert retried.status_code == 200 and retried.json["outcome"] == "applied"
    assert refund_events(caplog) == []
    assert retried.json["job"]["status"] == "pending"
    assert balance(conn, job["user_id"]) == 0  # still charged: another attempt will run
    assert api.callback(failed).json["outcome"] == "duplicate"
    late = api.callback(report(job, status="processing", progress=50))
    assert late.status_code == 409 and late.json["error"]["code"] == "stale_attempt"


def test_report_for_another_attempt_is_stale(api, job):
    stale = api.callback({**report(job, status="completed"), "attempt": 2})
    assert stale.status_code == 409
    assert stale.json["error"]["code"] == "stale_attempt"


def test_report_for_an_unknown_job_is_404(api):
    missing = api.callback({"job_id": str(uuid.uuid4()), "attempt": 1, "status": "processing"})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"status": "done"},
        {"status": "processing", "progress": 101},
        {"status": "completed", "credits_used": -1},
        {"status": "failed", "error": "x" * 2001},
        {"status": "completed", "unexpected": True},
    ],
)
def test_invalid_reports_are_400(api, job, body):
    response = api.callback(report(job, **body))
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"


def test_unsigned_or_badly_signed_callbacks_are_refused(api, job, conn):
    done = report(job, status="completed", result={})
    cases = {
        "wrong secret": api.callback(done, secret=OTHER_SECRET),
        "old timestamp": api.callback(
            done, timestamp=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)
        ),
        "future timestamp": api.callback(
            done, timestamp=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6)
        ),
        "no signature": api.post("status", json_body=done),
        "bearer is not a signature": api.post("status", json_body=done, user=job["user_id"]),
        "malformed header": api.post(
            "status",
            json_body=done,
            headers={"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "junk"},
        ),
    }
    for case, response in cases.items():
        assert response.status_code == 401, case
        assert response.json["error"]["code"] == "invalid_signature", case
    assert (
        api.get("status", user=job["user_id"], query={"job_id": job["id"]}).json["job"]["status"]
        == "pending"
    )


def test_tampered_body_is_refused(api, job):
    import json

    from shared.push.webhooks import sign

    signed = json.dumps(report(job, status="completed", credits_used=10))
    headers = sign(WEBHOOK_SECRET, "msg_1", signed)
    tampered = signed.replace('"credits_used": 10', '"credits_used": 0')
    response = api.post("status", data=tampered, headers=headers)
    assert response.status_code == 401


def test_secret_rotation_accepts_old_and_new(monkeypatch, db_url, conn, make_user, pipeline):
    add_kind(conn, "story", cost=1)
    user = make_user(balance=5)
    rotating = f"{OTHER_SECRET} {WEBHOOK_SECRET}"
    with http_api(
        monkeypatch,
        db_url,
        PIPELINE="webhook",
        PIPELINE_URL=pipeline.url,
        PIPELINE_WEBHOOK_SECRET=rotating,
    ) as api:
        job = api.post("generate", user=user, json_body={"kind": "story"}).json["job"]
        with_old = api.callback(report(job, status="processing"), secret=WEBHOOK_SECRET)
        with_new = api.callback(report(job, status="processing"), secret=OTHER_SECRET)
    assert with_old.status_code == 200 and with_new.status_code == 200
    # our own dispatch is signed with both, so a pipeline on either secret verifies it
    verify(OTHER_SECRET, pipeline.requests[0].body, pipeline.requests[0].headers)
    verify(WEBHOOK_SECRET, pipeline.requests[0].body, pipeline.requests[0].headers)


def test_prefect_dispatch_creates_a_flow_run_per_attempt(monkeypatch, db_url, conn, make_user):
    add_kind(conn, "story", cost=1)
    add_kind(conn, "voice", cost=1)
    user = make_user(balance=5)
    deployment = str(uuid.uuid4())
    with (
        fake_server(lambda request: (201, {"id": str(uuid.uuid4())})) as prefect,
        http_api(
            monkeypatch,
            db_url,
            PIPELINE="prefect",
            PREFECT_API_URL=prefect.url + "/api",
            PREFECT_DEPLOYMENTS=f"story={deployment}",
            PREFECT_API_KEY="pnu_test",
        ) as api,
    ):
        created = api.post("generate", user=user, json_body={"kind": "story"})
        unmapped = api.post("generate", user=user, json_body={"kind": "voice"})
    assert created.status_code == 201
    job = created.json["job"]
    [request] = prefect.requests
    assert request.path == f"/api/deployments/{deployment}/create_flow_run"
    assert request.headers["authorization"] == "Bearer pnu_test"
    assert request.json() == {
        "parameters": {
            "job_id": job["id"],
            "attempt": 1,
            "kind": "story",
            "params": {},
            "project_id": job["project_id"],
            "callback_url": CALLBACK_URL,
        },
        "idempotency_key": f"{job['id']}:1",
    }
    # a kind with no deployment cannot be dispatched: refunded at once
    assert unmapped.status_code == 503
    assert unmapped.json["job"]["status"] == "failed"
    assert balance(conn, user) == 4
