"""Processes and clients for the Prefect end-to-end tests (fixtures: conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.core.settings import ENVIRONMENT_VARIABLES
from tests.dev_server import DevServer
from tests.integration.http_helpers import MAINTENANCE_TOKEN

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 30.0
# A flow run starts a process and loads the flow: seconds, more on a busy machine.
JOB_TIMEOUT = 60.0
FINISHED = ("completed", "failed", "cancelled")


class Process:
    """A subprocess in its own session, its output in a file (read on failure)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("w") as out:
            self.popen = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.popen.poll() is not None:
                pytest.fail(f"{self.log_path.name} exited early:\n{self.log()}")
            time.sleep(0.2)
        pytest.fail(f"no {text!r} in {self.log_path.name} within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole session if it does not go."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        self.kill()

    def kill(self) -> None:
        """SIGKILL for everything in its session (its children too), as a dying machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT)


class Prefect:
    """The Prefect server's REST API, for what a test looks at or does in the UI."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.http = httpx.Client(base_url=api_url, timeout=httpx.Timeout(10.0, connect=3.0))

    def flow_runs(self, job_id: str) -> list[dict[str, Any]]:
        response = self.http.post("/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC"})
        response.raise_for_status()
        return [run for run in response.json() if run["parameters"].get("job_id") == job_id]

    def cancel(self, flow_run_id: str) -> None:
        response = self.http.post(
            f"/flow_runs/{flow_run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}},
        )
        response.raise_for_status()
        assert response.json()["status"] == "ACCEPT", response.json()

    def wait_for_state(self, flow_run_id: str, *state_types: str, timeout: float = 30.0) -> dict:
        """The flow run once its state is one of state_types."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.http.get(f"/flow_runs/{flow_run_id}").json()
            if run["state_type"] in state_types:
                return run
            time.sleep(0.2)
        pytest.fail(f"flow run {flow_run_id} not {state_types} after {timeout}s: {run['state']}")


def clean_environment(**env: str) -> dict[str, str]:
    """os.environ without this project's and Prefect's settings, plus `env`."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ENVIRONMENT_VARIABLES and not k.startswith("PREFECT_")
    }
    return {**environ, **env}


class Api:
    """The dev server as the demo user and as the scheduler calling maintenance."""

    def __init__(self, server: DevServer) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    def generate(self, kind: str, **params: Any) -> dict[str, Any]:
        response = self.http.post("/generate", json={"kind": kind, "params": params})
        assert response.status_code == 201, response.text
        return response.json()["job"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get("/status", params={"job_id": job_id})
        assert response.status_code == 200, response.text
        return response.json()["job"]

    def wait_until(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = JOB_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if done(job):
                return job
            time.sleep(0.2)
        pytest.fail(f"job {job_id} still {job['status']} after {timeout}s:\n{self.server.log()}")

    def wait_until_finished(self, job_id: str) -> dict[str, Any]:
        return self.wait_until(job_id, lambda job: job["status"] in FINISHED)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The dev server's log events (shared.core.log) called name, oldest first."""
        lines = [line for line in self.server.output if line.startswith('{"event":')]
        return [event for event in map(json.loads, lines) if event["event"] == name]

    def maintenance(self, *, reaped: int, retried: int, redispatched: int) -> None:
        """Run maintenance as the scheduler does; it must reap, retry and re-dispatch so many."""
        response = self.http.post(
            "/maintenance", headers={"Authorization": f"Bearer {MAINTENANCE_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        summary = response.json()
        assert (summary["reaped"], summary["retried"], summary["redispatched"]) == (
            reaped,
            retried,
            redispatched,
        ), summary


def wait_for_file(path: Path, timeout: float = JOB_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()):
            return text
        time.sleep(0.1)
    pytest.fail(f"{path} not written within {timeout}s")
