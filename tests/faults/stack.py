"""Everything a fault run starts, wired together:

    clients ──HTTP──> gunicorn "webhook" (PIPELINE=webhook) ──dispatch──> hostile pipeline
            ──HTTP──> gunicorn "queue"   (PIPELINE=queue)   ──dispatch──┘    │ callbacks
    gunicorn servers, queue workers ──TCP──> proxy ──TCP──> PostgreSQL       ▼ (to either server)

Every kind names its pipeline (job_kinds.pipeline: push kinds `webhook`, the others `queue`),
and both servers configure the webhook pipeline, so either serves every kind: two deployments
with different defaults on one database. The checks read PostgreSQL directly, not via the proxy.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from shared.migrate import migrate
from tests.faults.faults import pipeline_control, proxy_command
from tests.faults.procs import (
    HOST,
    Child,
    Cluster,
    Gunicorn,
    answers_http,
    child_environment,
    free_port,
    python_module,
    wait_until,
)
from tests.integration.http_helpers import JWT_SECRET, MAINTENANCE_TOKEN, WEBHOOK_SECRET, token

DATABASE = "credit_jobs"
# kind -> (cost, max_attempts, lease_seconds, retry_delay_seconds, dispatch_timeout_seconds).
# Short leases and deadlines, so stalls are noticed and the run converges quickly; the start
# deadline outlasts the longest database outage, so a job left behind by one is started again.
PUSH_KINDS = {"fx_push": (7, 3, 6, 1, 60), "fx_push_once": (3, 1, 6, 0, 45)}
QUEUE_KINDS = {"fx_queue": (5, 3, 5, 1, 60), "fx_queue_once": (2, 1, 5, 0, 60)}
KINDS = {"push": sorted(PUSH_KINDS), "queue": sorted(QUEUE_KINDS)}
RICH_BALANCE = 1_000_000
# the first client's user runs out of credits early, so purchases are refused too
POOR_BALANCE = 60
TOKEN_SECONDS = 7 * 86400


class Stack:
    def __init__(
        self,
        run_dir: Path,
        *,
        web_workers: int,
        web_threads: int,
        queue_workers: int,
        worker_concurrency: int,
        pg_bin: Path | None,
    ) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(run_dir / "pg", free_port(), pg_bin)
        self.proxy_port, self.control_port = free_port(), free_port()
        self.pipeline_port = free_port()
        self.pipeline_url = f"http://{HOST}:{self.pipeline_port}"
        self.pipeline_log = self.logs / "pipeline.jsonl"
        base = child_environment(
            DATABASE_URL=self.cluster.url(DATABASE, port=self.proxy_port),
            SUPABASE_JWT_SECRET=JWT_SECRET,
            PIPELINE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            MAINTENANCE_TOKEN=MAINTENANCE_TOKEN,
        )
        proxy = python_module(
            "tests.faults.proxy", "--listen", f"{HOST}:{self.proxy_port}",
            "--target", f"{HOST}:{self.cluster.port}", "--control", str(self.control_port),
        )  # fmt: skip
        self.proxy = Child("proxy", proxy, child_environment(), self.logs / "proxy.log")
        pipeline = python_module(
            "tests.faults.pipeline", "--port", str(self.pipeline_port),
            "--log", str(self.pipeline_log),
        )  # fmt: skip
        self.pipeline = Child(
            "pipeline",
            pipeline,
            child_environment(PIPELINE_WEBHOOK_SECRET=WEBHOOK_SECRET),
            self.logs / "pipeline.log",
        )
        self.servers = {}
        for default in ("webhook", "queue"):
            port = free_port()
            env = base | {
                "PIPELINE": default,
                "PIPELINE_URL": self.pipeline_url,
                "CALLBACK_URL": f"http://{HOST}:{port}/status",
            }
            log = self.logs / f"gunicorn-{default}.log"
            self.servers[default] = Gunicorn(default, port, web_workers, web_threads, env, log)
        worker = python_module(
            "shared.worker", "--kinds", ",".join(QUEUE_KINDS),
            "--handler", "tests.faults.handlers:run", "--concurrency", str(worker_concurrency),
            "--poll-interval", "0.2", "--grace-seconds", "5",
        )  # fmt: skip
        self.workers = [
            Child(
                f"worker-{n}",
                [*worker, "--worker-id", f"worker-{n}"],
                base,
                self.logs / f"worker-{n}.log",
            )
            for n in range(1, queue_workers + 1)
        ]
        self.started: list[Child] = []

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.init()
        self.cluster.start()
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute(f"create database {DATABASE}")
        migrate(self.db_url)
        self.add_kinds()
        for child in (self.proxy, self.pipeline, *self.servers.values(), *self.workers):
            child.start()
            self.started.append(child)
        wait_until(lambda: self.proxy_ready(), "the proxy")
        wait_until(answers_http(f"{self.pipeline_url}/_control"), "the pipeline")
        for server in self.servers.values():
            wait_until(server.ready, f"gunicorn {server.name}", timeout=90)

    def stop(self) -> None:
        for child in reversed(self.started):
            child.stop()
        if self.cluster.running():
            self.cluster.stop("fast")

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the database -------------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        """Straight to PostgreSQL, for setup and the checks."""
        return self.cluster.url(DATABASE)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.db_url, autocommit=True)

    def add_kinds(self) -> None:
        with self.connect() as conn:
            for pipeline, kinds in (("webhook", PUSH_KINDS), ("queue", QUEUE_KINDS)):
                for kind, values in kinds.items():
                    conn.execute(
                        "insert into public.job_kinds (kind, cost, max_attempts, lease_seconds,"
                        " retry_delay_seconds, dispatch_timeout_seconds, pipeline, description)"
                        " values (%s, %s, %s, %s, %s, %s, %s, 'fault-injection suite')",
                        (kind, *values, pipeline),
                    )

    def add_users(self, count: int) -> list[tuple[uuid.UUID, str]]:
        """(user id, bearer token) of `count` new users with credits."""
        users = []
        with self.connect() as conn:
            for number in range(count):
                user_id = uuid.uuid4()
                conn.execute(
                    "insert into auth.users (id, email) values (%s, %s)",
                    (user_id, f"client-{number}@faults.test"),
                )
                conn.execute(
                    "select public.admin_grant_credits(%s, %s, 'fault-injection suite')",
                    (user_id, POOR_BALANCE if number == 0 else RICH_BALANCE),
                )
                expires = int(time.time()) + TOKEN_SECONDS
                users.append((user_id, token(user_id, secret=JWT_SECRET, exp=expires)))
        return users

    def in_flight(self) -> int:
        with self.connect() as conn:
            row = conn.execute(
                "select count(*) from public.jobs where status in ('pending', 'processing')"
            ).fetchone()
        return row[0]

    # -- what the injector acts on ------------------------------------------------------------

    def gunicorn_worker(self, target: int) -> int | None:
        names = sorted(self.servers)
        server = self.servers[names[target % len(names)]]
        pids = server.worker_pids()
        return pids[(target // len(names)) % len(pids)] if pids else None

    def queue_worker(self, target: int) -> Child:
        return self.workers[target % len(self.workers)]

    def proxy_command(self, command: str) -> dict[str, Any]:
        answer = proxy_command(self.control_port, command)
        if not answer.startswith("ok "):
            raise RuntimeError(f"proxy answered {answer!r} to {command!r}")
        return json.loads(answer[3:])

    def proxy_ready(self) -> bool:
        try:
            self.proxy_command("stats")
        except OSError:
            return False
        return True

    def pipeline_mood(self, mood: str, seconds: float) -> None:
        pipeline_control(self.pipeline_url, {"mood": mood, "seconds": seconds})

    def calm(self) -> None:
        """After the faults: everything running, healed, and a pipeline that behaves."""
        self.proxy_command("heal")
        if not self.cluster.running():
            self.cluster.start()
        for worker in self.workers:
            if not worker.alive():
                worker.start()
        pipeline_control(self.pipeline_url, {"calm": True})

    def pipeline_active(self) -> int:
        return httpx.get(f"{self.pipeline_url}/_control", timeout=10).json()["active"]


def events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log (a line cut short by a SIGKILL, and any other text, is skipped)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found
