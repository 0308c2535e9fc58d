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


def story(job: dict[str, Any], progress: Callable[[float], None]) -> dict[str, Any]:
    """Writes a tiny story in STEPS steps of `params.step_seconds` (default 0.5 s)."""
    params = job["params"]
    topic = str(params.get("topic", "a lighthouse keeper"))[:200]
    step_seconds = min(float(params.get("step_seconds", 0.5)), 10.0)
    for step in range(1, STEPS + 1):
        time.sleep(step_seconds)
        progress(100 * step / STEPS)
    return {
        "text": f"Once upon a time there was {topic}. It ended well (attempt {job['attempt']})."
    }


def rate_limited(job: dict[str, Any]) -> dict[str, Any]:
    """Always fails as transient: retried until the kind's max_attempts, then refunded."""
    raise RetryableError(f"upstream rate limit on attempt {job['attempt']} (demo)")
