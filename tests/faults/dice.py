"""Seeded choices per purchase: the pipeline and the queue handler script a job from its params.

Clients put `{"seed", "c", "n"}` (the run's seed, client number, purchase number) in every job's
params, so a seed gives each purchase the same hostile script in every run.
"""

from __future__ import annotations

import random
from typing import Any


def dice(params: dict[str, Any], *salt: object) -> random.Random:
    parts = (params.get("seed"), params.get("c"), params.get("n"), *salt)
    return random.Random(":".join(str(part) for part in parts))
