"""A real Prefect server, runners and the dev server with PIPELINE=prefect, all on 127.0.0.1.

Run with `scripts/test-prefect` (its own venv with requirements-prefect.txt); the main suite
does not collect this folder. Per session: `prefect server start` on a temp PREFECT_HOME with
SQLite, every deployment of tests/prefect/flows.py registered, one runner serving the kinds most
tests use, and `python -m shared.dev` on a database of its own. Tests that kill a runner start
their own with `start_runner`.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from shared.dev.embedded import with_database
from tests.dev_server import DevServer, free_port
from tests.helpers import create_database, drop_database
from tests.integration.http_helpers import MAINTENANCE_TOKEN, WEBHOOK_SECRET
from tests.prefect.harness import ROOT, Prefect, Process, clean_environment

pytest.importorskip("prefect", reason="needs requirements-prefect.txt (scripts/test-prefect)")

SERVER_START_TIMEOUT = 120.0
RUNNER_START_TIMEOUT = 60.0
# kind, cost, max_attempts, lease_seconds, retry_delay_seconds (the demo kinds come from the
# dev server's seed); leases are short so a dead run is noticed within seconds.
TEST_KINDS = (
    ("slow", 7, 2, 30, 0),
    ("slow_once", 7, 1, 4, 0),
    ("slow_retry", 7, 2, 4, 0),
    ("late", 10, 1, 4, 0),
)
SHARED_RUNNER_KINDS = ("story", "voice", "demo_fail", "slow")


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path (tests/acceptance/test_dev_server_e2e.py says why).
    path = Path(tempfile.mkdtemp(prefix="credit-jobs-prefect-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_env(work_dir: Path) -> Iterator[dict[str, str]]:
    """What every Prefect process of the session gets: a running server's API URL and home."""
    port = free_port()
    env = clean_environment(
        PREFECT_HOME=str(work_dir / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{work_dir / 'prefect.db'}",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # runners look for new flow runs every second instead of every 10
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PIPELINE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    server = Process(
        [sys.executable, "-m", "prefect", "server", "start"], env, work_dir / "prefect-server.log"
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.popen.poll() is not None:
            pytest.fail(f"prefect server exited:\n{server.log()}")
        time.sleep(0.25)
    else:
        server.stop()
        pytest.fail(f"prefect server not up within {SERVER_START_TIMEOUT}s:\n{server.log()}")
    yield env
    server.stop()


@pytest.fixture(scope="session")
def prefect(prefect_env: dict[str, str]) -> Prefect:
    return Prefect(prefect_env["PREFECT_API_URL"])


@pytest.fixture(scope="session")
def deployments(prefect_env: dict[str, str]) -> dict[str, str]:
    """{kind: deployment id} for every deployment of tests/prefect/flows.py."""
    registered = subprocess.run(
        [sys.executable, "-m", "tests.prefect.flows", "register"],
        cwd=ROOT,
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=RUNNER_START_TIMEOUT,
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    return json.loads(registered.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def start_runner(
    prefect_env: dict[str, str], deployments: dict[str, str], work_dir: Path
) -> Iterator[Callable[..., Process]]:
    """start_runner(*kinds): a `flow.serve` process for those kinds' deployments, once serving."""
    runners: list[Process] = []

    def start(*kinds: str) -> Process:
        log = work_dir / f"runner-{len(runners)}-{'-'.join(kinds)}.log"
        runner = Process(
            [sys.executable, "-m", "tests.prefect.flows", "serve", *kinds], prefect_env, log
        )
        runners.append(runner)
        runner.wait_for("Your deployments are being served", RUNNER_START_TIMEOUT)
        return runner

    yield start
    for runner in runners:
        runner.stop()


@pytest.fixture(scope="session")
def runner(start_runner: Callable[..., Process]) -> Process:
    return start_runner(*SHARED_RUNNER_KINDS)


@pytest.fixture(scope="session")
def database(server_url: str, template_db: str) -> Iterator[str]:
    """The dev server's database (migrated, with the test kinds), for the whole session."""
    name = f"test_prefect_{secrets.token_hex(4)}"
    create_database(server_url, name, template=template_db)
    url = with_database(server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany(
            "insert into public.job_kinds"
            " (kind, cost, max_attempts, lease_seconds, retry_delay_seconds)"
            " values (%s, %s, %s, %s, %s)",
            TEST_KINDS,
        )
    yield url
    drop_database(server_url, name)


@pytest.fixture(scope="session")
def dev_server(
    database: str, deployments: dict[str, str], prefect_env: dict[str, str], work_dir: Path
) -> Iterator[DevServer]:
    """`python -m shared.dev` with PIPELINE=prefect: generate creates flow runs by deployment."""
    data_dir = work_dir / "dev"
    data_dir.mkdir()
    # DevServer clears this project's variables itself and takes them from here.
    server = DevServer(
        data_dir,
        DATABASE_URL=database,
        PIPELINE="prefect",
        PREFECT_API_URL=prefect_env["PREFECT_API_URL"],
        PREFECT_DEPLOYMENTS=",".join(f"{kind}={id_}" for kind, id_ in deployments.items()),
        PIPELINE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        MAINTENANCE_TOKEN=MAINTENANCE_TOKEN,
    )
    yield server
    server.kill()
