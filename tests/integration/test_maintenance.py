"""Self-healing push mode and reaping through `run_maintenance` (issue 4), on real PostgreSQL.

A function instance that dies after create_job committed (charged, attempt 1 started) but before
it dispatched leaves a pending job nobody works on. These tests create exactly that state with
create_job(p_pipeline => 'webhook') and no dispatch, then let maintenance heal it through a real
local HTTP pipeline (WebhookDispatcher, signed).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from shared.core.db import PostgresDatabase, close_pools
from shared.migrate import DEFAULT_DIR
from shared.push import webhooks
from shared.push.dispatch import Pipelines, WebhookDispatcher
from shared.push.maintenance import REAP_BATCH, run_maintenance
from tests.integration.sqlfns import (
    add_kind,
    balance,
    call,
    claim,
    create_job,
    discrepancies,
    expire_lease,
    job_row,
    ledger_for_job,
    race,
    raises_error,
)

pytestmark = pytest.mark.integration

CALLBACK_URL = "http://callback.invalid/status"
COST = 10


class RecordingPipeline:
    """A real HTTP pipeline on 127.0.0.1 that records verified dispatches and answers `status`."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.status = 202
        self.received: list[dict] = []
        pipeline = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhooks.verify(pipeline.secret, body, dict(self.headers))
                pipeline.received.append(
                    {"message_id": self.headers["webhook-id"], **json.loads(body)}
                )
                self.send_response(pipeline.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/dispatch"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pipeline() -> Iterator[RecordingPipeline]:
    recording = RecordingPipeline("whsec_" + base64.b64encode(os.urandom(24)).decode())
    yield recording
    recording.close()


@pytest.fixture
def pipelines(pipeline: RecordingPipeline) -> Iterator[Pipelines]:
    pushed = Pipelines(
        "webhook", {"webhook": WebhookDispatcher(pipeline.url, pipeline.secret)}, CALLBACK_URL
    )
    yield pushed
    pushed.close()


@pytest.fixture
def db(db_url: str) -> Iterator[PostgresDatabase]:
    yield PostgresDatabase(db_url)
    close_pools()


@pytest.fixture
def story(conn: psycopg.Connection) -> str:
    kind = add_kind(conn, "story", COST, max_attempts=2, lease_seconds=60)
    conn.execute(
        "update public.job_kinds set dispatch_timeout_seconds = 600 where kind = %s", (kind,)
    )
    return kind


def pushed_job(conn: psycopg.Connection, user_id, kind: str) -> dict:
    """create_job as `generate` does in push mode, then no dispatch: the instance died here."""
    return create_job(conn, user_id, kind, params={"topic": "crash"}, pipeline="webhook")


def pass_dispatch_deadline(conn: psycopg.Connection, job_id) -> None:
    conn.execute(
        "update public.jobs set dispatched_at = now() - interval '601 seconds',"
        " lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )


def test_crash_after_charge_is_redispatched_with_the_same_attempt(
    conn, db, pipelines, pipeline, make_user, story
):
    user = make_user(balance=100)
    job = pushed_job(conn, user, story)
    first_dispatch = job_row(conn, job["id"])["dispatched_at"]

    # Within its lease the pipeline may still answer: nothing to do yet.
    assert run_maintenance(db, pipelines) == {
        "reaped": 0,
        "retried": 0,
        "redispatched": 0,
        "unstarted_failed": 0,
        "expired_credits": 0,
        "events_delivered": 0,
        "events_failed": 0,
    }
    expire_lease(conn, job["id"])
    assert run_maintenance(db, pipelines)["redispatched"] == 1
    # Dispatched again, and only once: its lease runs again.
    assert run_maintenance(db, pipelines)["redispatched"] == 0

    [dispatch] = pipeline.received
    assert dispatch["job_id"] == job["id"]
    assert dispatch["attempt"] == 1  # same attempt: Prefect's key "<job_id>:1" is unchanged
    assert dispatch["message_id"] == f"job_{job['id']}_1"
    assert dispatch["callback_url"] == CALLBACK_URL
    assert dispatch["params"] == {"topic": "crash"}
    row = job_row(conn, job["id"])
    assert (row["status"], row["attempt"]) == ("pending", 1)
    assert row["dispatched_at"] == first_dispatch  # the dispatch deadline keeps counting
    assert ledger_for_job(conn, job["id"]) == [("charge", -COST)]

    # The pipeline answers the re-dispatched attempt: the job completes, charged once.
    call(conn, "complete_job", job_id=job["id"], attempt=1, result={"text": "done"})
    assert balance(conn, user) == 100 - COST
    assert ledger_for_job(conn, job["id"]) == [("charge", -COST)]


def test_past_the_dispatch_deadline_the_job_is_failed_and_refunded_once(
    conn, db, pipelines, pipeline, make_user, story
):
    user = make_user(balance=100)
    job = pushed_job(conn, user, story)
    pass_dispatch_deadline(conn, job["id"])

    assert run_maintenance(db, pipelines) == {
        "reaped": 1,
        "retried": 0,
        "redispatched": 0,
        "unstarted_failed": 0,
        "expired_credits": 0,
        "events_delivered": 0,
        "events_failed": 0,
    }
    assert run_maintenance(db, pipelines)["reaped"] == 0

    row = job_row(conn, job["id"])
    assert (row["status"], row["refunded"]) == ("failed", COST)
    assert "never picked up" in row["error_message"]
    assert ledger_for_job(conn, job["id"]) == [("charge", -COST), ("refund", COST)]
    assert balance(conn, user) == 100
    assert pipeline.received == []
    assert discrepancies(conn) == []


def test_concurrent_maintenance_runs_refund_a_job_once(conn, db_url, make_user, story):
    user = make_user(balance=100)
    jobs = [pushed_job(conn, user, story) for _ in range(3)]
    for job in jobs:
        pass_dispatch_deadline(conn, job["id"])

    def take(c: psycopg.Connection, _: int) -> str:
        return str(call(c, "take_jobs_to_dispatch", limit=100)["failed"])

    results = race(db_url, 8, take)
    assert sum(int(failed) * times for failed, times in results.items()) == 3
    for job in jobs:
        assert ledger_for_job(conn, job["id"]) == [("charge", -COST), ("refund", COST)]
    assert balance(conn, user) == 100
    assert discrepancies(conn) == []


def test_a_retried_push_job_gets_its_next_attempt_dispatched(
    conn, db, pipelines, pipeline, make_user, story
):
    user = make_user(balance=100)
    job = pushed_job(conn, user, story)
    retried = call(conn, "fail_job", job_id=job["id"], attempt=1, error="429", retryable=True)
    assert retried["outcome"] == "retried"

    assert run_maintenance(db, pipelines)["redispatched"] == 1
    [dispatch] = pipeline.received
    assert (dispatch["job_id"], dispatch["attempt"]) == (job["id"], 2)
    row = job_row(conn, job["id"])
    assert (row["status"], row["attempt"]) == ("pending", 2)
    # the old attempt is fenced off
    with raises_error("stale_attempt"):
        call(conn, "complete_job", job_id=job["id"], attempt=1, result={})


def test_queue_jobs_are_never_pushed_and_push_jobs_never_claimed(
    conn, db, pipelines, pipeline, make_user, story
):
    user = make_user(balance=100)
    queued = create_job(conn, user, story)
    pushed = pushed_job(conn, user, story)
    call(conn, "fail_job", job_id=pushed["id"], attempt=1, error="429", retryable=True)

    # A worker claims the queue job only; the retried push job (dispatched_at null) is not its.
    assert [j["id"] for j in claim(conn, [story], limit=10)] == [queued["id"]]
    call(conn, "fail_job", job_id=queued["id"], attempt=1, error="429", retryable=True)
    # Maintenance pushes the push job only; the retried queue job waits for a worker.
    assert run_maintenance(db, pipelines)["redispatched"] == 1
    assert [d["job_id"] for d in pipeline.received] == [pushed["id"]]
    assert [j["id"] for j in claim(conn, [story], limit=10)] == [queued["id"]]


def test_a_failed_redispatch_is_left_for_the_next_run(
    conn, db, pipelines, pipeline, make_user, story
):
    user = make_user(balance=100)
    job = pushed_job(conn, user, story)
    expire_lease(conn, job["id"])
    pipeline.status = 503
    assert run_maintenance(db, pipelines)["redispatched"] == 0
    assert job_row(conn, job["id"])["status"] == "pending"

    pipeline.status = 202
    expire_lease(conn, job["id"])
    assert run_maintenance(db, pipelines)["redispatched"] == 1
    assert [d["attempt"] for d in pipeline.received] == [1, 1]
    assert ledger_for_job(conn, job["id"]) == [("charge", -COST)]


def test_a_paused_kind_is_not_redispatched_but_still_ends_at_its_deadline(
    conn, db, pipelines, pipeline, make_user, story
):
    user = make_user(balance=100)
    job = pushed_job(conn, user, story)
    assert call(conn, "pause_job_kind", kind=story, paused=True)["paused"] is True
    expire_lease(conn, job["id"])
    assert run_maintenance(db, pipelines)["redispatched"] == 0

    pass_dispatch_deadline(conn, job["id"])
    assert run_maintenance(db, pipelines)["reaped"] == 1
    assert ledger_for_job(conn, job["id"]) == [("charge", -COST), ("refund", COST)]
    assert pipeline.received == []
    with raises_error("unknown_kind"):
        create_job(conn, user, story)
    assert call(conn, "pause_job_kind", kind=story, paused=False)["paused"] is False
    assert create_job(conn, user, story)["status"] == "pending"


def test_maintenance_reaps_stalled_workers(conn, db, pipelines, make_user):
    user = make_user(balance=100)
    again = add_kind(conn, "again", COST, max_attempts=2)
    once = add_kind(conn, "once", COST, max_attempts=1)
    retried = create_job(conn, user, again)
    ended = create_job(conn, user, once)
    claim(conn, [again, once], limit=2)
    expire_lease(conn, retried["id"])
    expire_lease(conn, ended["id"])

    assert run_maintenance(db, pipelines) == {
        "reaped": 2,
        "retried": 1,
        "redispatched": 0,
        "unstarted_failed": 0,
        "expired_credits": 0,
        "events_delivered": 0,
        "events_failed": 0,
    }
    assert job_row(conn, retried["id"])["status"] == "pending"
    assert ledger_for_job(conn, retried["id"]) == [("charge", -COST)]
    assert job_row(conn, ended["id"])["status"] == "failed"
    assert ledger_for_job(conn, ended["id"]) == [("charge", -COST), ("refund", COST)]


def test_every_reaper_takes_batches_of_reap_stalled_jobs_default(conn):
    """maintenance's REAP_BATCH is reap_stalled_jobs' default, which the pg_cron job calls
    (tests/acceptance/test_pg_cron.py checks its command)."""
    arguments = conn.execute(
        "select pg_get_function_arguments('public.reap_stalled_jobs(integer)'::regprocedure) as a"
    ).fetchone()["a"]
    assert arguments == f"p_limit integer DEFAULT {REAP_BATCH}"


ADMIN_DIR = DEFAULT_DIR.parent / "admin"


def commented_statement(file: str, first_line: str) -> str:
    """A runbook statement shipped commented out (it writes), uncommented as an admin would."""
    lines = (ADMIN_DIR / file).read_text().splitlines()
    start = lines.index(f"-- {first_line}")
    statement = []
    for line in lines[start:]:
        statement.append(line.removeprefix("-- "))
        if line.endswith(";"):
            return "\n".join(statement)
    raise AssertionError(f"{first_line!r} does not end in {file}")


def test_stuck_workers_runbook_groups_stalled_jobs_by_worker(conn, make_user, story):
    user = make_user(balance=100)
    jobs = [create_job(conn, user, story) for _ in range(2)]
    claim(conn, [story], limit=2)
    for job in jobs:
        expire_lease(conn, job["id"])

    [worker] = conn.execute((ADMIN_DIR / "stuck_workers.sql").read_text()).fetchall()
    assert (worker["worker_id"], worker["stalled_jobs"]) == ("test-worker", 2)
    assert sorted(str(j) for j in worker["job_ids"]) == sorted(j["id"] for j in jobs)


def test_retry_failed_job_runbook_creates_one_new_paid_job(conn, make_user, story):
    user = make_user(balance=100)
    failed = create_job(conn, user, story, params={"topic": "again"})
    claim(conn, [story])
    call(conn, "fail_job", job_id=failed["id"], attempt=1, error="boom", retryable=False)
    retry = commented_statement("retry_failed_job.sql", "select public.create_job(").replace(
        "00000000-0000-0000-0000-000000000000", failed["id"]
    )

    [first] = conn.execute(retry).fetchall()
    [second] = conn.execute(retry).fetchall()

    new_job = first["create_job"]["job"]
    assert (first["create_job"]["replayed"], second["create_job"]["replayed"]) == (False, True)
    assert second["create_job"]["job"]["id"] == new_job["id"] != failed["id"]
    assert (new_job["kind"], new_job["params"], new_job["status"]) == (
        story,
        {"topic": "again"},
        "pending",
    )
    assert ledger_for_job(conn, new_job["id"]) == [("charge", -COST)]
    assert balance(conn, user) == 100 - COST  # the failed job was refunded, the retry is paid
