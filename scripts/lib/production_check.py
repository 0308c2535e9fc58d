"""The steps of scripts/check-production-install, run by the fresh venv's python.

`python production_check.py WORK_DIR SERVER_URL` runs every entry point as a host that installed
requirements.txt alone would, on a scratch database it creates on SERVER_URL and drops at the
end. This file itself uses only what requirements.txt installs; each process it starts sees only
the variables its step gives it (plus PATH and HOME), never the caller's environment.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FUNCTIONS_MAIN = ROOT / "functions" / "main.py"
WAIT_SECONDS = 30.0
KIND = "production_check"
# Targets anyone may call (the price list, the health check): their anonymous GET is a 200.
PUBLIC_TARGETS = frozenset({"kinds", "health"})

HANDLER = """\
def handle(job, progress=None):
    return {"text": "checked: " + job["params"]["prompt"]}
"""
# functions/main.py's targets, as functions-framework registers them when it loads the file.
LIST_TARGETS = f"""
import importlib.util
from functions_framework import _function_registry
spec = importlib.util.spec_from_file_location("main", {str(FUNCTIONS_MAIN)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(" ".join(_function_registry.REGISTRY_MAP))
"""


class CheckFailed(Exception):
    pass


def step(message: str) -> None:
    print(f"-- {message}", flush=True)


def environment(variables: Mapping[str, str]) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **variables}


def run(args: list[str], variables: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        args,
        cwd=ROOT,
        env=environment(variables or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise CheckFailed(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def wait_for(what: str, ready: Callable[[], Any], proc: subprocess.Popen, log: Path) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"exited {proc.returncode} before {what}:\n{log.read_text()}")
        value = ready()
        if value:
            return value
        time.sleep(0.1)
    raise CheckFailed(f"timed out after {WAIT_SECONDS} s waiting for {what}:\n{log.read_text()}")


@contextmanager
def background(
    args: list[str], variables: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=environment(variables), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"credit_jobs_production_check_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def check_migrate(database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    step("python -m shared.migrate up, status, check")
    print(run([sys.executable, "-m", "shared.migrate", "up"], env), end="")
    listed = run([sys.executable, "-m", "shared.migrate", "status"], env)
    if " applied " not in listed or " pending " in listed:
        raise CheckFailed(f"status after up:\n{listed}")
    run([sys.executable, "-m", "shared.migrate", "check"], env)


def add_user(conn: psycopg.Connection, credits: int) -> uuid.UUID:
    user_id = uuid.uuid4()
    conn.execute("insert into auth.users (id, email) values (%s, %s)", (user_id, f"{user_id}@x"))
    grant = "select public.admin_grant_credits(%s, %s, 'production check')"
    conn.execute(grant, (user_id, credits))
    return user_id


def check_worker(database_url: str, work_dir: Path) -> None:
    step("python -m shared.worker: runs a queued job, exits 0 on SIGTERM")
    (work_dir / "handlers").mkdir()
    (work_dir / "handlers" / "check_handler.py").write_text(HANDLER)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("insert into public.job_kinds (kind, cost) values (%s, 1)", (KIND,))
        created = conn.execute(
            "select public.create_job(p_user_id => %s, p_kind => %s, p_params => %s)",
            (add_user(conn, 1), KIND, json.dumps({"prompt": "hello"})),
        ).fetchone()[0]
        job_id = created["job"]["id"]

        def finished() -> Any:
            row = conn.execute(
                "select status, result from public.jobs where id = %s", (job_id,)
            ).fetchone()
            return row if row[0] != "pending" and row[0] != "processing" else None

        args = [sys.executable, "-m", "shared.worker", "--kinds", KIND]
        args += ["--handler", "check_handler:handle", "--poll-interval", "0.2"]
        variables = {"DATABASE_URL": database_url, "PYTHONPATH": str(work_dir / "handlers")}
        log = work_dir / "worker.log"
        with background(args, variables, log) as worker:
            status, result = wait_for("the job to finish", finished, worker, log)
            if (status, result) != ("completed", {"text": "checked: hello"}):
                raise CheckFailed(f"job ended {status} with {result}:\n{log.read_text()}")
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=WAIT_SECONDS)
    if code != 0 or '"event":"worker_stopped"' not in log.read_text():
        raise CheckFailed(f"worker exited {code} on SIGTERM:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_functions(database_url: str, work_dir: Path) -> None:
    step("functions/main.py loads; its targets serve with functions-framework")
    # main.py checks at import that a database is configured
    targets = run([sys.executable, "-c", LIST_TARGETS], {"DATABASE_URL": database_url}).split()
    if not targets:
        raise CheckFailed(f"{FUNCTIONS_MAIN} exports no target")
    secret, maintenance_token = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    variables = {
        "DATABASE_URL": database_url,
        "SUPABASE_JWT_SECRET": secret,
        "PIPELINE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
        "MAINTENANCE_TOKEN": maintenance_token,
        "PIPELINE": "queue",
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        user_id = add_user(conn, 7)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    claims = {"sub": str(user_id), "aud": "authenticated", "exp": expires}
    # Beyond the anonymous request every target gets: one call each through the token check and
    # the database, as a user and as the scheduler.
    authorized = {
        "credits": ("GET", jwt.encode(claims, secret, algorithm="HS256")),
        "maintenance": ("POST", maintenance_token),
    }
    for target in targets:
        port = free_port()
        args = [str(BIN / "functions-framework"), "--target", target]
        args += ["--source", str(FUNCTIONS_MAIN), "--host", "127.0.0.1", "--port", str(port)]
        log = work_dir / f"function-{target}.log"
        url = f"http://127.0.0.1:{port}/"
        with background(args, variables, log) as server:
            answer = wait_for("the function to answer", functools.partial(get, url), server, log)
            anonymous = (200,) if target in PUBLIC_TARGETS else (401, 405)
            seen = ["anonymous " + expect(target, answer, anonymous, log)]
            if target in authorized:
                method, token = authorized[target]
                headers = {"Authorization": f"Bearer {token}"}
                answer = httpx.request(method, url, headers=headers, timeout=10)
                seen.append("with its token " + expect(target, answer, (200,), log))
        step(f"functions-framework --target {target}: {', '.join(seen)}")


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def expect(target: str, response: httpx.Response, statuses: tuple[int, ...], log: Path) -> str:
    """Check the status is one of statuses and the body a JSON object (errors with a code)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if response.status_code not in statuses or body is None or (response.is_error and not code):
        raise CheckFailed(
            f"{target} answered {response.status_code} {response.text[:300]!r}\n{log.read_text()}"
        )
    return f"{response.request.method} {response.status_code}" + (f" {code}" if code else "")


def main(work_dir: Path, server_url: str) -> int:
    started = time.monotonic()
    try:
        step("python -m shared.worker --help")
        run([sys.executable, "-m", "shared.worker", "--help"])
        with scratch_database(server_url) as database_url:
            check_migrate(database_url)
            check_worker(database_url, work_dir)
            check_functions(database_url, work_dir)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"production-install check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"production-install check passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
