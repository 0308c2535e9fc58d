"""Queue workers as real processes (`python -m shared.worker`) against real PostgreSQL (issue 4).

Each worker runs tests/acceptance/worker_handlers.py:run, scripted per attempt through the job's
params, and records every attempt it starts. Leases are short (2 s) so stalls show up quickly;
the reaper is called by the test, as pg_cron or the maintenance function would.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.sqlfns import (
    add_kind,
    assert_late_reports_refused,
    balance,
    call,
    create_job,
    discrepancies,
    job_row,
    ledger_for_job,
)

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.acceptance.worker_handlers:run"
# Settings a CI environment may hold that would change how the worker starts.
ENV_TO_CLEAR = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "PIPELINE", "PIPELINE_URL")
COST = 10
WAIT = 20.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def events(self, event: str | None = None) -> list[dict]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if event is None or entry.get("event") == event:
                found.append(entry)
        return found

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def log(self) -> str:
        return self.log_path.read_text()


class Workers:
    """Starts worker processes on the test database; kills whatever is left at the end."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.record_path = tmp_path / "attempts.txt"
        self.record_path.touch()
        self.started: list[WorkerProcess] = []

    def start(
        self, kinds: str, *, concurrency: int = 1, grace_seconds: float = 5.0
    ) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
        env.update(DATABASE_URL=self.db_url, WORKER_RECORD_FILE=str(self.record_path))
        number = len(self.started) + 1
        log_path = self.tmp_path / f"worker-{number}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shared.worker",
                    "--kinds",
                    kinds,
                    "--handler",
                    HANDLER,
                    "--concurrency",
                    str(concurrency),
                    "--poll-interval",
                    "0.05",
                    "--grace-seconds",
                    str(grace_seconds),
                    "--worker-id",
                    f"worker-{number}",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(proc, log_path)
        self.started.append(worker)
        return worker

    def attempts(self) -> list[tuple[str, int, int, float]]:
        """(job_id, attempt, pid, start time) of every attempt any handler started."""
        rows = []
        for line in self.record_path.read_text().splitlines():
            job_id, attempt, pid, started = line.split()
            rows.append((job_id, int(attempt), int(pid), float(started)))
        return rows

    def attempts_of(self, job_id: str) -> list[int]:
        return [attempt for job, attempt, _, _ in self.attempts() if job == job_id]

    def started_attempt(self, job_id: str, attempt: int) -> Callable[[], bool]:
        return lambda: attempt in self.attempts_of(job_id)

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
                worker.proc.kill()
            worker.proc.wait(timeout=10)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(db_url, tmp_path)
    yield started
    started.stop_all()


def plan(**attempts: dict) -> dict:
    """Job params for the scripted handler: plan(a1={"seconds": 3}, default={"fail": "fatal"})."""
    steps = {
        ("*" if name == "default" else name.removeprefix("a")): s for name, s in attempts.items()
    }
    return {"plan": steps}


def status_of(conn: psycopg.Connection, job_id: str) -> str:
    return job_row(conn, job_id)["status"]


def is_status(conn: psycopg.Connection, job_id: str, *statuses: str) -> Callable[[], bool]:
    return lambda: status_of(conn, job_id) in statuses


def reap_until(conn: psycopg.Connection, reaped: int) -> dict:
    """Call the reaper (as pg_cron would, every minute) until it has reaped `reaped` jobs."""
    total = {"reaped": 0, "retried": 0}

    def reap() -> bool:
        result = call(conn, "reap_stalled_jobs", limit=1000)
        total["reaped"] += result["reaped"]
        total["retried"] += result["retried"]
        return total["reaped"] >= reaped

    wait_for(reap, f"the reaper to reap {reaped} job(s)", timeout=10)
    return total


def stop_gracefully(worker: WorkerProcess) -> int:
    worker.signal(signal.SIGTERM)
    return worker.proc.wait(timeout=15)


def test_normal_flow_charges_once_and_never_refunds(conn, make_user, workers):
    user = make_user(balance=100)
    story = add_kind(conn, "story", COST, lease_seconds=3)
    jobs = [create_job(conn, user, story, params=plan(default={"seconds": 1})) for _ in range(3)]
    worker = workers.start(story, concurrency=3)

    # Progress arrives while the job runs (heartbeats carry what the handler reports).
    wait_for(
        lambda: (
            (row := job_row(conn, jobs[0]["id"]))["status"] == "processing"
            and 0 < (row["progress"] or 0) < 100
        ),
        "progress reported mid-job",
    )
    for job in jobs:
        wait_for(is_status(conn, job["id"], "completed"), "completion")
    for job in jobs:
        row = job_row(conn, job["id"])
        assert (row["attempt"], row["progress"], row["refunded"]) == (1, 100, 0)
        assert row["result"]["attempt"] == 1
        assert row["worker_id"] is None and row["lease_expires_at"] is None
        assert ledger_for_job(conn, job["id"]) == [("charge", -COST)]
    assert balance(conn, user) == 100 - 3 * COST
    assert discrepancies(conn) == []
    done = worker.events("job_done")
    assert sorted(e["job_id"] for e in done) == sorted(j["id"] for j in jobs)
    assert {e["outcome"] for e in done} == {"completed"}
    assert stop_gracefully(worker) == 0


def test_handler_failures_refund_once_or_retry_per_kind(conn, make_user, workers):
    user = make_user(balance=100)
    fragile = add_kind(conn, "fragile", COST, max_attempts=3, retry_delay_seconds=1)
    fatal = create_job(conn, user, fragile, params=plan(default={"fail": "fatal"}))
    flaky = create_job(conn, user, fragile, params=plan(default={"fail": "retryable"}))
    recovers = create_job(conn, user, fragile, params=plan(a1={"fail": "retryable"}))
    worker = workers.start(fragile, concurrency=3)

    wait_for(is_status(conn, fatal["id"], "failed"), "the fatal job to fail")
    wait_for(is_status(conn, recovers["id"], "completed"), "the recovering job to complete")
    wait_for(is_status(conn, flaky["id"], "failed"), "the flaky job to run out of attempts")

    # Not retryable: failed on its first attempt and refunded once.
    assert workers.attempts_of(fatal["id"]) == [1]
    assert ledger_for_job(conn, fatal["id"]) == [("charge", -COST), ("refund", COST)]
    assert "ValueError: fatal failure on attempt 1" in job_row(conn, fatal["id"])["error_message"]
    # Retryable: max_attempts runs, each after the kind's delay, then refunded once.
    assert workers.attempts_of(flaky["id"]) == [1, 2, 3]
    assert ledger_for_job(conn, flaky["id"]) == [("charge", -COST), ("refund", COST)]
    assert workers.attempts_of(recovers["id"]) == [1, 2]
    assert ledger_for_job(conn, recovers["id"]) == [("charge", -COST)]
    for job in (flaky, recovers):
        starts = [t for j, _, _, t in workers.attempts() if j == job["id"]]
        assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(starts))
    assert balance(conn, user) == 100 - COST
    assert discrepancies(conn) == []
    outcomes = [(e["job_id"], e["attempt"], e["outcome"]) for e in worker.events("job_done")]
    assert sorted(outcomes) == sorted(
        [
            (fatal["id"], 1, "refunded"),
            (flaky["id"], 1, "retried"),
            (flaky["id"], 2, "retried"),
            (flaky["id"], 3, "refunded"),
            (recovers["id"], 1, "retried"),
            (recovers["id"], 2, "completed"),
        ]
    )
    assert stop_gracefully(worker) == 0


@pytest.mark.parametrize("b_outcome", ["completed", "failed"])
def test_a_frozen_worker_is_fenced_off_when_another_takes_over(conn, make_user, workers, b_outcome):
    user = make_user(balance=100)
    story = add_kind(conn, "story", COST, lease_seconds=2, max_attempts=3)
    second = {"seconds": 0.2} if b_outcome == "completed" else {"fail": "fatal"}
    job = create_job(conn, user, story, params=plan(a1={"seconds": 1.5}, a2=second))

    a = workers.start(story)
    wait_for(workers.started_attempt(job["id"], 1), "worker A to start attempt 1")
    a.signal(signal.SIGSTOP)
    b = workers.start(story)
    # A's lease runs out; the reaper hands the job back to the queue; B takes attempt 2.
    assert reap_until(conn, 1) == {"reaped": 1, "retried": 1}
    wait_for(is_status(conn, job["id"], b_outcome), f"worker B's attempt 2 to end {b_outcome}")
    a.signal(signal.SIGCONT)

    # A wakes up: its heartbeat is rejected as stale and its late result is dropped.
    wait_for(lambda: a.events("job_done"), "worker A to give up its attempt")
    [lost] = a.events("job_lost")
    assert (lost["job_id"], lost["attempt"]) == (job["id"], 1)
    assert "attempt 1" in lost["error"]
    [a_done] = a.events("job_done")
    assert a_done["outcome"] in ("dropped", "lost")
    # ...and the database would refuse it anyway: a late completion never overwrites attempt 2.
    assert_late_reports_refused(conn, job["id"], 1, "stale_attempt")

    row = job_row(conn, job["id"])
    assert (row["status"], row["attempt"]) == (b_outcome, 2)
    assert workers.attempts_of(job["id"]) == [1, 2]
    if b_outcome == "completed":
        assert row["result"]["pid"] == b.proc.pid
        assert ledger_for_job(conn, job["id"]) == [("charge", -COST)]
    else:
        assert ledger_for_job(conn, job["id"]) == [("charge", -COST), ("refund", COST)]
    assert discrepancies(conn) == []
    assert stop_gracefully(a) == 0
    assert stop_gracefully(b) == 0


def test_a_killed_worker_s_jobs_are_reaped_then_retried_or_refunded(conn, make_user, workers):
    user = make_user(balance=100)
    again = add_kind(conn, "again", COST, lease_seconds=2, max_attempts=2)
    once = add_kind(conn, "once", COST, lease_seconds=2, max_attempts=1)
    long_first = plan(a1={"seconds": 30}, default={"seconds": 0.1})
    retried = create_job(conn, user, again, params=long_first)
    ended = create_job(conn, user, once, params=long_first)

    a = workers.start(f"{again},{once}", concurrency=2)
    wait_for(workers.started_attempt(retried["id"], 1), "attempt 1 of the retryable kind")
    wait_for(workers.started_attempt(ended["id"], 1), "attempt 1 of the one-shot kind")
    a.proc.kill()
    a.proc.wait(timeout=10)

    assert reap_until(conn, 2) == {"reaped": 2, "retried": 1}
    assert status_of(conn, ended["id"]) == "failed"
    assert ledger_for_job(conn, ended["id"]) == [("charge", -COST), ("refund", COST)]
    workers.start(again)
    wait_for(is_status(conn, retried["id"], "completed"), "attempt 2 on a new worker")
    assert job_row(conn, retried["id"])["attempt"] == 2
    assert ledger_for_job(conn, retried["id"]) == [("charge", -COST)]
    assert balance(conn, user) == 100 - COST
    assert discrepancies(conn) == []


def test_sigterm_finishes_running_jobs_within_the_grace_period(conn, make_user, workers):
    user = make_user(balance=100)
    story = add_kind(conn, "story", COST, lease_seconds=5)
    short = create_job(conn, user, story, params=plan(default={"seconds": 1}))
    long = create_job(conn, user, story, params=plan(a1={"seconds": 30}))
    waiting = create_job(conn, user, story, params=plan(default={"seconds": 0}))
    worker = workers.start(story, concurrency=2, grace_seconds=2)
    wait_for(workers.started_attempt(short["id"], 1), "the short job to start")
    wait_for(workers.started_attempt(long["id"], 1), "the long job to start")

    started = time.monotonic()
    assert stop_gracefully(worker) == 0
    assert 1.5 < time.monotonic() - started < 10

    # Finished within the grace period: completed as usual.
    assert status_of(conn, short["id"]) == "completed"
    # Still running after it: failed as retryable, not refunded, claimable by another worker.
    row = job_row(conn, long["id"])
    assert (row["status"], row["attempt"], row["refunded"]) == ("pending", 1, 0)
    assert row["error_message"] == "worker shut down before the job finished"
    # A slot freed during the grace period claims nothing new.
    assert job_row(conn, waiting["id"])["attempt"] == 0
    assert worker.events("worker_stopped")[0]["abandoned"] == 1
    assert ledger_for_job(conn, long["id"]) == [("charge", -COST)]


def test_many_workers_never_run_the_same_attempt_twice(conn, make_user, workers):
    user = make_user(balance=40)
    bulk = add_kind(conn, "bulk", 1, lease_seconds=30)
    jobs = [create_job(conn, user, bulk, params=plan(default={"seconds": 0.05})) for _ in range(40)]
    started = [workers.start(bulk, concurrency=2) for _ in range(4)]

    for job in jobs:
        wait_for(is_status(conn, job["id"], "completed"), "all 40 jobs to complete", timeout=40)
    attempts = workers.attempts()
    runs = [(job_id, attempt) for job_id, attempt, _, _ in attempts]
    assert len(runs) == len(set(runs)) == 40
    assert {attempt for _, attempt in runs} == {1}
    assert len({pid for _, _, pid, _ in attempts}) >= 2, "one worker took the whole queue"
    assert balance(conn, user) == 0
    assert discrepancies(conn) == []
    for worker in started:
        assert stop_gracefully(worker) == 0
