"""What every scenario gets: the sizes to use, the server, progress output, and the core data set
(10,000 users with credits and the bench job kinds) as a template database to copy per measurement.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from bench import load
from bench.load import Result, median
from bench.pgbench import Pgbench
from bench.server import Server
from shared.migrate import migrate

# Deterministic user ids, so pgbench scripts can compute them too: user n -> ...-8000-<n in hex>.
USER_ID_SQL = "('00000000-0000-4000-8000-' || lpad(to_hex({n}), 12, '0'))::uuid"
USER_BALANCE = 1_000_000_000  # never the limit in throughput runs

# kind, cost, max_attempts: `bench` for throughput, `bench_free` for bulk-loaded history (cost 0,
# so no ledger entries are needed to keep balances consistent), `bench_reap` fails on its first
# stall so reaping takes the refund path.
KINDS = (("bench", 1, 3), ("bench_free", 0, 3), ("bench_reap", 1, 1))
# A jobs table with history, as any live deployment has: on a just-migrated, empty one each
# connection plans its statements for no rows (sequential scans) and keeps those plans while the
# measurement fills the table. Every copy has it; users 3..102 own it, so users 1 and 2 (the hot
# account, the granted user) and their rows are untouched.
HISTORY_JOBS = 10_000
SEED_HISTORY = (
    "with p as (insert into public.projects (user_id, title)"
    " select " + USER_ID_SQL.format(n="n") + ", 'history'"
    " from generate_series(3, least(%(users)s, 102)) n returning id, user_id)"
    " insert into public.jobs (user_id, project_id, kind, status, attempt, cost, credits_used,"
    "  created_at, updated_at, started_at, finished_at)"
    " select p.user_id, p.id, 'bench_free', 'completed', 1, 0, 0, now(), now(), now(), now()"
    " from p cross join generate_series(1, %(per_user)s)"
)


def user_id(n: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012x}")


@dataclass
class Config:
    runs: int = 3  # each figure is the median of this many measurements
    seconds: float = 10.0
    warmup: float = 1.0
    clients: list[int] = field(default_factory=lambda: [1, 8, 32])
    hot_clients: int = 8
    users: int = 10_000
    pgbench_scale: int = 50  # >= 32 branches: tpcb-like is not just waiting on branch locks
    history_jobs: int = 1_000_000
    history_heavy_jobs: int = 100_000
    history_samples: int = 500
    page_size: int = 20
    stalled_jobs: int = 100_000
    reap_batches: list[int] = field(default_factory=lambda: [100, 1000])
    foreground_clients: int = 8
    flat_backlogs: list[int] = field(default_factory=lambda: [0, 100_000, 1_000_000])
    flat_samples: int = 300
    fair_heavy_jobs: int = 10_000
    fair_other_users: int = 100
    scaling_jobs: int = 10_000_000
    scaling_days: int = 365
    scaling_jobs_per_purchase: int = 50
    scaling_chunk: int = 500_000
    scaling_samples: int = 1000
    overdraw_users: int = 20
    overdraw_jobs_per_user: int = 10
    overdraw_attempts_per_client: int = 60
    http_workers: int = 2
    http_threads: int = 8

    @classmethod
    def quick(cls) -> Config:
        """Tiny sizes: checks that every scenario runs, measures nothing worth reporting."""
        return cls(
            runs=1,
            seconds=1.0,
            warmup=0.0,
            clients=[1, 4],
            hot_clients=4,
            users=50,
            pgbench_scale=1,
            history_jobs=3000,
            history_heavy_jobs=1500,
            history_samples=20,
            stalled_jobs=300,
            reap_batches=[100],
            foreground_clients=4,
            flat_backlogs=[0, 300, 1500],
            flat_samples=10,
            fair_heavy_jobs=300,
            fair_other_users=20,
            scaling_jobs=3000,
            scaling_jobs_per_purchase=20,
            scaling_chunk=1000,
            scaling_samples=10,
            overdraw_users=5,
            overdraw_attempts_per_client=20,
            http_workers=1,
            http_threads=4,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Context:
    def __init__(self, server: Server, config: Config, prefix: str) -> None:
        self.server = server
        self.config = config
        self.prefix = prefix
        self.started = time.monotonic()
        self.core_template = f"{prefix}_core"
        self.pgbench_db = f"{prefix}_pgbench"
        self._core_ready = False
        self._pgbench_ready = False

    def log(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)

    def measure(self, url: str, op: str, clients: int, **kwargs: Any) -> tuple[Result, Any]:
        """bench.load.measure, right after a checkpoint so every measurement starts alike."""
        self.server.checkpoint()
        return load.measure(url, op, clients, **kwargs)

    def run_pgbench(self, url: str | None, clients: int, **kwargs: Any) -> Result:
        """One timed pgbench run (see pgbench()), right after a checkpoint."""
        bench = self.pgbench(url)
        self.server.checkpoint()
        return bench.run(clients, self.config.seconds, **kwargs)

    def record(self, label: str, result: Result) -> dict[str, Any]:
        """Print one measurement as progress and return its summary."""
        errors = f"  errors {dict(result.errors)}" if result.errors else ""
        self.log(
            f"    {label:<44} {result.rate:9.1f}/s  p50 {result.p50_ms:7.2f} ms"
            f"  p99 {result.p99_ms:7.2f} ms{errors}"
        )
        return result.summary()

    def core_copy(self, name: str) -> str:
        """A fresh copy of the core data set (migrated, users with credits); returns its URL."""
        if not self._core_ready:
            self._build_core()
        return self.server.create_database(f"{self.prefix}_{name}", template=self.core_template)

    def drop(self, url_or_name: str) -> None:
        name = url_or_name.rsplit("/", 1)[-1].split("?", 1)[0]
        self.server.drop_database(name)

    def pgbench(self, url: str | None = None) -> Pgbench:
        """pgbench on `url`, or on the tpcb database (initialised at the configured scale)."""
        if url is None and not self._pgbench_ready:
            scale = self.config.pgbench_scale
            self.log(f"initialising pgbench tpcb tables, scale {scale} ...")
            db_url = self.server.create_database(self.pgbench_db)
            Pgbench(self.server.pgbench, db_url).init(scale)
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("create table bench_hot_row (id int primary key, n bigint not null)")
                conn.execute("insert into bench_hot_row values (1, 0)")
            self._pgbench_ready = True
        return Pgbench(self.server.pgbench, url or self.server.db_url(self.pgbench_db))

    def _build_core(self) -> None:
        users = self.config.users
        self.log(f"building the core data set: migrations, {users} users with credits ...")
        url = self.server.create_database(self.core_template)
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for kind, cost, max_attempts in KINDS:
                conn.execute(
                    "insert into public.job_kinds (kind, cost, max_attempts, lease_seconds,"
                    " retry_delay_seconds) values (%s, %s, %s, 300, 0)",
                    (kind, cost, max_attempts),
                )
            conn.execute(
                "insert into auth.users (id, email) select "
                + USER_ID_SQL.format(n="n")
                + ", 'user' || n || '@bench.test' from generate_series(1, %s) n",
                (users,),
            )
            conn.execute(
                "select count(public.admin_grant_credits(id, %s, 'bench')) from auth.users",
                (USER_BALANCE,),
            )
            per_user = max(1, HISTORY_JOBS // max(1, min(users, 102) - 2))
            conn.execute(SEED_HISTORY, {"users": users, "per_user": per_user})
            conn.execute("vacuum analyze")
        self._core_ready = True


def medians(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """Median rate / p50 / p99 of several measurement summaries."""
    return {
        "rate": round(median([s["rate"] for s in summaries]), 1),
        "p50_ms": round(median([s["p50_ms"] for s in summaries]), 3),
        "p99_ms": round(median([s["p99_ms"] for s in summaries]), 3),
    }


def ratio(ours: float, reference: float) -> float | None:
    return round(ours / reference, 3) if reference else None


class Series:
    """Measurement summaries by series name and client count, one per round."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[int, list[dict[str, Any]]]] = {}

    def add(self, name: str, clients: int, summary: dict[str, Any]) -> None:
        self.runs.setdefault(name, {}).setdefault(clients, []).append(summary)

    def rate(self, name: str, clients: int) -> float:
        return medians(self.runs[name][clients])["rate"]

    def paired_ratio(self, name: str, reference: str, clients: int) -> float | None:
        """Median over rounds of name's rate / reference's rate in the same round."""
        pairs = zip(self.runs[name][clients], self.runs[reference][clients], strict=True)
        ratios = [r for ours, ref in pairs if (r := ratio(ours["rate"], ref["rate"])) is not None]
        return round(median(ratios), 3) if ratios else None

    def as_dict(self) -> dict[str, Any]:
        return {
            name: {
                str(clients): {"median": medians(runs), "runs": runs}
                for clients, runs in by_clients.items()
            }
            for name, by_clients in self.runs.items()
        }
