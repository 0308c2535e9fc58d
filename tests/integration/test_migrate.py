"""shared.migrate against a real server: from zero, re-runs, failures, CLI-compatible history."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.dev.embedded import temporary_embedded, with_database
from shared.migrate import (
    DEFAULT_DIR,
    ROOT,
    MigrationError,
    discover,
    migrate,
    split_statements,
    status,
)
from shared.migrate.__main__ import main
from tests.helpers import create_database, drop_database
from tests.integration.sqlfns import balance

FIRST = """-- first: a table and a function whose body holds semicolons
create table public.widgets (id bigint primary key, label text not null default 'a;b');

create function public.widget_count() returns bigint language plpgsql as $$
begin
  return (select count(*) from public.widgets);
end;
$$;
"""
SECOND = """insert into public.widgets (id) values (1), (2);
select '100%';
"""
BROKEN = """create table public.gadgets (id int);
insert into public.widgets (id) values (3);
select 1
  from no_such_table;
"""


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    """URL of a brand-new database with nothing in it (not even the bootstrap)."""
    name = f"migrate_{secrets.token_hex(6)}"
    create_database(server_url, name, template="template0")
    try:
        yield with_database(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "20260101000000_first.sql").write_text(FIRST)
    (directory / "20260102000000_second_step.sql").write_text(SECOND)
    return directory


def history(url: str) -> list[tuple[str, str, list[str]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()
    return [(version, name, statements) for version, name, statements in rows]


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def test_applies_from_zero_with_bootstrap_and_records_like_the_cli(
    empty_db: str, migrations: Path
) -> None:
    assert migrate(empty_db, migrations) == ["20260101000000", "20260102000000"]

    assert scalar(empty_db, "select public.widget_count()") == 2
    assert scalar(empty_db, "select to_regclass('auth.users') is not null") is True
    assert history(empty_db) == [
        ("20260101000000", "first", split_statements(FIRST)),
        ("20260102000000", "second_step", split_statements(SECOND)),
    ]
    assert len(split_statements(FIRST)) == 2


def test_history_table_has_the_cli_layout(empty_db: str, migrations: Path) -> None:
    migrate(empty_db, migrations)
    with psycopg.connect(empty_db) as conn:
        columns = conn.execute(
            "select column_name, data_type, is_nullable from information_schema.columns"
            " where table_schema = 'supabase_migrations' and table_name = 'schema_migrations'"
            " order by ordinal_position"
        ).fetchall()
        primary_key = conn.execute(
            "select a.attname from pg_index i join pg_attribute a"
            " on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
            " where i.indrelid = 'supabase_migrations.schema_migrations'::regclass"
            " and i.indisprimary"
        ).fetchall()
    assert columns == [
        ("version", "text", "NO"),
        ("statements", "ARRAY", "YES"),
        ("name", "text", "YES"),
    ]
    assert primary_key == [("version",)]


def test_rerun_is_a_noop(empty_db: str, migrations: Path) -> None:
    migrate(empty_db, migrations)
    before = history(empty_db)

    assert migrate(empty_db, migrations) == []
    assert history(empty_db) == before
    assert scalar(empty_db, "select public.widget_count()") == 2


def test_new_file_applies_alone(empty_db: str, migrations: Path) -> None:
    migrate(empty_db, migrations)
    (migrations / "20260103000000_third.sql").write_text("delete from public.widgets where id = 1;")

    assert migrate(empty_db, migrations) == ["20260103000000"]
    assert scalar(empty_db, "select public.widget_count()") == 1


def test_broken_migration_rolls_back_entirely_and_names_the_file(
    empty_db: str, migrations: Path
) -> None:
    broken = migrations / "20260103000000_broken.sql"
    broken.write_text(BROKEN)

    with pytest.raises(MigrationError) as raised:
        migrate(empty_db, migrations)

    message = str(raised.value)
    # The error points at the file, the line of the bad token, the statement and the SQLSTATE.
    assert f"{broken}:4: statement 3:" in message
    assert 'relation "no_such_table" does not exist' in message
    assert "SQLSTATE 42P01" in message
    # Earlier files stay applied; nothing of the broken one is left behind.
    assert [row[0] for row in history(empty_db)] == ["20260101000000", "20260102000000"]
    assert scalar(empty_db, "select to_regclass('public.gadgets')") is None
    assert scalar(empty_db, "select public.widget_count()") == 2

    broken.write_text(BROKEN.replace("from no_such_table", "from public.gadgets"))
    assert migrate(empty_db, migrations) == ["20260103000000"]


def test_bootstrap_is_skipped_when_auth_users_exists(empty_db: str, migrations: Path) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("create schema auth; create table auth.users (id uuid primary key)")
    failing_bootstrap = migrations.parent / "bootstrap.sql"
    failing_bootstrap.write_text("select 1 / 0;")

    assert migrate(empty_db, migrations, failing_bootstrap) == ["20260101000000", "20260102000000"]


def test_failing_bootstrap_is_reported_and_rolled_back(empty_db: str, migrations: Path) -> None:
    bootstrap = migrations.parent / "bootstrap.sql"
    bootstrap.write_text("create schema auth;\ncreate table auth.users (id uuid);\nselect 1 / 0;")

    with pytest.raises(MigrationError, match=r"bootstrap\.sql:3: .*division by zero"):
        migrate(empty_db, migrations, bootstrap)
    assert scalar(empty_db, "select to_regclass('auth.users')") is None


def test_runtime_error_points_at_the_statement_after_its_comments(
    empty_db: str, migrations: Path
) -> None:
    (migrations / "20260103000000_raises.sql").write_text(
        "select 1;\n-- explains the block\n-- over two lines\n"
        "do $$ begin raise exception 'nope' using errcode = 'CJ007'; end $$;\n"
    )
    with pytest.raises(MigrationError) as raised:
        migrate(empty_db, migrations)
    assert "20260103000000_raises.sql:4: statement 2: nope (SQLSTATE CJ007)" in str(raised.value)
    assert "statement: do $$ begin raise exception" in str(raised.value)


def test_concurrent_migrators_apply_each_file_once(empty_db: str, migrations: Path) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db, migrations))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(v for applied in results for v in applied) == ["20260101000000", "20260102000000"]
    assert scalar(empty_db, "select public.widget_count()") == 2


def test_databases_bootstrapping_at_once_share_the_cluster_wide_roles(tmp_path: Path) -> None:
    # A private server, so the roles do not exist yet when the four bootstraps race.
    with temporary_embedded() as server:
        names = [f"race_{i}" for i in range(4)]
        for name in names:
            create_database(server, name)
        errors: list[BaseException] = []

        def run(name: str) -> None:
            try:
                migrate(with_database(server, name), tmp_path / "no-migrations")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert errors == []
        for name in names:
            url = with_database(server, name)
            assert scalar(url, "select to_regclass('auth.users')") is not None


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "2026_oops.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match=r"2026_oops\.sql"):
        discover(tmp_path)


def test_cli_dry_run_status_check_and_up(
    empty_db: str, migrations: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db)
    args = ["--dir", str(migrations)]

    assert main(["check", *args]) == 1
    assert "not up to date" in capsys.readouterr().err

    assert main(["--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "bootstrap" in out
    assert "20260101000000  pending  first" in out
    assert "20260102000000  pending  second_step" in out
    assert scalar(empty_db, "select to_regclass('auth.users')") is None

    assert main(["up", *args]) == 0
    assert "20260101000000 20260102000000" in capsys.readouterr().out

    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "20260101000000  applied  first" in out
    assert "pending" not in out

    assert main(["check", *args]) == 0
    assert main(["--dry-run", *args]) == 0
    assert main(args) == 0
    assert capsys.readouterr().out.count("nothing to apply") == 2


def test_cli_failure_exits_non_zero_naming_the_file(
    empty_db: str, migrations: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (migrations / "20260103000000_broken.sql").write_text(BROKEN)
    monkeypatch.setenv("DATABASE_URL", empty_db)

    assert main(["up", "--dir", str(migrations)]) == 1
    err = capsys.readouterr().err
    assert "20260103000000_broken.sql:4:" in err
    assert "42P01" in err


def test_check_on_unreachable_database(tmp_path: Path) -> None:
    # Runs the real entry point; tmp_path holds no server socket.
    url = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2"
    result = subprocess.run(
        [sys.executable, "-m", "shared.migrate", "check"],
        cwd=ROOT,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


def test_project_migrations_apply_and_are_recorded(db_url: str) -> None:
    # db_url is a copy of the session template, which migrate() built from the real files.
    local = discover(DEFAULT_DIR)
    assert [(v, n) for v, n, _ in history(db_url)] == [(m.version, m.name) for m in local]
    assert status(db_url).up_to_date
    assert migrate(db_url) == []


def test_make_user_creates_a_funded_account(conn: psycopg.Connection, make_user) -> None:
    if not (DEFAULT_DIR / "20261122100000_credit_core.sql").exists():
        pytest.skip("core migration not present yet")
    user_id = make_user(balance=25)
    assert balance(conn, user_id) == 25
    assert make_user() != user_id
