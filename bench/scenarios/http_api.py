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
import jwt
import psycopg

from bench.harness import Context, Series, user_id
from shared.webhooks import sign

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE = ROOT / "functions" / "main.py"
JWT_SECRET = "bench-jwt-secret-" + "x" * 32
WEBHOOK_SECRET = "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMh"


class HttpStatusError(Exception):
    """An HTTP answer other than the expected one; counted by status code."""


def _token(n: int) -> str:
    claims = {"sub": str(user_id(n)), "aud": "authenticated", "role": "authenticated"}
    return jwt.encode({**claims, "exp": int(time.time()) + 3600}, JWT_SECRET, "HS256")


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
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{target} server exited; see {log}")
        try:
            httpx.get(url, timeout=1)  # any answer (405) means it is up
            return proc, url
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
                " p_start_attempt => true)",
                (user_id(n),),
            ).fetchone()[0]["job"]
            for n in range(1, count + 1)
        ]


def run(ctx: Context) -> dict[str, Any]:
    from bench.load import measure

    cfg = ctx.config
    log = ROOT / "bench" / "results" / "tmp" / "http-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    series = Series()
    round_trips: dict[str, dict[str, Any]] = {}
    for round_no in range(1, cfg.runs + 1):
        url = ctx.core_copy("s4")
        counting = ctx.server.has_pg_stat_statements()
        if counting:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("create extension if not exists pg_stat_statements")
        jobs = [{"id": j["id"], "attempt": j["attempt"]} for j in _push_jobs(url, max(cfg.clients))]
        generate, generate_url = _serve("generate", url, cfg.http_workers, cfg.http_threads, log)
        status, status_url = _serve("status", url, cfg.http_workers, cfg.http_threads, log)
        params = {"users": cfg.users, "generate_url": generate_url, "status_url": status_url,
                  "jobs": jobs}  # fmt: skip
        try:
            for clients in cfg.clients:
                ctx.log(f"s4 HTTP, round {round_no}/{cfg.runs}, {clients} clients")
                for name, op, connect in (
                    ("generate", "generate_op", False),
                    ("status_callback", "status_op", False),
                    ("sql_create_job", None, True),
                ):
                    target = f"{__name__}:{op}" if op else "bench.scenarios.sql_core:create_job_op"
                    if counting:
                        _reset_statements(url)
                    result, _ = measure(
                        url, target, clients, seconds=cfg.seconds, params=params, connect=connect
                    )
                    series.add(
                        name, clients, ctx.record(f"{name} ({'HTTP' if op else 'SQL'})", result)
                    )
                    if counting and op and round_no == 1:
                        requests = result.ops + sum(result.errors.values())
                        calls = _statement_calls(url)
                        calls.pop(
                            next((q for q in calls if "pg_stat_statements_reset" in q), ""), None
                        )
                        round_trips.setdefault(name, {})[str(clients)] = {
                            "per_request": round(sum(calls.values()) / max(requests, 1), 2),
                            "statements": {
                                q[:120]: round(c / max(requests, 1), 2)
                                for q, c in sorted(calls.items(), key=lambda kv: -kv[1])[:6]
                            },
                        }
        finally:
            _stop(generate)
            _stop(status)
            ctx.drop(url)
    for name, by_clients in round_trips.items():
        first = next(iter(by_clients.values()))
        ctx.log(
            f"    round trips per {name} request: {first['per_request']} ({first['statements']})"
        )
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
        "round_trips": round_trips,
    }
