"""The committed supabase/schema.sql is what the migrations build (regenerate: scripts/schema)."""

from __future__ import annotations

import pytest

from tests.schema import SCHEMA_SQL, drift, generate


def test_schema_sql_matches_the_migrations() -> None:
    diff = drift(SCHEMA_SQL.read_text(), generate())
    if diff:
        pytest.fail(f"supabase/schema.sql is stale: run scripts/schema\n{diff}", pytrace=False)
