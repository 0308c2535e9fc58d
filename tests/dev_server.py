"""`python -m shared.dev` in a subprocess, for the tests that drive the dev server over HTTP
(tests/acceptance, tests/browser)."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from shared.core.settings import ENVIRONMENT_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


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
