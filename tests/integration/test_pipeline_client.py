"""The pipeline client (shared.pipeline) against the real `status` function, in-process.

httpx reaches the function through its WSGI app; a transport in front of it drops connections or
answers 503 / 429 for the first tries, to show the retries. The database is real.
"""

from __future__ import annotations

import time

import functions_framework
import httpx
import pytest

from shared.pipeline import AttemptLost, Job, PipelineClient, ReportError, RetryableError, reports
from shared.pipeline import client as pipeline_client
from shared.push.webhooks import verify
from tests.integration.http_helpers import CALLBACK_URL, SOURCE, WEBHOOK_SECRET, http_api
from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    create_job,
    job_row,
    ledger_for_job,
)

COST = 10
FAST_RETRIES = (0.01, 0.01, 0.01)


class Network(httpx.BaseTransport):
    """In front of the status function: records requests; `failures` are answered here first."""

    def __init__(self, app, failures: list[str | int] | None = None) -> None:
        self.app = httpx.WSGITransport(app=app)
        self.failures = list(failures or [])
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "drop":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(failure, json={"error": {"code": "unavailable"}})
        return self.app.handle_request(request)

    def reports(self) -> list[dict]:
        return [httpx.Response(200, content=r.content).json() for r in self.requests]


@pytest.fixture
def network(monkeypatch, db_url):
    with http_api(monkeypatch, db_url):
        yield Network(functions_framework.create_app(target="status", source=SOURCE))


@pytest.fixture
def client(network):
    pipeline = PipelineClient(
        WEBHOOK_SECRET, http=httpx.Client(transport=network), retry_delays=FAST_RETRIES
    )
    yield pipeline
    pipeline.close()


@pytest.fixture
def every_progress(monkeypatch):
    """Send every progress() call, however close together."""
    monkeypatch.setattr(pipeline_client, "PROGRESS_MIN_SECONDS", 0)


@pytest.fixture
def user(make_user):
    return make_user(balance=100)


def dispatched(conn, user, kind: str = "story", **kind_columns) -> Job:
    """A pushed job as its pipeline receives it (charged, attempt 1 dispatched)."""
    add_kind(conn, kind, COST, **kind_columns)
    job = create_job(conn, user, kind, params={"prompt": "a fox"}, pipeline="webhook")
    return Job.from_dispatch(
        {**job, "job_id": job["id"], "callback_url": CALLBACK_URL, "project_id": None}
    )


def test_a_decorated_handler_reports_processing_progress_and_its_result(
    conn, client, network, user, every_progress
):
    job = dispatched(conn, user)

    @reports(client=client)
    def story(attempt):
        assert attempt.params == {"prompt": "a fox"}
        attempt.progress(40)
        attempt.credits_used = 8
        return {"story": "Once upon a time there was a fox."}

    assert story(job) == {"story": "Once upon a time there was a fox."}

    assert [(r["status"], r.get("progress")) for r in network.reports()] == [
        ("processing", None),
        ("processing", 40.0),
        ("completed", None),
    ]
    for request in network.requests:
        verify(WEBHOOK_SECRET, request.content, dict(request.headers))
    row = job_row(conn, job.job_id)
    assert (row["status"], row["result"], row["credits_used"]) == (
        "completed",
        {"story": "Once upon a time there was a fox."},
        8,
    )
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST), ("refund", 2)]


def test_a_raising_handler_fails_the_job_and_refunds_it(conn, client, user):
    job = dispatched(conn, user, max_attempts=2)

    @reports(client=client)
    def broken(attempt):
        raise KeyError("prompt")

    with pytest.raises(KeyError):
        broken(job)
    row = job_row(conn, job.job_id)
    assert (row["status"], row["error_message"]) == ("failed", "KeyError: 'prompt'")
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST), ("refund", COST)]
    assert balance(conn, user) == 100


def test_a_retryable_error_gives_the_job_another_attempt(conn, client, user):
    job = dispatched(conn, user, max_attempts=2)

    with pytest.raises(RetryableError), client.attempt(job):
        raise RetryableError("upstream rate limit")

    row = job_row(conn, job.job_id)
    assert (row["status"], row["attempt"], row["dispatched_at"]) == ("pending", 1, None)
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST)]


def test_transient_failures_are_retried_with_the_same_message_id(conn, client, network, user):
    job = dispatched(conn, user)
    network.failures = ["drop", 503, 429]

    answered = client.report(job, "completed", result={"ok": True})

    assert answered["status"] == "completed"
    assert len(network.requests) == 4
    assert len({r.headers["webhook-id"] for r in network.requests}) == 1
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST)]


def test_a_report_gives_up_after_its_retries(conn, client, network, user):
    job = dispatched(conn, user)
    network.failures = [503] * (len(FAST_RETRIES) + 1)

    with pytest.raises(ReportError) as refused:
        client.report(job, "processing")
    assert not isinstance(refused.value, AttemptLost)
    assert "HTTP 503" in str(refused.value)
    assert len(network.requests) == len(FAST_RETRIES) + 1
    assert job_row(conn, job.job_id)["status"] == "pending"


def test_a_repeated_report_is_a_success(conn, client, user):
    job = dispatched(conn, user)
    client.report(job, "failed", error="GPU lost")
    assert client.report(job, "failed", error="GPU lost")["status"] == "failed"
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST), ("refund", COST)]


def test_a_report_for_an_old_attempt_means_stop(conn, client, user):
    job = dispatched(conn, user, max_attempts=2)
    call(conn, "fail_job", job_id=job.job_id, attempt=1, error="stalled", retryable=True)
    call(conn, "take_jobs_to_dispatch", limit=10)  # attempt 2 starts

    with pytest.raises(AttemptLost) as lost:
        client.report(job, "completed", result={"late": True})
    assert (lost.value.status, lost.value.code) == (409, "stale_attempt")
    assert job_row(conn, job.job_id)["attempt"] == 2


def test_a_job_cancelled_by_its_user_stops_the_run_at_its_next_progress(
    conn, client, user, every_progress
):
    job = dispatched(conn, user)
    done = []

    @reports(client=client)
    def story(attempt):
        call(conn, "cancel_job", job_id=job.job_id, user_id=user)
        attempt.progress(50)
        done.append("after cancel")

    with pytest.raises(AttemptLost) as lost:
        story(job)
    assert lost.value.code == "invalid_transition"
    assert done == []
    assert job_row(conn, job.job_id)["status"] == "cancelled"
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST), ("refund", COST)]


def test_heartbeats_carry_the_latest_progress_and_keep_frequent_progress_in_check(
    conn, client, network, user
):
    job = dispatched(conn, user)

    with client.attempt(job, heartbeat_seconds=0.1) as attempt:
        for percent in range(1, 101):
            attempt.progress(percent)
            time.sleep(0.005)
        time.sleep(0.3)

    reports = network.reports()
    beats = [r.get("progress") for r in reports if r["status"] == "processing"]
    assert 3 <= len(beats) < 20  # the entry report and heartbeats, not one per progress() call
    assert beats[-1] == 100.0
    assert reports[-1]["status"] == "completed"
    assert job_row(conn, job.job_id)["status"] == "completed"


def test_a_result_the_api_cannot_take_fails_and_refunds_the_job(conn, client, user):
    job = dispatched(conn, user)

    with pytest.raises(TypeError), client.attempt(job) as attempt:
        attempt.result = {"when": object()}

    row = job_row(conn, job.job_id)
    assert row["status"] == "failed"
    assert "not JSON serializable" in row["error_message"]
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST), ("refund", COST)]


def test_credits_used_above_the_price_fails_and_refunds_the_job(conn, client, user):
    job = dispatched(conn, user)

    with pytest.raises(ReportError) as refused, client.attempt(job) as attempt:
        attempt.credits_used = COST + 1
    assert (refused.value.status, refused.value.code) == (400, "invalid_argument")
    assert job_row(conn, job.job_id)["status"] == "failed"
    assert ledger_for_job(conn, job.job_id) == [("charge", -COST), ("refund", COST)]


def test_a_long_error_is_cut_to_what_the_api_takes(conn, client, user):
    job = dispatched(conn, user)
    client.report(job, "failed", error="x" * 5000)
    assert len(job_row(conn, job.job_id)["error_message"]) == 2000


def test_a_wrong_secret_is_refused_and_nothing_is_worked_on(conn, network, user):
    job = dispatched(conn, user)
    stranger = PipelineClient(
        "whsec_" + "A" * 43 + "=", http=httpx.Client(transport=network), retry_delays=()
    )
    ran = []

    with pytest.raises(ReportError) as refused, stranger.attempt(job):
        ran.append(True)
    assert (refused.value.status, refused.value.code) == (401, "invalid_signature")
    assert ran == []
    assert job_row(conn, job.job_id)["status"] == "pending"


def test_a_client_needs_a_secret(monkeypatch):
    monkeypatch.delenv("PIPELINE_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="PIPELINE_WEBHOOK_SECRET"):
        PipelineClient()
