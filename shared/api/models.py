"""Request models (pydantic v2): every string bounded, JSON objects at most 64 KiB.

Bodies forbid unknown fields (a typo such as `credit_used` must not pass silently); query strings
ignore them (cache busters and tracking parameters are common there).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.core.errors import invalid_request

MAX_JSON_OBJECT_BYTES = 64 * 1024
# The largest PostgreSQL `integer`, the type of jobs.attempt and jobs.credits_used.
PG_INTEGER_MAX = 2**31 - 1
JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]


def _at_most_64_kib(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_JSON_OBJECT_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_OBJECT_BYTES} bytes as JSON, not {size}")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_at_most_64_kib)]
Kind = Annotated[str, StringConstraints(min_length=1, max_length=63)]
StepNumber = Annotated[int, Field(ge=1, le=1000)]
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=200)]
PageSize = Annotated[int, Field(ge=1, le=100)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateRequest(Body):
    kind: Kind
    params: JsonObject = Field(default_factory=dict)
    project_id: uuid.UUID | None = None
    step_number: StepNumber | None = None


class PipelineCallback(Body):
    job_id: uuid.UUID
    attempt: int = Field(ge=1, le=PG_INTEGER_MAX)
    status: Literal["processing", "completed", "failed"]
    progress: float | None = Field(default=None, ge=0, le=100)
    result: Any = None
    error: Annotated[str, StringConstraints(max_length=2000)] | None = None
    credits_used: int | None = Field(default=None, ge=0, le=PG_INTEGER_MAX)
    retryable: bool = False


class StatusQuery(Query):
    job_id: uuid.UUID


class HistoryQuery(Query):
    limit: PageSize = 20
    cursor: Cursor | None = None
    status: JobStatus | None = None


class ProjectsQuery(Query):
    project_id: uuid.UUID | None = None
    limit: PageSize = 20
    cursor: Cursor | None = None


class ProjectCreate(Body):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class StepsQuery(Query):
    project_id: uuid.UUID


class StepUpsert(Body):
    project_id: uuid.UUID
    step_number: StepNumber
    data: JsonObject = Field(default_factory=dict)
    completed_at: dt.datetime | None = None
    skip_reason: Annotated[str, StringConstraints(max_length=1000)] | None = None


class CancelRequest(Body):
    job_id: uuid.UUID


class CreditsQuery(Query):
    limit: PageSize = 20
    cursor: Cursor | None = None


def idempotency_key(header: str | None) -> str | None:
    """The `Idempotency-Key` header: absent, or 1 to 255 printable characters."""
    if header is None:
        return None
    key = header.strip()
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise invalid_request("Idempotency-Key must be 1 to 255 printable characters")
    return key
