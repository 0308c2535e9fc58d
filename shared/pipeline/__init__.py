"""What a pipeline imports to report on the jobs pushed to it (docs/pipelines.md).

- `shared.pipeline.client`: plain Python (httpx), for webhook services and anything else; the
  names below come from it.
- `shared.pipeline.prefect`: Prefect flows that report for themselves (needs
  requirements-prefect.txt; nothing else imports Prefect).
"""

from shared.pipeline.client import (
    Attempt,
    AttemptLost,
    Job,
    PipelineClient,
    ReportError,
    RetryableError,
    default_client,
    reports,
)

__all__ = [
    "Attempt",
    "AttemptLost",
    "Job",
    "PipelineClient",
    "ReportError",
    "RetryableError",
    "default_client",
    "reports",
]
