"""One list of job statuses: shared.api.models.JobStatus. The jobs table's check constraint,
list_jobs' status filter and openapi.yaml's JobStatus enum must say the same."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from shared.api.models import JobStatus
from tests.integration.sqlfns import call, raises_error

pytestmark = pytest.mark.integration

STATUSES = list(typing.get_args(JobStatus))
OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"


def test_the_jobs_table_allows_exactly_these_statuses(conn):
    definition = conn.execute(
        "select pg_get_constraintdef(oid) as def from pg_constraint"
        " where conrelid = 'public.jobs'::regclass and conname = 'jobs_status_check'"
    ).fetchone()["def"]
    assert re.findall(r"'(\w+)'::text", definition) == STATUSES


def test_list_jobs_filters_by_exactly_these_statuses(conn, make_user):
    user = make_user()
    for status in STATUSES:
        assert call(conn, "list_jobs", user_id=user, status=status)["items"] == []
    with raises_error("invalid_argument"):
        call(conn, "list_jobs", user_id=user, status="paused")


def test_openapi_documents_exactly_these_statuses():
    spec = yaml.safe_load(OPENAPI.read_text())
    assert spec["components"]["schemas"]["JobStatus"]["enum"] == STATUSES
