"""A hostile webhook pipeline: `python -m tests.faults.pipeline --port P --log pipeline.jsonl`.

It receives the signed dispatches of `PIPELINE=webhook` (PIPELINE_WEBHOOK_SECRET from the
environment; an unsigned or badly signed one is refused and logged) and reports back to the
dispatch's callback URL with signed callbacks — badly, on purpose. Per dispatch, scripted from the
job's params (dice.py), it may:
- answer 202, 503, 500 although it runs the job, 504 (as a gateway would, running it or not);
  answer after the 10 s dispatch timeout, with or without running it; reset the connection;
  ignore a repeated dispatch (same webhook-id);
- report progress, then completed (sometimes with a partial or an impossible credits_used),
  failed (retryable or not), or nothing at all;
- send its final report twice, before its progress reports, much later (past the lease), for an
  attempt that is not the current one, or together with a contradicting final report.
Callbacks that get a 5xx or no answer are sent again (same body, same message id), as real
pipelines do. Moods set through the control endpoint (`POST /_control {"mood": "5xx" | "slow",
"seconds": S}`) make every dispatch fail or time out for a while; `{"calm": true}` makes it a
well-behaved pipeline (for the convergence phase). `GET /_control` says how much work is in flight.

Every dispatch and every callback answer is one JSON line of the log, read by the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from shared.core.errors import ApiError
from shared.push.dispatch import DISPATCH_TIMEOUT
from shared.push.webhooks import sign, verify
from tests.faults.dice import dice

# a "slow" answer comes after the dispatcher stopped waiting for it
SLOW_ANSWER_SECONDS = DISPATCH_TIMEOUT.read + 1.0
CALLBACK_TIMEOUT = httpx.Timeout(15.0, connect=3.0)
CALLBACK_RETRY_DELAYS = (0.3, 1.0, 2.0, 4.0, 8.0)
# answer to a dispatch: (what it answers, whether it runs the job) -> weight
ANSWERS = {
    ("accept", True): 68,
    ("refuse", False): 8,
    ("error", True): 4,
    ("gateway", True): 2,
    ("gateway", False): 2,
    ("slow", True): 6,
    ("slow", False): 3,
    ("reset", True): 3,
    ("reset", False): 4,
}
# HTTP status of each answer ("reset" closes the connection instead)
STATUSES = {"accept": 202, "refuse": 503, "error": 500, "gateway": 504, "slow": 202}
FINALS = {"completed": 72, "retryable": 10, "fatal": 6, "silent": 9, "impossible": 3}


class HostilePipeline:
    def __init__(self, secret: str, log_path: Path) -> None:
        self.secret = secret
        self.log_file = log_path.open("a")
        self.lock = threading.Lock()
        self.http = httpx.Client(timeout=CALLBACK_TIMEOUT)
        self.mood = "normal"
        self.mood_until = 0.0
        self.calm = False
        self.seen: Counter[str] = Counter()
        self.active = 0
        self.counts: Counter[str] = Counter()

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.time(), **fields}, default=str)
        with self.lock:
            self.counts[event] += 1
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def busy(self, delta: int) -> None:
        with self.lock:
            self.active += delta

    def current_mood(self) -> str:
        if self.calm:
            return "calm"
        return self.mood if time.monotonic() < self.mood_until else "normal"

    # -- dispatches -------------------------------------------------------------------------

    def dispatch(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[str, int]:
        """Decide and start what happens to one dispatch; returns (answer, HTTP status)."""
        try:
            verify(self.secret, body, dict(request.headers))
        except ApiError as exc:
            self.record("bad_signature", message=exc.message)
            return "unsigned", 401
        payload = json.loads(body)
        message_id = request.headers["webhook-id"]
        with self.lock:
            self.seen[message_id] += 1
            repeat = self.seen[message_id] - 1
        params = payload.get("params") or {}
        rng = dice(params, "dispatch", payload["attempt"], repeat)
        mood = self.current_mood()
        if mood == "calm":
            answer, runs = "accept", True
        elif mood == "5xx":
            answer, runs = "refuse", False
        elif mood == "slow":
            answer, runs = "slow", rng.random() < 0.5
        elif repeat and rng.random() < 0.5:
            answer, runs = "accept", False  # dropped as a duplicate by its webhook-id
        else:
            answer, runs = rng.choices(list(ANSWERS), weights=list(ANSWERS.values()))[0]
        self.record(
            "dispatch",
            job_id=payload["job_id"],
            attempt=payload["attempt"],
            repeat=repeat,
            mood=mood,
            answer=answer,
            runs=runs,
        )
        if runs:
            script = dice(params, "script", payload["attempt"], repeat)
            threading.Thread(target=self.run_job, args=(payload, script, mood), daemon=True).start()
        if answer == "slow":
            time.sleep(SLOW_ANSWER_SECONDS)
        return answer, STATUSES.get(answer, 0)

    # -- reports ------------------------------------------------------------------------------

    def run_job(self, payload: dict[str, Any], rng: random.Random, mood: str) -> None:
        self.busy(1)
        try:
            if mood == "calm":
                job = JobScript(self, payload, rng, {})
                job.send_all([job.report("processing", progress=0.0), job.final("completed")])
            else:
                run_hostile(self, payload, rng)
        finally:
            self.busy(-1)


class JobScript:
    """The reports of one dispatched attempt, sent to its callback URL."""

    def __init__(
        self,
        pipeline: HostilePipeline,
        payload: dict[str, Any],
        rng: random.Random,
        tags: dict[str, bool],
    ) -> None:
        self.pipeline = pipeline
        self.payload = payload
        self.rng = rng
        self.tags = [name for name, on in tags.items() if on]

    def report(self, status: str, **fields: Any) -> dict[str, Any]:
        job = {"job_id": self.payload["job_id"], "attempt": self.payload["attempt"]}
        return job | {"status": status, **fields}

    def final(self, kind: str) -> dict[str, Any]:
        attempt = self.payload["attempt"]
        if kind in ("retryable", "fatal"):
            error = f"pipeline: {kind} failure of attempt {attempt}"
            return self.report("failed", error=error, retryable=kind == "retryable")
        result = {"pipeline": True, "attempt": attempt, "nonce": self.rng.randrange(1 << 30)}
        report = self.report("completed", result=result)
        if kind == "impossible":
            report["credits_used"] = 1_000_000  # more than any price: refused with a 400
        elif self.rng.random() < 0.3:
            report["credits_used"] = self.rng.randint(0, 3)  # partial capture (prices are >= 3)
        return report

    def send_all(self, reports: list[dict[str, Any]]) -> None:
        for report in reports:
            self.deliver(report)
            time.sleep(self.rng.uniform(0.05, 0.8))

    def deliver(self, report: dict[str, Any]) -> None:
        """POST one signed report until it gets an answer below 500 (or the tries run out)."""
        body = json.dumps(report)
        message_id = f"msg_{uuid.uuid4().hex}"
        secret = self.pipeline.secret
        for delay in (*CALLBACK_RETRY_DELAYS, None):
            headers = sign(secret, message_id, body) | {"Content-Type": "application/json"}
            answer: dict[str, Any] = {}
            try:
                response = self.pipeline.http.post(
                    self.payload["callback_url"], content=body, headers=headers
                )
            except httpx.HTTPError as exc:
                status, answer = None, {"error": {"code": type(exc).__name__}}
            else:
                status = response.status_code
                try:
                    answer = response.json()
                except ValueError:
                    answer = {"error": {"code": "not_json"}}
            job = answer.get("job") or {}
            self.pipeline.record(
                "callback",
                job_id=report["job_id"],
                attempt=report["attempt"],
                status=report["status"],
                result=report.get("result"),
                http=status,
                outcome=answer.get("outcome"),
                error=(answer.get("error") or {}).get("code"),
                job_status=job.get("status"),
                job_attempt=job.get("attempt"),
                tags=self.tags,
            )
            if (status is not None and status < 500) or delay is None:
                return
            time.sleep(delay)


def run_hostile(pipeline: HostilePipeline, payload: dict[str, Any], rng: random.Random) -> None:
    tags = {
        "duplicate": rng.random() < 0.2,
        "out_of_order": rng.random() < 0.15,
        "late": rng.random() < 0.1,
        "stale": rng.random() < 0.1,
        "contradicting": rng.random() < 0.05,
    }
    job = JobScript(pipeline, payload, rng, tags)
    steps = rng.randint(0, 3)
    progress = [
        job.report("processing", progress=round(100 * k / (steps + 1), 1)) for k in range(steps)
    ]
    final_kind = rng.choices(list(FINALS), weights=list(FINALS.values()))[0]
    time.sleep(rng.uniform(0.0, 0.5))
    if final_kind == "silent":
        job.send_all(progress)
        return
    final = job.final(final_kind)
    if tags["out_of_order"]:
        job.send_all([final, *progress])
    else:
        job.send_all(progress)
        if tags["late"]:
            time.sleep(rng.uniform(6.0, 20.0))
        if tags["contradicting"]:
            other = job.final("fatal" if final["status"] == "completed" else "completed")
            threading.Thread(target=job.deliver, args=(other,), daemon=True).start()
        job.deliver(final)
    if tags["duplicate"]:
        time.sleep(rng.uniform(0.0, 0.5))
        job.deliver(final)
    if tags["stale"]:
        job.deliver(final | {"attempt": payload["attempt"] - 1 if payload["attempt"] > 1 else 2})


def _reset(request: BaseHTTPRequestHandler) -> None:
    request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.close_connection = True


def handler_for(pipeline: HostilePipeline) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # every dispatch is in the JSON log already

        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with pipeline.lock:
                stats = {"active": pipeline.active, "counts": dict(pipeline.counts)}
            self.answer(200, stats)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_control":
                command = json.loads(body)
                if "calm" in command:
                    pipeline.calm = bool(command["calm"])
                else:
                    pipeline.mood = command["mood"]
                    pipeline.mood_until = time.monotonic() + float(command["seconds"])
                self.do_GET()
                return
            pipeline.busy(1)
            try:
                answer, status = pipeline.dispatch(self, body)
            finally:
                pipeline.busy(-1)
            if answer == "reset":
                _reset(self)
                return
            try:
                self.answer(status, {"accepted": status == 202})
            except OSError:
                self.close_connection = True  # a slow answer: the dispatcher gave up waiting

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.pipeline")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, one per event")
    args = parser.parse_args()
    pipeline = HostilePipeline(os.environ["PIPELINE_WEBHOOK_SECRET"], args.log)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(pipeline))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
