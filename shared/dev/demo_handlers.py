"""Demo handlers so a worker runs out of the box against the dev database.

python -m shared.dev.worker --kinds story --handler shared.dev.demo_handlers:story
python -m shared.dev.worker --kinds story --handler shared.dev.demo_handlers:rate_limited
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.worker import RetryableError

STEPS = 5
DEFAULT_PROMPT = "a robot who learns to paint"


def story_result(params: dict[str, Any]) -> dict[str, str]:
    """The demo `story` kind's result, whichever pipeline runs it: a story about `params.prompt`."""
    prompt = str(params.get("prompt") or DEFAULT_PROMPT)[:200]
    return {"story": f"Once upon a time there was {prompt}. It tried, failed, and tried again."}


def story(job: dict[str, Any], progress: Callable[[float], None]) -> dict[str, Any]:
    """Writes story_result in STEPS steps of `params.step_seconds` (default 0.5 s)."""
    params = job["params"]
    step_seconds = min(float(params.get("step_seconds", 0.5)), 10.0)
    for step in range(1, STEPS + 1):
        time.sleep(step_seconds)
        progress(100 * step / STEPS)
    return story_result(params)


def rate_limited(job: dict[str, Any]) -> dict[str, Any]:
    """Always fails as transient: retried until the kind's max_attempts, then refunded."""
    raise RetryableError(f"upstream rate limit on attempt {job['attempt']} (demo)")
