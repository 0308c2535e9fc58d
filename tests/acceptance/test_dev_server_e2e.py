"""End to end over real HTTP: `python -m shared.dev` in a subprocess, driven like a newcomer would.

The dev server starts its own embedded PostgreSQL in a temp data dir (or uses DATABASE_URL), the
local pipeline calls back over HTTP with signed webhooks, and SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from shared.core.settings import ENVIRONMENT_VARIABLES

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0
JOB_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
STORY_COST = 10
FAIL_COST = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevServer:
    """A running `python -m shared.dev`, its output collected line by line."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_VARIABLES}
        environ.update(CREDIT_JOBS_DATA_DIR=str(data_dir), PORT=str(self.port), **env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.dev"],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C in the test's terminal must not reach it
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.token = self.wait_for_line(r"^export TOKEN=(\S+)$")
        self.base_url = self.wait_for_line(r"^export API=(\S+)$")
        self.walkthrough = self._walkthrough()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"dev server exited early:\n{self.log()}")
            if match := re.match(pattern, line):
                return match.group(1)
        pytest.fail(f"no line matching {pattern!r} within {timeout}s:\n{self.log()}")

    def _walkthrough(self) -> str:
        # The printed commands run from `export TOKEN=` up to the blank line after them.
        text = "".join(self.output)
        start = text.index("export TOKEN=")
        end = text.find("\n\n", start)
        while end == -1:
            self.wait_for_line(r"^$", timeout=10)
            text = "".join(self.output)
            end = text.find("\n\n", start)
        return text[start:end]

    def log(self) -> str:
        return "".join(self.output)[-6000:]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dev server did not stop within {STOP_TIMEOUT}s:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)


def postmaster(data_dir: Path) -> psutil.Process | None:
    """The embedded PostgreSQL still running on data_dir, if any."""
    try:
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])
        process = psutil.Process(pid)
    except (OSError, ValueError, psutil.Error):
        return None
    return process if process.status() != psutil.STATUS_ZOMBIE else None


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
