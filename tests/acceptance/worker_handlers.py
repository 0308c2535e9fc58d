"""A scriptable handler for the worker tests, run inside real `python -m shared.worker` processes.

The job's params say what each attempt does: `{"plan": {"1": {"seconds": 3}, "*": {"fail":
"fatal"}}}` — work `seconds` (reporting progress), then fail ("fatal" or "retryable") or return.
Every start is appended to the file named by WORKER_RECORD_FILE as
`<job_id> <attempt> <pid> <unix time>`, so tests can see who ran which attempt and when.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from shared.worker import RetryableError

STEP_SECONDS = 0.05


def run(job: dict[str, Any], progress: Callable[[float], None]) -> dict[str, Any]:
    plan = job["params"].get("plan", {})
    step = plan.get(str(job["attempt"]), plan.get("*", {}))
    record = os.environ.get("WORKER_RECORD_FILE")
    if record:
        with open(record, "a") as f:
            f.write(f"{job['id']} {job['attempt']} {os.getpid()} {time.time()}\n")
    # counted steps, not a deadline: a process stopped with SIGSTOP still has its work left after
    steps = round(float(step.get("seconds", 0)) / STEP_SECONDS)
    for done in range(1, steps + 1):
        time.sleep(STEP_SECONDS)
        progress(100 * done / steps)
    if step.get("fail") == "retryable":
        raise RetryableError(f"transient failure on attempt {job['attempt']}")
    if step.get("fail") == "fatal":
        raise ValueError(f"fatal failure on attempt {job['attempt']}")
    return {"attempt": job["attempt"], "pid": os.getpid()}
