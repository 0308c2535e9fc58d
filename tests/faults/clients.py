"""The users of a fault run: threads that buy (with Idempotency-Keys), replay, cancel and poll over
HTTP, retrying network errors and 5xx answers with the same key as a careful client would, and a
scheduler that calls `maintenance`. Every answer is recorded, with the request it answered."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# Pauses before each retry of a request that got no answer or a 5xx: ten tries over ~25 s.
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0)
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# What a client does next -> weight.
OPERATIONS = {"buy_push": 33, "buy_queue": 27, "poll": 20, "cancel": 12, "replay": 5, "reuse": 3}
TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Answer:
    """One HTTP exchange: what was asked, and what came back (status None: no answer)."""

    op: str
    client: int
    server: str
    key: str | None
    body: dict[str, Any] | None
    status: int | None
    code: str | None  # the error body's code, or the exception's name when there was no answer
    job: dict[str, Any] | None
    outcome: str | None
    balance: int | None
    replayed: bool
    final: bool  # the try the client believed (no retry followed)
    t: float
    seconds: float  # how long the exchange took

    @property
    def label(self) -> str:
        if self.status is None:
            return f"no answer ({self.code})"
        return f"{self.status} {self.code}" if self.code else str(self.status)


@dataclass
class Purchase:
    key: str
    body: dict[str, Any]
    server: str
    job_id: str | None = None


class Journal:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.lock = threading.Lock()

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)


def parse(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Caller:
    """HTTP with the retry rule, recording every try in the journal."""

    def __init__(self, journal: Journal, client: int, headers: dict[str, str]) -> None:
        self.journal = journal
        self.client = client
        self.headers = headers
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT)

    def call(
        self,
        op: str,
        server: tuple[str, str],
        method: str,
        path: str,
        *,
        key: str | None = None,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        retries: tuple[float, ...] = RETRY_DELAYS,
    ) -> Answer:
        name, base_url = server
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        for delay in (*retries, None):
            sent = time.monotonic()
            try:
                response = self.http.request(
                    method, base_url + path, json=body, params=query, headers=headers
                )
            except httpx.HTTPError as exc:
                status, data = None, {"error": {"code": type(exc).__name__}}
            else:
                status, data = response.status_code, parse(response)
            code = (data.get("error") or {}).get("code")
            # 503 pipeline_unavailable is an answer (the job failed and was refunded), not an outage
            retry = delay is not None and (
                status is None or (status >= 500 and code != "pipeline_unavailable")
            )
            answer = Answer(
                op=op,
                client=self.client,
                server=name,
                key=key,
                body=body,
                status=status,
                code=code,
                job=data.get("job"),
                outcome=data.get("outcome"),
                balance=data.get("balance"),
                replayed=data.get("replayed") is True,
                final=not retry,
                t=time.time(),
                seconds=time.monotonic() - sent,
            )
            self.journal.add(answer)
            if not retry:
                return answer
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.http.close()


class Client(threading.Thread):
    """One user: a seeded sequence of operations until `stopping` is set."""

    def __init__(
        self,
        number: int,
        token: str,
        seed: int,
        servers: dict[str, str],
        kinds: dict[str, list[str]],
        journal: Journal,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.number = number
        self.seed = seed
        self.servers = servers
        self.kinds = kinds
        self.stopping = stopping
        self.rng = random.Random(f"client:{seed}:{number}")
        self.caller = Caller(journal, number, {"Authorization": f"Bearer {token}"})
        self.purchases: list[Purchase] = []
        self.crashed: BaseException | None = None

    def run(self) -> None:
        actions: dict[str, Callable[[], None]] = {
            "buy_push": lambda: self.buy("push"),
            "buy_queue": lambda: self.buy("queue"),
            "poll": self.poll,
            "cancel": self.cancel,
            "replay": self.replay,
            "reuse": self.reuse,
        }
        try:
            while not self.stopping.is_set():
                op = self.rng.choices(list(OPERATIONS), weights=list(OPERATIONS.values()))[0]
                actions[op]()
                self.stopping.wait(self.rng.uniform(0.05, 0.4))
        except BaseException as exc:  # reported by the run: a client must never die silently
            self.crashed = exc
        finally:
            self.caller.close()

    def server(self, name: str | None = None) -> tuple[str, str]:
        name = name or self.rng.choice(sorted(self.servers))
        return name, self.servers[name]

    def buy(self, how: str) -> None:
        number = len(self.purchases)
        body = {
            "kind": self.rng.choice(self.kinds[how]),
            "params": {"seed": self.seed, "c": self.number, "n": number},
        }
        purchase = Purchase(f"fx-{self.seed}-{self.number}-{number}", body, self.server()[0])
        self.purchases.append(purchase)
        answer = self.generate(purchase)
        if answer.job:
            purchase.job_id = answer.job["id"]

    def generate(self, purchase: Purchase, body: dict[str, Any] | None = None) -> Answer:
        return self.caller.call(
            "generate",
            self.server(purchase.server),
            "POST",
            "/generate",
            key=purchase.key,
            body=body or purchase.body,
        )

    def pick(self) -> Purchase | None:
        recent = self.purchases[-10:]
        return self.rng.choice(recent) if recent else None

    def poll(self) -> None:
        purchase = self.pick()
        if purchase and purchase.job_id:
            query = {"job_id": purchase.job_id}
            self.caller.call("status", self.server(), "GET", "/status", query=query)

    def cancel(self) -> None:
        purchase = self.pick()
        if purchase and purchase.job_id:
            body = {"job_id": purchase.job_id}
            self.caller.call("cancel", self.server(), "POST", "/cancel", body=body)

    def replay(self) -> None:
        """The same request with the same key again: the same job, never a second charge."""
        purchase = self.pick()
        if purchase:
            answer = self.generate(purchase)
            if answer.job and purchase.job_id is None:
                purchase.job_id = answer.job["id"]

    def reuse(self) -> None:
        """Another request under a used key: refused (422), nothing charged."""
        purchase = self.pick()
        if purchase:
            params = {**purchase.body["params"], "reused": True}
            self.generate(purchase, {**purchase.body, "params": params})


class Maintenance(threading.Thread):
    """What a scheduler would do: POST /maintenance every `interval` seconds, to each server in
    turn (the next tick is the retry)."""

    def __init__(
        self, caller: Caller, servers: dict[str, str], stopping: threading.Event, interval: float
    ) -> None:
        super().__init__(name="maintenance", daemon=True)
        self.caller = caller
        self.servers = itertools.cycle(sorted(servers.items()))
        self.stopping = stopping
        self.interval = interval

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.once()

    def once(self) -> Answer:
        server = next(self.servers)
        return self.caller.call("maintenance", server, "POST", "/maintenance", retries=())
