"""Project steps: one real UPSERT on (project_id, step_number), scoped to the project's owner."""

from __future__ import annotations

import pytest
from psycopg.types.json import Jsonb

from tests.integration.sqlfns import (
    add_kind,
    call,
    create_job,
    raises_error,
)

pytestmark = pytest.mark.integration

DONE = "2026-01-02T03:04:05+00:00"


@pytest.fixture
def project(conn, make_user) -> tuple:
    """(owner, project_id): a project made the usual way, by a free job."""
    add_kind(conn, "outline", 0)
    owner = make_user()
    return owner, create_job(conn, owner, "outline")["project_id"]


def upsert(conn, user, project_id, step_number=1, **fields) -> dict:
    return call(
        conn,
        "upsert_project_step",
        user_id=user,
        project_id=project_id,
        step_number=step_number,
        **{"data": {}, **fields},
    )


def test_first_upsert_creates_the_step(conn, project):
    """Steps: the first write of a step creates it and says so."""
    owner, project_id = project

    response = upsert(conn, owner, project_id, 2, data={"text": "v1"}, skip_reason="later")

    assert response["created"] is True
    step = response["step"]
    assert (step["project_id"], step["step_number"], step["data"]) == (
        project_id,
        2,
        {"text": "v1"},
    )
    assert (step["completed_at"], step["skip_reason"]) == (None, "later")


def test_second_upsert_updates_and_returns_the_new_data(conn, project):
    """Steps: writing the same step again updates it in place (created false) and returns the row
    as stored now, not the old one."""
    owner, project_id = project
    upsert(conn, owner, project_id, data={"text": "v1"})

    response = upsert(conn, owner, project_id, data={"text": "v2"})

    assert response["created"] is False
    assert response["step"]["data"] == {"text": "v2"}
    rows = conn.execute("select data from public.project_steps").fetchall()
    assert rows == [{"data": {"text": "v2"}}]


def test_null_completed_at_and_skip_reason_keep_the_stored_values(conn, project):
    """Steps: a later write without completed_at/skip_reason keeps the earlier ones; a non-null
    value replaces them."""
    owner, project_id = project
    upsert(conn, owner, project_id, data={"v": 1}, completed_at=DONE, skip_reason="no audio")

    kept = upsert(conn, owner, project_id, data={"v": 2})
    replaced = upsert(conn, owner, project_id, data={"v": 3}, skip_reason="changed")

    assert kept["step"]["completed_at"] == replaced["step"]["completed_at"]
    assert kept["step"]["completed_at"].startswith("2026-01-02T03:04:05")
    assert kept["step"]["skip_reason"] == "no audio"
    assert replaced["step"]["skip_reason"] == "changed"
    assert replaced["step"]["data"] == {"v": 3}


def test_another_users_project_looks_missing(conn, make_user, project):
    """Steps (G9): a step can't be written into someone else's project: CJ003, nothing stored."""
    _owner, project_id = project
    stranger = make_user()

    with raises_error("not_found"):
        upsert(conn, stranger, project_id, data={"mine": True})
    with raises_error("not_found"):
        upsert(conn, stranger, "00000000-0000-0000-0000-000000000000")

    assert conn.execute("select count(*) as n from public.project_steps").fetchone() == {"n": 0}


@pytest.mark.parametrize(
    "bad",
    [{"step_number": 0}, {"step_number": 1001}, {"data": Jsonb([1])}, {"skip_reason": "x" * 1001}],
    ids=["step-0", "step-1001", "data-not-object", "skip-reason-too-long"],
)
def test_invalid_steps_are_rejected(conn, project, bad):
    """Steps: out-of-range step numbers and non-object data are CJ007."""
    owner, project_id = project

    with raises_error("invalid_argument"):
        upsert(conn, owner, project_id, **bad)
