"""PIPELINE=prefect end to end: `generate` creates a flow run of the kind's deployment, a real
Prefect runner runs the flow (shared.pipeline.prefect), and the flow's signed callbacks reach the
dev server's `status` over HTTP. Then what goes wrong: a flow that raises, a cancellation
through the Prefect API, a crashed flow process, a killed runner, a stalled run that wakes up
late, and the same attempt dispatched twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.dev_server import DevServer
from tests.prefect.harness import Api, Process, wait_for_file

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def api(dev_server: DevServer, runner: Process) -> Api:
    return Api(dev_server)


@pytest.fixture
def ledger(database: str) -> Callable[[str], list[tuple[str, int]]]:
    def rows(job_id: str) -> list[tuple[str, int]]:
        with psycopg.connect(database) as conn:
            return conn.execute(
                "select entry_type, amount from public.credit_ledger where job_id = %s order by id",
                (job_id,),
            ).fetchall()

    return rows


@pytest.fixture
def pid_dir(work_dir: Path) -> Path:
    path = work_dir / f"pids-{time.monotonic_ns()}"
    path.mkdir()
    return path


def record(job: dict[str, Any], ledger_rows: list[tuple[str, int]], started: float) -> None:
    """What a scenario ended with, for the report (`pytest -s` prints it)."""
    print(
        f"\n  -> {job['status']} attempt={job['attempt']} refunded={job['refunded']}"
        f" error={job['error_message']!r} ledger={ledger_rows}"
        f" in {time.monotonic() - started:.1f}s"
    )


def test_a_job_runs_as_a_flow_run_of_its_deployment_and_completes(
    api, prefect, deployments, ledger
):
    started = time.monotonic()
    job = api.generate("story", prompt="a lighthouse keeper")

    done = api.wait_until_finished(job["id"])
    assert done["status"] == "completed", done
    assert "a lighthouse keeper" in done["result"]["story"]
    assert done["progress"] == 100
    [run] = prefect.flow_runs(job["id"])
    assert run["deployment_id"] == deployments["story"]
    assert run["idempotency_key"] == f"{job['id']}:1"
    assert run["parameters"]["callback_url"] == f"{api.server.base_url}/status"
    assert prefect.wait_for_state(run["id"], "COMPLETED")
    assert ledger(job["id"]) == [("charge", -10)]
    record(done, ledger(job["id"]), started)


def test_a_flow_that_raises_fails_the_job_and_refunds_it(api, prefect, ledger):
    started = time.monotonic()
    job = api.generate("demo_fail")

    done = api.wait_until_finished(job["id"])
    assert (done["status"], done["refunded"]) == ("failed", 5), done
    assert "always fails" in done["error_message"]
    [run] = prefect.flow_runs(job["id"])
    assert prefect.wait_for_state(run["id"], "FAILED")
    assert ledger(job["id"]) == [("charge", -5), ("refund", 5)]
    record(done, ledger(job["id"]), started)


def test_a_flow_run_cancelled_through_the_prefect_api_refunds_the_job(api, prefect, ledger):
    started = time.monotonic()
    job = api.generate("slow", steps=60, step_seconds=0.5)
    api.wait_until(job["id"], lambda job: (job["progress"] or 0) > 0)
    [run] = prefect.flow_runs(job["id"])

    prefect.cancel(run["id"])

    done = api.wait_until_finished(job["id"])
    assert (done["status"], done["refunded"]) == ("failed", 7), done
    assert done["error_message"].startswith("cancelled in Prefect")
    assert prefect.wait_for_state(run["id"], "CANCELLED")
    assert ledger(job["id"]) == [("charge", -7), ("refund", 7)]
    record(done, ledger(job["id"]), started)


def test_a_crashed_flow_process_gets_the_job_another_attempt(api, prefect, ledger, pid_dir):
    started = time.monotonic()
    job = api.generate("slow", steps=6, step_seconds=0.5, pid_dir=str(pid_dir))
    pid = int(wait_for_file(pid_dir / f"{job['id']}-1.pid"))

    os.kill(pid, signal.SIGKILL)  # the flow's process, not the runner: Prefect sees a crash

    retried = api.wait_until(job["id"], lambda job: job["status"] == "pending")
    assert retried["attempt"] == 1 and "crashed" in retried["error_message"], retried
    api.maintenance(reaped=0, retried=0, redispatched=1)  # the kind allows a second attempt
    done = api.wait_until_finished(job["id"])
    assert (done["status"], done["attempt"], done["result"]) == ("completed", 2, {"attempt": 2})
    first, second = prefect.flow_runs(job["id"])
    assert prefect.wait_for_state(first["id"], "CRASHED")
    assert second["idempotency_key"] == f"{job['id']}:2"
    assert ledger(job["id"]) == [("charge", -7)]
    record(done, ledger(job["id"]), started)


def test_a_killed_runner_leaves_the_job_to_maintenance_which_refunds_it(
    api, prefect, ledger, start_runner
):
    started = time.monotonic()
    runner = start_runner("slow_once")
    job = api.generate("slow_once", steps=60, step_seconds=0.5)
    api.wait_until(job["id"], lambda job: job["status"] == "processing")

    runner.kill()  # the runner and its flow's process, at once: nobody reports any more

    time.sleep(4 + 1)  # the kind's lease
    api.maintenance(reaped=1, retried=0, redispatched=0)
    done = api.job(job["id"])
    assert (done["status"], done["refunded"]) == ("failed", 7), done
    assert "lease expired, no attempts left" in done["error_message"]
    assert ledger(job["id"]) == [("charge", -7), ("refund", 7)]
    record(done, ledger(job["id"]), started)


def test_a_stalled_run_is_retried_and_its_late_report_refused(
    api, prefect, ledger, start_runner, pid_dir
):
    started = time.monotonic()
    runner = start_runner("slow_retry")
    job = api.generate("slow_retry", steps=8, step_seconds=0.5, pid_dir=str(pid_dir))
    stalled = int(wait_for_file(pid_dir / f"{job['id']}-1.pid"))
    api.wait_until(job["id"], lambda job: job["status"] == "processing")

    # The flow's process freezes (a long GC pause, a partition), its runner dies.
    os.kill(stalled, signal.SIGSTOP)
    os.kill(runner.pid, signal.SIGKILL)
    try:
        time.sleep(4 + 1)  # the kind's lease
        api.maintenance(reaped=1, retried=1, redispatched=1)
        start_runner("slow_retry")
        done = api.wait_until_finished(job["id"])
    finally:
        os.kill(stalled, signal.SIGCONT)
    assert (done["status"], done["attempt"], done["result"]) == ("completed", 2, {"attempt": 2})

    # Attempt 1 wakes up and reports: refused, so its run stops. It ends Cancelled, or Crashed
    # when it next logs to its dead runner's pipe (then its crash report is refused as well).
    first, second = prefect.flow_runs(job["id"])
    late = prefect.wait_for_state(first["id"], "CANCELLED", "CRASHED")
    late_reports = [e for e in api.events("report_rejected") if e["job_id"] == job["id"]]
    assert late_reports, api.server.log()
    assert {(e["attempt"], e["outcome"]) for e in late_reports} == {(1, "stale_attempt")}
    assert second["idempotency_key"] == f"{job['id']}:2"
    assert api.job(job["id"])["result"] == {"attempt": 2}
    assert ledger(job["id"]) == [("charge", -7)]
    refused = len(late_reports)
    print(f"\n  attempt 1's run ended {late['state_type']}, {refused} reports refused", end="")
    record(api.job(job["id"]), ledger(job["id"]), started)


def test_the_same_attempt_dispatched_twice_starts_one_flow_run(
    api, prefect, ledger, start_runner, database
):
    started = time.monotonic()
    job = api.generate("late", prompt="a second chance")  # nobody serves `late` yet
    with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "update public.jobs set lease_expires_at = now() - interval '1 second' where id = %s",
            (job["id"],),
        )

    api.maintenance(reaped=0, retried=0, redispatched=1)  # the same attempt, the same key
    redispatched = [e for e in api.events("job_redispatched") if e["job_id"] == job["id"]]
    assert [e["attempt"] for e in redispatched] == [1]
    [run] = prefect.flow_runs(job["id"])
    assert run["idempotency_key"] == f"{job['id']}:1"
    start_runner("late")
    done = api.wait_until_finished(job["id"])
    assert (done["status"], done["attempt"]) == ("completed", 1), done
    assert [r["id"] for r in prefect.flow_runs(job["id"])] == [run["id"]]
    assert ledger(job["id"]) == [("charge", -10)]
    record(done, ledger(job["id"]), started)
