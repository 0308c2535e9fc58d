"""Request models: bounds on every field, 64 KiB JSON objects, unknown fields in bodies refused."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from shared.api.models import (
    PG_INTEGER_MAX,
    GenerateRequest,
    HistoryQuery,
    PipelineCallback,
    ProjectCreate,
    StepUpsert,
    idempotency_key,
)
from shared.core.errors import ApiError


def test_generate_defaults_and_bounds():
    request = GenerateRequest.model_validate({"kind": "story"})
    assert request.params == {} and request.project_id is None and request.step_number is None
    for bad in (
        {},
        {"kind": ""},
        {"kind": "k" * 64},
        {"kind": "story", "step_number": 1001},
        {"kind": "story", "params": "x"},
        {"kind": "story", "params": {"x": "y" * 65_536}},
        {"kind": "story", "extra": 1},
    ):
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate(bad)


def test_params_just_under_64_kib_pass():
    params = {"x": "y" * (65_536 - len('{"x":""}'))}
    assert GenerateRequest.model_validate({"kind": "story", "params": params}).params == params


def test_callback_bounds():
    job = str(uuid.uuid4())
    ok = PipelineCallback.model_validate(
        {"job_id": job, "attempt": 1, "status": "completed", "result": [1, 2]}
    )
    assert ok.result == [1, 2] and ok.retryable is False
    for bad in (
        {"job_id": job, "attempt": 0, "status": "completed"},
        {"job_id": job, "attempt": 1, "status": "cancelled"},
        {"job_id": job, "attempt": 1, "status": "processing", "progress": -1},
        {"job_id": job, "attempt": 1, "status": "completed", "credits_used": -1},
        {"job_id": job, "attempt": 1, "status": "failed", "error": "e" * 2001},
        {"job_id": job, "attempt": 1, "status": "completed", "credit_used": 1},
        {"job_id": job, "attempt": PG_INTEGER_MAX + 1, "status": "processing"},
        {"job_id": job, "attempt": 1, "status": "completed", "credits_used": PG_INTEGER_MAX + 1},
    ):
        with pytest.raises(ValidationError):
            PipelineCallback.model_validate(bad)


def test_queries_coerce_strings_and_ignore_unknown_parameters():
    query = HistoryQuery.model_validate({"limit": "5", "status": "failed", "_": "cache-buster"})
    assert (query.limit, query.status) == (5, "failed")
    for bad in ({"limit": "0"}, {"limit": "101"}, {"status": "lost"}, {"cursor": "c" * 201}):
        with pytest.raises(ValidationError):
            HistoryQuery.model_validate(bad)


def test_project_title_is_stripped_and_bounded():
    assert ProjectCreate.model_validate({"title": "  t  "}).title == "t"
    for title in ("", "   ", "x" * 201):
        with pytest.raises(ValidationError):
            ProjectCreate.model_validate({"title": title})


def test_step_upsert_bounds():
    project = str(uuid.uuid4())
    step = StepUpsert.model_validate({"project_id": project, "step_number": 1})
    assert step.data == {} and step.completed_at is None
    with pytest.raises(ValidationError):
        StepUpsert.model_validate(
            {"project_id": project, "step_number": 1, "skip_reason": "s" * 1001}
        )


def test_idempotency_key_header():
    assert idempotency_key(None) is None
    assert idempotency_key(" order-1 ") == "order-1"
    for bad in ("", " ", "k" * 256, "a\nb"):
        with pytest.raises(ApiError):
            idempotency_key(bad)
