"""What `generate` answers per dispatch outcome is true, and maintenance converges each case.

- refused (connection refused, an error status): failed and refunded now -> 503 with the job;
  if the refund cannot be committed (database outage) -> 202, the job pending and paid
  (tests/integration/test_db_port.py).
- uncertain (a timeout: the pipeline may have the job) -> 202, the job pending and paid.
Either way a pending job is dispatched again by maintenance (same attempt) or, at its kind's
dispatch deadline, failed and refunded; and a kind may name its own pipeline.
"""

from __future__ import annotations

import time

import httpx
import pytest

from shared.core.db import PostgresDatabase, close_pools
from shared.push import dispatch
from shared.push.dispatch import Pipelines, PrefectDispatcher, WebhookDispatcher
from shared.push.maintenance import run_maintenance
from tests.fake_http import fake_server
from tests.integration.http_helpers import CALLBACK_URL, WEBHOOK_SECRET, http_api
from tests.integration.sqlfns import add_kind, balance, job_row, ledger_for_job


def entries(conn, job_id) -> list[str]:
    return [entry_type for entry_type, _ in ledger_for_job(conn, job_id)]


def converge(conn, db_url: str, pipeline_url: str, job_id, *, redispatched: int = 1) -> dict:
    """Maintenance after the lease (dispatch again), then after the deadline (refund)."""
    pipelines = Pipelines(
        "webhook", {"webhook": WebhookDispatcher(pipeline_url, WEBHOOK_SECRET)}, CALLBACK_URL
    )
    db = PostgresDatabase(db_url)
    try:
        conn.execute("update public.jobs set lease_expires_at = now() where id = %s", (job_id,))
        time.sleep(0.01)
        assert run_maintenance(db, pipelines)["redispatched"] == redispatched
        conn.execute(
            "update public.jobs set dispatched_at = now() - interval '1 day' where id = %s",
            (job_id,),
        )
        assert run_maintenance(db, pipelines)["reaped"] == 1
    finally:
        pipelines.close()
        close_pools()
    return job_row(conn, job_id)


def test_a_dispatch_timeout_is_uncertain_202_and_the_late_pipeline_completes_it(
    monkeypatch, db_url, conn, make_user
):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=5)
    monkeypatch.setattr(dispatch, "DISPATCH_TIMEOUT", httpx.Timeout(0.3))

    def accept_slowly(request):
        time.sleep(1.0)
        return 202, {"ok": True}

    with (
        fake_server(accept_slowly) as pipeline,
        http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=pipeline.url) as api,
    ):
        response = api.post("generate", user=user, json_body={"kind": "story"})
        assert response.status_code == 202, response.json
        job = response.json["job"]
        assert job["status"] == "pending" and entries(conn, job["id"]) == ["charge"]
        done = api.callback({"job_id": job["id"], "attempt": 1, "status": "completed"})
        assert done.status_code == 200
    assert job_row(conn, job["id"])["status"] == "completed"
    assert entries(conn, job["id"]) == ["charge"] and balance(conn, user) == 0


def test_an_uncertain_dispatch_nobody_answers_is_refunded_at_the_deadline(
    monkeypatch, db_url, conn, make_user
):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=5)
    with (
        fake_server(lambda request: (504, {"error": "gateway timeout"})) as pipeline,
        http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=pipeline.url) as api,
    ):
        response = api.post("generate", user=user, json_body={"kind": "story"})
    assert response.status_code == 202
    job = response.json["job"]
    with fake_server(lambda request: (504, {"error": "gateway timeout"})) as pipeline:
        final = converge(conn, db_url, pipeline.url, job["id"], redispatched=0)
    assert final["status"] == "failed"
    assert entries(conn, job["id"]) == ["charge", "refund"] and balance(conn, user) == 5


# --- a pipeline per kind --------------------------------------------------------------------------


def test_each_kind_is_started_the_way_it_names(monkeypatch, db_url, conn, make_user):
    """Issue 9 finding 6: PIPELINE is the default; job_kinds.pipeline wins per kind."""
    add_kind(conn, "story", cost=1, pipeline="webhook")
    add_kind(conn, "video", cost=1)
    add_kind(conn, "film", cost=1, pipeline="prefect")
    user = make_user(balance=3)
    with (
        fake_server() as pipeline,
        http_api(monkeypatch, db_url, PIPELINE="queue", PIPELINE_URL=pipeline.url) as api,
    ):
        pushed = api.post("generate", user=user, json_body={"kind": "story"})
        queued = api.post("generate", user=user, json_body={"kind": "video"})
        unconfigured = api.post("generate", user=user, json_body={"kind": "film"})
        dispatched = [request.json()["kind"] for request in pipeline.requests]
    assert pushed.status_code == 201 and dispatched == ["story"]
    assert job_row(conn, pushed.json["job"]["id"])["pushed"]
    assert queued.status_code == 201 and not job_row(conn, queued.json["job"]["id"])["pushed"]
    assert unconfigured.status_code == 503
    assert "PREFECT_API_URL" in unconfigured.json["error"]["message"]
    assert unconfigured.json["job"]["status"] == "failed"
    assert balance(conn, user) == 1


def test_a_queue_kind_is_not_pushed_even_when_the_default_pushes(
    monkeypatch, db_url, conn, make_user
):
    add_kind(conn, "video", cost=1, pipeline="queue")
    user = make_user(balance=1)
    with (
        fake_server() as pipeline,
        http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=pipeline.url) as api,
    ):
        response = api.post("generate", user=user, json_body={"kind": "video"})
        assert response.status_code == 201 and pipeline.requests == []
    claimed = conn.execute("select public.claim_jobs(p_worker_id => 'w')").fetchone()
    assert [job["id"] for job in claimed["claim_jobs"]["jobs"]] == [response.json["job"]["id"]]


@pytest.mark.parametrize("pipeline", [None, "kafka"])
def test_create_job_refuses_an_unknown_pipeline_name(conn, make_user, pipeline):
    add_kind(conn, "story", cost=1)
    user = make_user(balance=1)
    if pipeline is None:
        result = conn.execute(
            "select public.create_job(p_user_id => %s, p_kind => 'story')", (user,)
        ).fetchone()["create_job"]
        assert result["pipeline"] == "queue"
        return
    with pytest.raises(Exception, match="pipeline must be one of"):
        conn.execute(
            "select public.create_job(p_user_id => %s, p_kind => 'story', p_pipeline => %s)",
            (user, pipeline),
        )


def test_prefect_asking_to_try_again_gets_the_same_flow_run_request_again(monkeypatch):
    monkeypatch.setattr(dispatch, "PREFECT_RETRY_DELAYS", (0.01, 0.01, 0.01))
    answers = [(503, {}), (429, {}), (201, {"id": "flow-run"})]
    job = {"id": "00000000-0000-4000-8000-000000000001", "attempt": 1, "kind": "story"}
    with fake_server(lambda request: answers.pop(0)) as prefect:
        PrefectDispatcher(prefect.url, {"story": "deployment"}).dispatch(job, CALLBACK_URL)
        # a Prefect that stays busy: refused after the retries, so `generate` refunds
        answers.extend([(503, {})] * 4)
        with pytest.raises(dispatch.DispatchError) as refused:
            PrefectDispatcher(prefect.url, {"story": "deployment"}).dispatch(job, CALLBACK_URL)
    assert refused.value.refused
    assert len(prefect.requests) == 3 + 4
    assert {r.json()["idempotency_key"] for r in prefect.requests} == {f"{job['id']}:1"}
