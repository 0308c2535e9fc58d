"""Database helpers for tests: create and drop throwaway databases on a server."""

from __future__ import annotations

import psycopg
from psycopg import sql


def create_database(server_url: str, name: str, *, template: str | None = None) -> None:
    """CREATE DATABASE name (as a copy of template when given) on the server of server_url."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(query)


def drop_database(server_url: str, name: str) -> None:
    """Drop database name if it exists, disconnecting whoever is still connected (PG 13+)."""
    query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(query)
