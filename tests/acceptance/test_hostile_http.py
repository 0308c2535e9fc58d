"""Hostile bodies over real sockets, framed as a client frames them: `functions-framework`
(gunicorn, as deployed) and the dev server (werkzeug) decode `Transfer-Encoding: chunked`.

A body over the limit is refused with 413 however it is framed and whatever the credentials, and
nothing is charged; a body exactly at the limit is read whole.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.api.http import MAX_BODY_BYTES, MAX_CALLBACK_BYTES
from shared.core.settings import ENVIRONMENT_VARIABLES
from tests.dev_server import free_port
from tests.integration.http_helpers import JWT_SECRET, WEBHOOK_SECRET, token
from tests.integration.sqlfns import add_kind

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
CHUNK_BYTES = 16 * 1024
# The body of the report: valid JSON, then spaces up to past the limit. A server that stops
# reading at the limit without refusing hands the handler valid JSON.
OVERSIZE = b'{"kind": "story"}' + b" " * 300_000
LIMITS = dict.fromkeys(
    ("/generate", "/projects", "/steps", "/cancel", "/maintenance"), MAX_BODY_BYTES
)
LIMITS["/status"] = MAX_CALLBACK_BYTES


def post(base_url: str, path: str, body: bytes, headers: dict[str, str], *, chunked: bool):
    """(status, JSON body) of one POST on a fresh connection."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **headers}
        if chunked:
            chunks = (body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES))
            connection.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def money(conn) -> tuple:
    return conn.execute(
        "select (select count(*) from public.credit_ledger), (select count(*) from public.jobs),"
        " (select sum(balance) from public.credit_accounts)"
    ).fetchone()


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listening on {port} within {START_TIMEOUT}s")


@contextmanager
def serving(command: list[str], port: int, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """`command` running with env (and none of our variables otherwise) until it listens on port;
    SIGTERM and wait afterwards."""
    environ = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_VARIABLES}
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environ | env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def gunicorn_generate(db_url: str, tmp_path: Path) -> Iterator[str]:
    """`functions-framework --target generate` (gunicorn, 2 workers x 2 threads) on db_url."""
    port = free_port()
    source = str(ROOT / "functions" / "main.py")
    command = [sys.executable, "-m", "functions_framework", "--target", "generate"]
    with serving(
        [*command, "--source", source, "--port", str(port)],
        port,
        tmp_path / "functions-framework.log",
        DATABASE_URL=db_url,
        SUPABASE_JWT_SECRET=JWT_SECRET,
        PIPELINE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        PIPELINE="queue",
        WORKERS="2",
        THREADS="2",
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def dev_server(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`python -m shared.dev` on db_url: (base URL, demo token)."""
    port = free_port()
    log = tmp_path / "dev.log"
    with serving(
        [sys.executable, "-m", "shared.dev"],
        port,
        log,
        DATABASE_URL=db_url,
        CREDIT_JOBS_DATA_DIR=str(tmp_path),
        PORT=str(port),
    ):
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := re.search(r"^export TOKEN=(\S+)$", log.read_text(), re.M)):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", found.group(1)


def test_gunicorn_refuses_oversize_however_framed_and_reads_a_body_at_the_limit(
    gunicorn_generate, conn, make_user
):
    add_kind(conn, "story", cost=10)
    user = make_user(balance=100)
    headers = {"Authorization": f"Bearer {token(user)}"}
    before = money(conn)
    for chunked in (True, False):
        status, body = post(gunicorn_generate, "/", OVERSIZE, headers, chunked=chunked)
        assert (status, body["error"]["code"]) == (413, "payload_too_large"), chunked
    assert money(conn) == before

    at_limit = b'{"kind": "story"}'.ljust(MAX_BODY_BYTES)
    status, body = post(gunicorn_generate, "/", at_limit, headers, chunked=True)
    assert status == 201, body
    assert body["balance"] == 90


def test_dev_server_refuses_oversize_on_every_post_and_unstorable_input(dev_server, conn):
    base_url, demo_token = dev_server
    before = money(conn)
    bearer = {"Authorization": f"Bearer {demo_token}"}
    for path, limit in LIMITS.items():
        oversize = b'{"kind": "story"}'.ljust(limit + 1)
        for headers in ({}, {"Authorization": "Bearer forged"}, bearer):
            for chunked in (True, False):
                status, body = post(base_url, path, oversize, headers, chunked=chunked)
                assert status == 413, (path, headers, chunked, body)
                assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
                assert body["error"]["code"] == "payload_too_large"
    assert money(conn) == before

    unstorable = [
        ("/generate", b'{"kind": "st\\u0000ory"}'),
        ("/generate", b'{"kind": "story", "params": {"a": NaN}}'),
        ("/generate", b'{"kind": "story", "params": {"a": 1e400}}'),
        ("/generate", b'{"kind": "story", "params": ' + b"[" * 1500 + b"]" * 1500 + b"}"),
        ("/projects", b'{"title": "\\ud800"}'),
    ]
    for path, payload in unstorable:
        for chunked in (True, False):
            status, body = post(base_url, path, payload, bearer, chunked=chunked)
            assert status == 400 and body["error"]["code"] == "invalid_request", (path, body)
    alg_list = (
        "eyJhbGciOlsiSFMyNTYiXX0."  # {"alg":["HS256"]}
        + token(uuid.uuid4(), secret=JWT_SECRET).split(".", 1)[1]
    )
    forged = {"Authorization": f"Bearer {alg_list}"}
    status, body = post(base_url, "/generate", b"{}", forged, chunked=False)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    connection = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=30)
    connection.request("GET", "/history?cursor=%00", headers=bearer)
    assert connection.getresponse().status == 400
    connection.close()
    assert money(conn) == before
