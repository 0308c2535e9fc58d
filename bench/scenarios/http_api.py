"""Scenario 4: the HTTP functions under load, next to the SQL call they wrap.

Two functions-framework servers (gunicorn, WORKERS x THREADS from the config), one per target as
they are deployed: `generate` (POST {"kind": "bench"} with an HS256 user token minted here, the
way Supabase Auth would; PIPELINE=queue, so no dispatch) and `status` (POST a signed Standard
Webhooks callback: a `processing` progress report for a push job of the client's own, repeatable).
Per round, on one database: each HTTP target at each client count, and SQL create_job from Python
on the same database at the same client count (the ratio's reference). Clients are httpx
keep-alive clients, spread over processes like every Python load here.

Round trips per request come from pg_stat_statements (calls of every statement in the database
during the measurement, BEGIN/COMMIT included, divided by requests), when it is loaded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.harness import Context, Series, user_id
from shared.dev.tokens import mint_token
from shared.push.webhooks import sign

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE = ROOT / "functions" / "main.py"
JWT_SECRET = "bench-jwt-secret-" + "x" * 32
WEBHOOK_SECRET = "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMh"
SERVER_LOG = ROOT / "bench" / "results" / "tmp" / "http-server.log"


class HttpStatusError(Exception):
    """An HTTP answer other than the expected one; counted by status code."""


def _token(n: int) -> str:
    return mint_token(user_id(n), JWT_SECRET)


def generate_op(conn: None, client_id: int, params: dict[str, Any]) -> Callable[[], str | None]:
    """POST generate for a random user with that user's token."""
    rng = random.Random(client_id)
    client = httpx.Client(base_url=params["generate_url"], timeout=30)
    tokens: dict[int, str] = {}

    def call() -> str | None:
        n = rng.randint(1, params["users"])
        token = tokens.get(n) or tokens.setdefault(n, _token(n))
        response = client.post(
            "/", json={"kind": "bench"}, headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code != 201:
            raise HttpStatusError(f"HTTP {response.status_code}")
        return None

    return call


def status_op(conn: None, client_id: int, params: dict[str, Any]) -> Callable[[], str | None]:
    """POST a signed progress callback for this client's own push job."""
    job = params["jobs"][client_id]
    client = httpx.Client(base_url=params["status_url"], timeout=30)
    progress = 0

    def call() -> str | None:
        nonlocal progress
        progress = (progress + 1) % 100
        body = json.dumps(
            {
                "job_id": job["id"],
                "attempt": job["attempt"],
                "status": "processing",
                "progress": progress,
            }
        )
        headers = sign(WEBHOOK_SECRET, None, body) | {"Content-Type": "application/json"}
        response = client.post("/", content=body, headers=headers)
        if response.status_code != 200:
            raise HttpStatusError(f"HTTP {response.status_code}")
        return None

    return call


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(target: str, db_url: str, workers: int, threads: int, log: Path) -> tuple[Any, str]:
    """Start a functions-framework server for `target`; returns (process, base URL)."""
    port = _free_port()
    env = os.environ | {
        "DATABASE_URL": db_url,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "PIPELINE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PIPELINE": "queue",
        "WORKERS": str(workers),
        "THREADS": str(threads),
    }
    args = [sys.executable, "-m", "functions_framework", "--target", target]
    args += ["--source", str(SOURCE), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_until_up(proc: Any, url: str, target: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{target} server exited; see {log}")
        try:
            httpx.get(url, timeout=1)  # any answer (405) means it is up
            return
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{target} server did not start; see {log}")


def _stop(proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _statement_calls(url: str) -> dict[str, int]:
    """pg_stat_statements calls per statement text in url's database."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "select query, sum(calls)::bigint from pg_stat_statements"
            " where dbid = (select oid from pg_database where datname = current_database())"
            " group by query"
        ).fetchall()
    return dict(rows)


def _reset_statements(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_stat_statements_reset()")


def _push_jobs(url: str, count: int) -> list[dict[str, Any]]:
    """One push job (attempt 1, pending) per client, for distinct users."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            conn.execute(
                "select public.create_job(p_user_id => %s, p_kind => 'bench',"
                " p_pipeline => 'webhook')",
                (user_id(n),),
            ).fetchone()[0]["job"]
            for n in range(1, count + 1)
        ]


MEASURED = (  # series name, load operation, whether the client needs a database connection
    ("generate", f"{__name__}:generate_op", False),
    ("status_callback", f"{__name__}:status_op", False),
    ("sql_create_job", "bench.scenarios.sql_core:create_job_op", True),
)


def _round_trips(url: str, requests: int) -> dict[str, Any]:
    """Statement calls per request since the last reset (our reset call excluded)."""
    calls = {q: c for q, c in _statement_calls(url).items() if "pg_stat_statements_reset" not in q}
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    return {
        "per_request": round(sum(calls.values()) / max(requests, 1), 2),
        "statements": {q[:120]: round(c / max(requests, 1), 2) for q, c in top},
    }


def _one_round(ctx: Context, round_no: int, series: Series, trips: dict[str, Any]) -> None:

    cfg = ctx.config
    url = ctx.core_copy("s4")
    counting = ctx.server.has_pg_stat_statements()
    if counting:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create extension if not exists pg_stat_statements")
    jobs = [{"id": j["id"], "attempt": j["attempt"]} for j in _push_jobs(url, max(cfg.clients))]
    servers = {
        target: _serve(target, url, cfg.http_workers, cfg.http_threads, SERVER_LOG)
        for target in ("generate", "status")
    }
    try:
        for target, (proc, base_url) in servers.items():
            _wait_until_up(proc, base_url, target, SERVER_LOG)
        params = {
            "users": cfg.users,
            "generate_url": servers["generate"][1],
            "status_url": servers["status"][1],
            "jobs": jobs,
        }
        for clients in cfg.clients:
            ctx.log(f"s4 HTTP, round {round_no}/{cfg.runs}, {clients} clients")
            for name, op, connect in MEASURED:
                if counting:
                    _reset_statements(url)
                result, _ = ctx.measure(
                    url, op, clients, seconds=cfg.seconds, params=params, connect=connect
                )
                series.add(
                    name, clients, ctx.record(f"{name} ({'SQL' if connect else 'HTTP'})", result)
                )
                if counting and not connect and round_no == 1:
                    requests = result.ops + sum(result.errors.values())
                    trips.setdefault(name, {})[str(clients)] = _round_trips(url, requests)
    finally:
        for proc, _ in servers.values():
            _stop(proc)
        ctx.drop(url)


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    SERVER_LOG.write_bytes(b"")
    series = Series()
    trips: dict[str, dict[str, Any]] = {}
    for round_no in range(1, cfg.runs + 1):
        _one_round(ctx, round_no, series, trips)
    for name, by_clients in trips.items():
        first = next(iter(by_clients.values()))
        ctx.log(f"    round trips per {name} request: {first['per_request']}")
    return {
        "workers": cfg.http_workers,
        "threads": cfg.http_threads,
        "series": series.as_dict(),
        "ratio_generate_to_create_job": {
            str(c): series.paired_ratio("generate", "sql_create_job", c) for c in cfg.clients
        },
        "ratio_status_to_create_job": {
            str(c): series.paired_ratio("status_callback", "sql_create_job", c) for c in cfg.clients
        },
        "round_trips": trips,
    }
