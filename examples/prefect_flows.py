"""One Prefect flow per demo kind of the dev server, served by one process (`flow.serve`):

    .venv-prefect/bin/python -m examples.prefect_flows  # prints PREFECT_DEPLOYMENTS=...

Each flow is a plain function decorated with `pipeline_flow`: it gets the attempt (its `params`
and `progress()`), returns the job's result, and raises to fail it (README, "Prefect pipelines").
"""

import time

from shared.pipeline import Attempt
from shared.pipeline.prefect import pipeline_flow

# Demo runs take a little time, so progress and cancellation can be watched.
STEPS = 4
STEP_SECONDS = 0.5
MAX_STEP_SECONDS = 30.0


def steps(attempt: Attempt, default_seconds: float = STEP_SECONDS) -> None:
    seconds = min(float(attempt.params.get("step_seconds", default_seconds)), MAX_STEP_SECONDS)
    for step in range(1, STEPS + 1):
        time.sleep(seconds)
        attempt.progress(100 * step / STEPS)


@pipeline_flow
def story(attempt: Attempt) -> dict:
    """A short generated story about params.prompt."""
    steps(attempt)
    topic = str(attempt.params.get("prompt") or "a robot who learns to paint")[:200]
    return {"story": f"Once upon a time there was {topic}. It tried, failed, and tried again."}


@pipeline_flow
def voice(attempt: Attempt) -> dict:
    """A voice-over: slower, long enough to cancel it from the Prefect UI."""
    steps(attempt, default_seconds=2 * STEP_SECONDS)
    return {"audio_url": f"https://example.com/voice/{attempt.job.job_id}.mp3"}


@pipeline_flow
def demo_fail(attempt: Attempt) -> dict:
    """Always fails, to show the refund."""
    raise RuntimeError("the demo_fail kind always fails (demo of the refund path)")


FLOWS = {"story": story, "voice": voice, "demo_fail": demo_fail}

if __name__ == "__main__":
    from prefect import serve

    # One deployment per kind, named after it; what the functions' PREFECT_DEPLOYMENTS must say:
    deployments = [flow.to_deployment(name=kind) for kind, flow in FLOWS.items()]
    ids = ",".join(f"{deployment.name}={deployment.apply()}" for deployment in deployments)
    print(f"PREFECT_DEPLOYMENTS={ids}", flush=True)
    serve(*deployments)
