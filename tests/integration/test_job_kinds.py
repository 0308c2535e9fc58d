"""Job kinds that have jobs stay: their jobs still need the kind's lease and retry rules."""

from __future__ import annotations

import pytest

from tests.integration.sqlfns import add_kind, create_job, raises_error

pytestmark = pytest.mark.integration


def test_a_kind_with_jobs_cannot_be_deleted_or_renamed(conn, make_user):
    add_kind(conn, "story", cost=10)
    create_job(conn, make_user(balance=10), "story")
    with raises_error("invalid_transition"):
        conn.execute("delete from public.job_kinds where kind = 'story'")
    with raises_error("invalid_transition"):
        conn.execute("update public.job_kinds set kind = 'tale' where kind = 'story'")


def test_a_kind_without_jobs_can_be_deleted(conn):
    add_kind(conn, "unused", cost=1)
    conn.execute("delete from public.job_kinds where kind = 'unused'")
    assert conn.execute("select count(*) as n from public.job_kinds").fetchone()["n"] == 0
