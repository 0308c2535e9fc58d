"""One structured JSON log line per key event, for operators (never tokens, secrets or bodies).

    log_event("job_created", job_id=..., user_id=..., attempt=1, outcome="charged")

prints `{"event": "job_created", "severity": "INFO", "job_id": "...", ...}` on the
`credit_jobs.events` logger. Cloud Logging reads `severity` and `message` from JSON lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from shared.core import jsoncodec

logger = logging.getLogger("credit_jobs.events")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    line = {"event": event, "severity": logging.getLevelName(level), "message": event}
    line.update({key: value for key, value in fields.items() if value is not None})
    logger.log(level, jsoncodec.dumps(line).decode())


def configure() -> None:
    """Emit event lines at INFO; print them bare on stderr unless the host configured logging."""
    logger.setLevel(logging.INFO)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
