"""Realtime: jobs and credit_accounts are published to Supabase Realtime, under the same RLS.

Supabase Realtime streams a table's changes only when it is in the `supabase_realtime`
publication, and delivers each change to a subscriber only if the subscriber's role and JWT may
SELECT that row (it checks RLS the way PostgREST does: `set role` + `request.jwt.claims`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg import sql

from shared.migrate import split_statements
from tests.integration.sqlfns import add_kind, create_job
from tests.integration.test_security import fetch_as

pytestmark = pytest.mark.integration

MIGRATION = next(
    (Path(__file__).resolve().parents[2] / "supabase" / "migrations").glob("*_realtime_*.sql")
)
# The migration's first statement adds the tables to the publication.
PUBLISH = split_statements(MIGRATION.read_text())[0].encode()
PUBLISHED = {"jobs", "credit_accounts"}


def published_tables(conn) -> set[str]:
    rows = conn.execute(
        "select tablename from pg_publication_tables"
        " where pubname = 'supabase_realtime' and schemaname = 'public'"
    ).fetchall()
    return {row["tablename"] for row in rows}


def test_jobs_and_credit_accounts_are_in_the_realtime_publication(conn):
    assert published_tables(conn) == PUBLISHED


def test_a_subscriber_sees_only_their_own_rows_of_the_published_tables(conn, make_user):
    add_kind(conn, "story", 5)
    alice, bob = make_user(20), make_user(20)
    for user in (alice, bob):
        create_job(conn, user, "story")

    for table in sorted(PUBLISHED):
        query = sql.SQL("select user_id from public.{}").format(sql.Identifier(table))
        assert {r["user_id"] for r in fetch_as(conn, "authenticated", alice, query)} == {alice}
        assert {r["user_id"] for r in fetch_as(conn, "authenticated", bob, query)} == {bob}
        assert fetch_as(conn, "anon", None, query) in ([], "42501"), table
        assert len(conn.execute(query).fetchall()) == 2, table


def test_running_the_migration_again_changes_nothing(conn):
    """As on a Supabase project where someone already added a table from the dashboard."""
    conn.execute(PUBLISH)
    assert published_tables(conn) == PUBLISHED


def test_without_the_publication_the_migration_skips_it(conn):
    """A plain database bootstrapped before the bootstrap created the publication."""
    notices: list[str] = []
    conn.add_notice_handler(lambda notice: notices.append(notice.message_primary))
    conn.execute("drop publication supabase_realtime")
    conn.execute(PUBLISH)
    assert published_tables(conn) == set()
    assert any("supabase_realtime" in notice for notice in notices), notices
