"""Scenario: Python CPU per HTTP request, `generate` next to a hello-world target, in one process.

Both targets are built with `functions_framework.create_app(target, source)` (the WSGI app gunicorn
serves): `generate` from functions/main.py on a fresh copy of the core data set (PIPELINE=queue, so
no dispatch; HS256 user tokens minted here as Supabase Auth would), `hello` from
bench/hello_function.py. Each request is a direct WSGI call with an environ built beforehand, so
only the app's own work is timed: `time.thread_time()` around the call and the reading of its
body. The event log line is formatted and written (to /dev/null).

Series, in blocks of BLOCK requests taking turns within each round:
- `hello`: GET, "Hello, World!".
- `hello_wait`: the same after one `time.sleep` as long as generate's database calls took (the
  mean wall time of the last generate block). It measures what a single idle wait costs a request
  in CPU here: on these virtual machines the code that runs after a thread wakes runs several
  times slower, and thread_time counts it (`wait_cost` = hello_wait - hello).
- `generate`: POST {"kind": "bench"} for one of TOKEN_USERS users, each user always sending the
  same token (as a signed-in client does for the token's hour).
- `generate_new_token`: the same with a token never seen before on every request.
- `generate_canned`: `generate` with its database call answered from memory (an answer
  create_job gave in this run), so no wait: generate's own Python CPU outside the database,
  measured directly rather than by subtraction.

For generate, the CPU spent inside the database call (`db.rpc`: pool checkout, composing and
sending the statement, reading and decoding the answer; the thread sleeps while PostgreSQL works,
which thread_time does not count) is timed apart, so each figure has a whole-request value and an
"outside the database" value (whole request minus the CPU inside `db.rpc`). The wall time of
`db.rpc` is reported too. Ratios, each per round (mean CPU per request) and then the median of
rounds: whole request / hello, outside the database / hello, the whole request less the wait
cost / hello (generate's own work, the driver's included, as if its one wait were free), and
generate_canned / hello (the target: at most TARGET).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import functions_framework
from werkzeug.test import EnvironBuilder

from bench.harness import Context, user_id
from bench.scenarios.http_api import JWT_SECRET, WEBHOOK_SECRET
from shared.api import services
from shared.core.settings import ENVIRONMENT_VARIABLES
from shared.dev.tokens import mint_token

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE = ROOT / "functions" / "main.py"
HELLO_SOURCE = ROOT / "bench" / "hello_function.py"
BLOCK = 25  # requests of one series before the next series' turn
TOKEN_USERS = 100  # generate's users; each keeps one token for the whole run
GENERATE_BODY = b'{"kind": "bench"}'
SERIES = ("hello", "hello_wait", "generate", "generate_new_token", "generate_canned")
APPS = {"hello": "hello", "hello_wait": "hello_wait"}  # the others: generate
TARGET = 2.5
FIRST_WAIT_SECONDS = 0.004  # hello_wait's sleep until a generate block has been timed
EXPECTED_STATUS = {
    "hello": "200 OK",
    "hello_wait": "200 OK",
    "generate": "201 CREATED",
    "generate_new_token": "201 CREATED",
    "generate_canned": "201 CREATED",
}


class RpcTimer:
    """Wraps a Database's rpc: CPU (thread_time) and wall time spent inside it, summed."""

    def __init__(self, rpc: Callable[..., Any]) -> None:
        self.rpc = rpc
        self.cpu = 0.0
        self.wall = 0.0

    def __call__(self, name: str, **params: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return self.rpc(name, **params)
        finally:
            self.cpu += time.thread_time() - cpu
            self.wall += time.perf_counter() - wall


@contextmanager
def _environment(db_url: str) -> Iterator[None]:
    """The functions' environment for this scenario only; the previous one comes back after."""
    saved = {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES}
    for name in ENVIRONMENT_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(
        DATABASE_URL=db_url,
        SUPABASE_JWT_SECRET=JWT_SECRET,
        PIPELINE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        PIPELINE="queue",
    )
    services.reset()
    try:
        yield
    finally:
        services.reset()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _event_lines_to_devnull() -> Iterator[None]:
    """Format and write every event line, to /dev/null instead of stderr."""
    events = logging.getLogger("credit_jobs.events")
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(logging.Formatter("%(message)s"))
        saved = events.handlers, events.propagate
        events.handlers, events.propagate = [handler], False
        try:
            yield
        finally:
            events.handlers, events.propagate = saved


def _environ(method: str, headers: dict[str, str] | None = None, body: bytes = b"") -> dict:
    return EnvironBuilder(
        path="/", method=method, headers=headers, data=body, content_type="application/json"
    ).get_environ()


class Runner:
    def __init__(self, apps: dict[str, Any], timer: RpcTimer, users: int) -> None:
        self.apps = apps
        self.timer = timer
        self.canned: Any = None  # create_job's answer for generate_canned
        self.users = users
        self.tokens = {n: mint_token(user_id(n), JWT_SECRET) for n in range(1, users + 1)}
        self.next_user = 0
        self.wait = FIRST_WAIT_SECONDS
        self.samples: dict[str, dict[str, list[float]]] = {}

    def _environs(self, series: str) -> list[dict]:
        if series == "hello":
            return [_environ("GET") for _ in range(BLOCK)]
        if series == "hello_wait":
            return [_environ("GET") | {"bench.wait_seconds": self.wait} for _ in range(BLOCK)]
        environs = []
        for _ in range(BLOCK):
            self.next_user = self.next_user % self.users + 1
            if series != "generate_new_token":
                token = self.tokens[self.next_user]
            else:  # a claim of its own makes every token a new string
                fresh = {"session_id": str(uuid.uuid4())}
                token = mint_token(user_id(self.next_user), JWT_SECRET, **fresh)
            headers = {"Authorization": f"Bearer {token}"}
            environs.append(_environ("POST", headers, GENERATE_BODY))
        return environs

    def block(self, series: str, record: bool = True) -> None:
        """BLOCK requests of one series; each timed on its own."""
        database = self.timer.rpc
        if series == "generate_canned":
            self.timer.rpc = lambda name, **params: self.canned
        try:
            self._timed(series, record)
        finally:
            self.timer.rpc = database

    def _timed(self, series: str, record: bool) -> None:
        app = self.apps[APPS.get(series, "generate")]
        expected = EXPECTED_STATUS[series]
        seen: list[str] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            seen.append(status)

        samples = self.samples.setdefault(series, {"cpu": [], "rpc_cpu": [], "rpc_wall": []})
        for environ in self._environs(series):
            rpc_cpu, rpc_wall = self.timer.cpu, self.timer.wall
            started = time.thread_time()
            response = app(environ, start_response)
            try:
                for _chunk in response:
                    pass
            finally:
                getattr(response, "close", lambda: None)()
            cpu = time.thread_time() - started
            if seen[-1] != expected:
                raise RuntimeError(f"{series}: HTTP {seen[-1]}, expected {expected}")
            if record:
                samples["cpu"].append(cpu)
                samples["rpc_cpu"].append(self.timer.cpu - rpc_cpu)
                samples["rpc_wall"].append(self.timer.wall - rpc_wall)
        if series == "generate" and record:
            self.wait = statistics.mean(samples["rpc_wall"][-BLOCK:])

    def take(self) -> dict[str, dict[str, list[float]]]:
        taken, self.samples = self.samples, {}
        return taken


def _summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    n = len(samples["cpu"])
    outside = [c - r for c, r in zip(samples["cpu"], samples["rpc_cpu"], strict=True)]
    return {
        "requests": n,
        "cpu_us": round(sum(samples["cpu"]) / n * 1e6, 1),
        "cpu_p50_us": round(statistics.median(samples["cpu"]) * 1e6, 1),
        "outside_db_cpu_us": round(sum(outside) / n * 1e6, 1),
        "db_call_cpu_us": round(sum(samples["rpc_cpu"]) / n * 1e6, 1),
        "db_call_wall_us": round(sum(samples["rpc_wall"]) / n * 1e6, 1),
    }


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _median_summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("cpu_us", "cpu_p50_us", "outside_db_cpu_us", "db_call_cpu_us", "db_call_wall_us")
    return {key: round(statistics.median(r[key] for r in rounds), 1) for key in keys}


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.core_copy("cpu")
    try:
        with _environment(url), _event_lines_to_devnull():
            apps = {
                target: functions_framework.create_app(target, str(HELLO_SOURCE))
                for target in ("hello", "hello_wait")
            } | {"generate": functions_framework.create_app("generate", str(SOURCE))}
            users = min(TOKEN_USERS, ctx.config.users)
            runner = Runner(apps, RpcTimer(lambda name, **params: None), users)
            runner.block("hello", record=False)  # builds the services: then db can be wrapped
            db = services.services().db
            runner.timer = RpcTimer(db.rpc)
            db.rpc = runner.timer  # an instance attribute: only this process's services
            runner.canned = db.rpc("create_job", p_user_id=user_id(1), p_kind="bench")
            rounds = _measure(ctx, runner)
    finally:
        ctx.drop(url)
    by_series = {name: [r[name] for r in rounds] for name in SERIES}
    result: dict[str, Any] = {
        "block": BLOCK,
        "token_users": users,
        "cpu_per_request": {name: _median_summary(runs) for name, runs in by_series.items()},
        "rounds": rounds,
    }
    for name in ("generate", "generate_new_token"):
        result |= _ratios(name, by_series)
    result["generate_canned_over_hello"] = _median(
        [
            ours["outside_db_cpu_us"] / hello["cpu_us"]
            for ours, hello in zip(by_series["generate_canned"], by_series["hello"], strict=True)
        ]
    )
    result["wait_cost_us"] = round(
        statistics.median(
            w["cpu_us"] - h["cpu_us"]
            for h, w in zip(by_series["hello"], by_series["hello_wait"], strict=True)
        ),
        1,
    )
    ctx.log(
        f"    generate / hello CPU per request: {result['generate_over_hello']}"
        f" (outside the database {result['generate_outside_db_over_hello']}, less the wait's"
        f" cost {result['generate_net_of_wait_over_hello']}); new token each request"
        f" {result['generate_new_token_over_hello']}; database answered from memory"
        f" {result['generate_canned_over_hello']}"
    )
    return result


def _ratios(name: str, by_series: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """name's ratios to hello, each the median of the per-round ratios."""
    whole, outside, net = [], [], []
    rounds = zip(by_series[name], by_series["hello"], by_series["hello_wait"], strict=True)
    for ours, hello, hello_wait in rounds:
        wait_cost = hello_wait["cpu_us"] - hello["cpu_us"]
        whole.append(ours["cpu_us"] / hello["cpu_us"])
        outside.append(ours["outside_db_cpu_us"] / hello["cpu_us"])
        net.append((ours["cpu_us"] - wait_cost) / hello["cpu_us"])
    return {
        f"{name}_over_hello": _median(whole),
        f"{name}_outside_db_over_hello": _median(outside),
        f"{name}_net_of_wait_over_hello": _median(net),
    }


def _measure(ctx: Context, runner: Runner) -> list[dict[str, Any]]:
    cfg = ctx.config
    deadline = time.monotonic() + cfg.warmup
    runner.block("generate", record=False)
    while time.monotonic() < deadline:
        for series in SERIES:
            runner.block(series, record=False)
    rounds = []
    for round_no in range(1, cfg.runs + 1):
        deadline = time.monotonic() + cfg.seconds
        while True:
            for series in SERIES:
                runner.block(series)
            if time.monotonic() >= deadline:
                break
        taken = runner.take()
        summary = {name: _summary(taken[name]) for name in SERIES}
        rounds.append(summary)
        ctx.log(
            f"s8 HTTP CPU, round {round_no}/{cfg.runs}: "
            + ", ".join(f"{name} {s['cpu_us']:.0f} µs" for name, s in summary.items())
            + f" (generate outside the database {summary['generate']['outside_db_cpu_us']:.0f} µs)"
        )
    return rounds
