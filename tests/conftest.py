"""Fixtures for every test: a PostgreSQL server, a migrated template and a fresh copy per test.

The template database is migrated once per session; each test gets its own database created
from it (`CREATE DATABASE ... TEMPLATE`), so tests never share state and can run in parallel.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.dev.embedded import temporary_embedded, with_database
from shared.migrate import migrate
from tests.helpers import create_database, drop_database

TESTS_DIR = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "acceptance", "browser", "prefect")
# Folders with a CI step of their own (and extra installs): collected only when named on the
# command line, e.g. `pytest tests/browser`, so a plain `scripts/test` leaves them out.
ON_DEMAND = (TESTS_DIR / "browser", TESTS_DIR / "prefect", TESTS_DIR / "faults")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    path = collection_path.resolve()
    for folder in ON_DEMAND:
        if path == folder or folder in path.parents:
            named = [Path(arg.split("::", 1)[0]).resolve() for arg in config.args]
            if not any(n == folder or folder in n.parents for n in named):
                return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The folder is the marker: `pytest -m unit` runs tests/unit without a database.
    for item in items:
        parts = item.path.resolve().relative_to(TESTS_DIR).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(parts[0])


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a PostgreSQL server to create databases on: TEST_DATABASE_URL or an embedded one."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with temporary_embedded() as embedded_url:
        yield embedded_url


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """Name of a database with bootstrap + all migrations applied, copied by db_url."""
    name = f"credit_jobs_template_{secrets.token_hex(4)}"
    create_database(server_url, name)
    try:
        migrate(with_database(server_url, name))
        yield name
    finally:
        drop_database(server_url, name)


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, fully migrated database of this test's own, dropped afterwards."""
    name = f"test_{secrets.token_hex(6)}"
    create_database(server_url, name, template=template_db)
    try:
        yield with_database(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """Autocommit connection (as the superuser) to db_url; rows are dicts."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def make_user(conn: psycopg.Connection[dict[str, Any]]) -> Callable[..., uuid.UUID]:
    """Factory: make_user(balance=0) inserts an auth.users row (and grants balance) -> its id."""

    def make(balance: int = 0) -> uuid.UUID:
        user_id = uuid.uuid4()
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)",
            (user_id, f"{user_id}@example.test"),
        )
        if balance > 0:
            conn.execute(
                "select public.admin_grant_credits(p_user_id => %s, p_amount => %s,"
                " p_reason => 'test')",
                (user_id, balance),
            )
        return user_id

    return make
