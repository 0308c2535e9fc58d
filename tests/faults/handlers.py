"""The queue workers' handler (`--handler tests.faults.handlers:run`): scripted per attempt by
the job's params (see dice.py): mostly a short piece of work, sometimes a long one, a transient
failure (retried while attempts remain) or a fatal one (refunded)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from shared.worker import RetryableError
from tests.faults.dice import dice

STEP_SECONDS = 0.1


def run(job: dict[str, Any], progress: Callable[[float], None]) -> dict[str, Any]:
    rng = dice(job["params"], "worker", job["attempt"])
    outcome = rng.choices(["ok", "long", "retryable", "fatal"], weights=[78, 8, 9, 5])[0]
    seconds = rng.uniform(3, 8) if outcome == "long" else rng.uniform(0.1, 1.5)
    # counted steps, not a deadline: a worker stopped with SIGSTOP still has its work left after
    steps = max(1, round(seconds / STEP_SECONDS))
    for done in range(1, steps + 1):
        time.sleep(STEP_SECONDS)
        progress(100 * done / steps)
    if outcome == "retryable":
        raise RetryableError(f"transient failure on attempt {job['attempt']}")
    if outcome == "fatal":
        raise ValueError(f"fatal failure on attempt {job['attempt']}")
    return {"worker": True, "job": job["id"], "attempt": job["attempt"], "pid": os.getpid()}
