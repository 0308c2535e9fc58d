"""Deployments for the Prefect end-to-end tests: the example flows plus a slow one.

    python -m tests.prefect.flows register          # create every deployment, print {kind: id}
    python -m tests.prefect.flows serve story slow  # serve these kinds' deployments (a runner)

Each job kind has its own deployment, named after the kind (PREFECT_DEPLOYMENTS maps them).
"""

import json
import os
import sys
import time
from pathlib import Path

from prefect import serve

from examples.prefect_flows import FLOWS
from shared.pipeline import Attempt
from shared.pipeline.prefect import pipeline_flow

# Under a third of the test kinds' shortest lease (tests/prefect/conftest.py).
HEARTBEAT_SECONDS = 1.0


@pipeline_flow(heartbeat_seconds=HEARTBEAT_SECONDS)
def slow(attempt: Attempt) -> dict:
    """`params.steps` steps of `params.step_seconds`; its pid goes to `params.pid_dir`."""
    params = attempt.params
    if pid_dir := params.get("pid_dir"):
        pid_file = Path(pid_dir) / f"{attempt.job.job_id}-{attempt.job.attempt}.pid"
        pid_file.write_text(str(os.getpid()))
    steps = int(params.get("steps", 4))
    for step in range(1, steps + 1):
        time.sleep(float(params.get("step_seconds", 0.5)))
        attempt.progress(100 * step / steps)
    return {"attempt": attempt.job.attempt}


DEPLOYMENTS = {
    **FLOWS,
    "slow": slow,
    "slow_once": slow,
    "slow_retry": slow,
    # never served by the shared runner: its runs wait until a test serves it
    "late": FLOWS["story"],
}


def main(command: str, *kinds: str) -> None:
    if command == "register":
        ids = {
            kind: str(flow.to_deployment(name=kind).apply()) for kind, flow in DEPLOYMENTS.items()
        }
        print(json.dumps(ids), flush=True)
    elif command == "serve":
        serve(*(DEPLOYMENTS[kind].to_deployment(name=kind) for kind in kinds))
    else:
        raise SystemExit(f"unknown command {command!r}: register or serve")


if __name__ == "__main__":
    main(*sys.argv[1:])
