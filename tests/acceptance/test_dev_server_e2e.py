"""End to end over real HTTP: `python -m shared.dev` in a subprocess, driven like a newcomer would.

The dev server starts its own embedded PostgreSQL in a temp data dir (or uses DATABASE_URL), the
local pipeline calls back over HTTP with signed webhooks, and SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dev_server import ROOT, STOP_TIMEOUT, DevServer, postmaster

pytestmark = pytest.mark.acceptance

JOB_TIMEOUT = 20.0
STORY_COST = 10
FAIL_COST = 5


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: a concurrent pytest session resets its root to mode 0700,
    # and the embedded server runs as another user that must reach its data dir.
    path = Path(tempfile.mkdtemp(prefix="credit-jobs-dev-e2e-"))
    yield path
    # Whatever happened, leave no PostgreSQL behind (SIGINT = fast shutdown).
    if (process := postmaster(path)) is not None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=STOP_TIMEOUT)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_dev(data_dir: Path) -> Iterator:
    servers: list[DevServer] = []

    def start(**env: str) -> DevServer:
        server = DevServer(data_dir, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


class Api:
    def __init__(self, server: DevServer) -> None:
        self.http = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=httpx.Timeout(10.0, connect=5.0),
        )
        self.server = server

    def balance(self) -> int:
        response = self.http.get("/credits")
        assert response.status_code == 200, response.text
        return response.json()["balance"]

    def generate(self, kind: str, **params: str) -> dict:
        response = self.http.post("/generate", json={"kind": kind, "params": params})
        assert response.status_code == 201, response.text
        return response.json()["job"]

    def wait_until_finished(self, job_id: str) -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            response = self.http.get("/status", params={"job_id": job_id})
            assert response.status_code == 200, response.text
            job = response.json()["job"]
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            time.sleep(0.1)
        pytest.fail(f"job {job_id} not finished within {JOB_TIMEOUT}s:\n{self.server.log()}")


def wait_until_ready(api: Api) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            api.balance()
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"dev server not answering:\n{api.server.log()}")


def test_embedded_dev_server_runs_the_whole_flow_and_restarts_on_its_data(start_dev, data_dir):
    server = start_dev()
    api = Api(server)
    wait_until_ready(api)
    assert api.http.get("/health").json()["status"] == "ok"
    start_balance = api.balance()
    assert start_balance >= STORY_COST + FAIL_COST

    job = api.generate("story", prompt="a lighthouse keeper")
    assert job["status"] in ("pending", "processing")
    assert job["cost"] == STORY_COST
    done = api.wait_until_finished(job["id"])
    assert done["status"] == "completed", done
    assert "lighthouse keeper" in done["result"]["story"]
    assert done["progress"] == 100

    history = api.http.get("/history", params={"limit": 10}).json()["items"]
    assert [(j["id"], j["status"]) for j in history][:1] == [(job["id"], "completed")]
    assert api.balance() == start_balance - STORY_COST

    failing = api.generate("demo_fail")
    failed = api.wait_until_finished(failing["id"])
    assert failed["status"] == "failed", failed
    assert failed["refunded"] == FAIL_COST
    assert "always fails" in failed["error_message"]
    assert api.balance() == start_balance - STORY_COST

    credits = api.http.get("/credits", params={"limit": 10}).json()
    assert [e["entry_type"] for e in credits["entries"]][:3] == ["refund", "charge", "charge"]

    assert server.stop() == 0
    assert "dev server stopped" in server.log()
    assert postmaster(data_dir) is None, "embedded PostgreSQL still running after SIGTERM"

    # Same data dir: same secrets (the old token still works), same balance, no second top-up.
    again = start_dev()
    assert again.token != ""
    api = Api(again)
    api.http.headers["Authorization"] = f"Bearer {server.token}"
    wait_until_ready(api)
    assert api.balance() == start_balance - STORY_COST
    assert again.stop() == 0
    assert postmaster(data_dir) is None


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("curl")), reason="needs bash+curl")
def test_printed_curl_commands_work_as_printed(db_url, start_dev):
    server = start_dev(DATABASE_URL=db_url)
    api = Api(server)
    wait_until_ready(api)
    start_balance = api.balance()

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", server.walkthrough],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{server.walkthrough}\n{result.stdout}\n{result.stderr}"
    errors = re.findall(r'"code":\s*"(\w+)"', result.stdout)
    assert errors == [], f"{result.stdout}\n{server.log()}"
    assert '"status": "completed"' in result.stdout or '"status":"completed"' in result.stdout
    # story charged; demo_fail and the cancelled job refunded; the pack bought, then revoked
    assert '"outcome":"applied"' in result.stdout.replace(" ", "")
    assert api.balance() == start_balance - STORY_COST
    assert server.stop() == 0
