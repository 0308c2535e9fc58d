"""Security: what Supabase's Data API roles can see and do (docs/guarantees.md, guarantee 9).

Each check runs the way PostgREST runs a request: inside a transaction, `set local role <role>`
and the JWT claims in `request.jwt.claims`.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from shared.dev.embedded import with_database
from shared.migrate import migrate
from tests.helpers import create_database, drop_database
from tests.integration.sqlfns import add_kind, call, claim_one, create_job, discrepancies

pytestmark = pytest.mark.integration

INSUFFICIENT_PRIVILEGE = "42501"
USER_ROLES = ("anon", "authenticated")
OWNED_TABLES = (
    "credit_accounts",
    "credit_ledger",
    "credit_grants",
    "projects",
    "project_steps",
    "jobs",
)
SCHEMAS = ("public", "credit_jobs_internal")
# Who may execute what, read from pg_proc ("public" is PUBLIC: a NULL ACL grants it EXECUTE).
EXECUTORS = ("public", "anon", "authenticated", "service_role")
MAY_EXECUTE = {"public": ["service_role"], "credit_jobs_internal": []}
BOOTSTRAP = Path(__file__).resolve().parents[2] / "supabase" / "bootstrap.sql"
# Every privilege the Data API roles may hold on our schemas: reading, nothing else.
ALLOWED_PRIVILEGES = {
    ("anon", "table job_kinds", "SELECT"),
    ("authenticated", "table job_kinds", "SELECT"),
    *(("authenticated", f"table {table}", "SELECT") for table in OWNED_TABLES),
}
# What a Supabase project does before any migration runs (see supabase/postgres roles setup).
SUPABASE_DEFAULT_PRIVILEGES = """
alter default privileges in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on sequences to anon, authenticated, service_role;
"""

SQL_REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
# A row of docs/sql.md's function table: | `name(p_a, p_b = default, ...)` | ...
DOCUMENTED_FUNCTION = re.compile(r"^\| `(\w+)\(([^)]*)\)` \|", re.MULTILINE)


def documented_functions() -> dict[str, list[str]]:
    """docs/sql.md's public functions: name -> parameters as written (`p_x` or `p_x = default`)."""
    rows = DOCUMENTED_FUNCTION.findall(SQL_REFERENCE.read_text())
    return {name: [p.strip() for p in params.split(",") if p.strip()] for name, params in rows}


@contextmanager
def as_role(conn: psycopg.Connection, role: str, user_id=None) -> Iterator[psycopg.Connection]:
    """A transaction running as `role` with a Supabase JWT for user_id (none for anon)."""
    claims = {"role": role, "aud": role} | ({"sub": str(user_id)} if user_id else {})
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield conn


def fetch_as(conn, role: str, user_id, query: sql.Composable) -> list[dict] | str:
    """Rows the role may read, or the SQLSTATE if it may not read at all."""
    try:
        with as_role(conn, role, user_id):
            return conn.execute(query).fetchall()
    except psycopg.Error as e:
        return e.sqlstate


def sqlstate_as(conn, role: str, user_id, query: sql.Composable, params=None) -> str | None:
    try:
        with as_role(conn, role, user_id):
            conn.execute(query, params)
    except psycopg.Error as e:
        return e.sqlstate
    return None


def public_tables(conn) -> list[str]:
    rows = conn.execute(
        "select relname from pg_class where relnamespace = 'public'::regnamespace"
        " and relkind in ('r', 'p') order by relname"
    ).fetchall()
    return [r["relname"] for r in rows]


def functions_in(conn, schemas=SCHEMAS) -> list[dict]:
    """Every function in schemas, with `executors`: which of EXECUTORS may execute it."""
    return conn.execute(
        "select p.oid::regprocedure::text as signature, p.proname, p.proargnames,"
        " p.pronargdefaults, p.proconfig, p.prosecdef, n.nspname,"
        " array(select r from unnest(%s::text[]) r"
        "       where has_function_privilege(r, p.oid, 'EXECUTE')) as executors"
        " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = any(%s) and p.prokind = 'f' order by 1",
        (list(EXECUTORS), list(schemas)),
    ).fetchall()


def data_api_privileges(conn) -> set[tuple[str, str, str]]:
    """(role, object, privilege) for everything anon/authenticated may do in our schemas."""
    rows = conn.execute(
        """
        with roles(role) as (values ('anon'), ('authenticated')),
        objects as (
          select c.oid, c.relkind, c.relname::text as name
          from pg_class c
          where c.relnamespace in ('public'::regnamespace, 'credit_jobs_internal'::regnamespace)
            and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
        )
        select role, 'table ' || name as object, priv
        from roles, objects,
             unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                          'TRIGGER']) as priv
        where relkind <> 'S' and has_table_privilege(role, oid, priv)
        union all
        select role, 'sequence ' || name, priv
        from roles, objects, unnest(array['USAGE', 'SELECT', 'UPDATE']) as priv
        where relkind = 'S' and has_sequence_privilege(role, oid, priv)
        union all
        select role, 'function ' || p.oid::regprocedure::text, 'EXECUTE'
        from roles, pg_proc p
        where p.pronamespace in ('public'::regnamespace, 'credit_jobs_internal'::regnamespace)
          and has_function_privilege(role, p.oid, 'EXECUTE')
        union all
        select role, 'schema credit_jobs_internal', priv
        from roles, unnest(array['USAGE', 'CREATE']) as priv
        where has_schema_privilege(role, 'credit_jobs_internal', priv)
        """
    ).fetchall()
    return {(r["role"], r["object"], r["priv"]) for r in rows}


@pytest.fixture
def two_users(conn, make_user) -> tuple:
    """alice and bob, each with an account, ledger entries, a project, a step and jobs."""
    add_kind(conn, "image", 5)
    alice, bob = make_user(20), make_user(20)
    for user in (alice, bob):
        job = create_job(conn, user, "image")
        call(
            conn,
            "upsert_project_step",
            user_id=user,
            project_id=job["project_id"],
            step_number=1,
            data={"owner": str(user)},
        )
        call(conn, "cancel_job", job_id=job["id"], user_id=user)
    return alice, bob


def test_authenticated_users_read_only_their_own_rows(conn, two_users):
    """G9: with alice's JWT, every user-owned table shows alice's rows and none of bob's."""
    alice, bob = two_users
    for table in OWNED_TABLES:
        query = sql.SQL("select user_id from public.{}").format(sql.Identifier(table))

        rows = fetch_as(conn, "authenticated", alice, query)

        assert rows, f"alice sees nothing in {table}"
        assert {r["user_id"] for r in rows} == {alice}, table
        everyone = {r["user_id"] for r in conn.execute(query).fetchall()}
        assert everyone == {alice, bob}, table


@pytest.mark.parametrize("role", USER_ROLES)
def test_without_a_user_nobody_reads_user_rows(conn, two_users, role):
    """G9: anon, and authenticated without a `sub`, see no user's rows (the price list is public);
    the admin views are not readable at all."""
    for table in OWNED_TABLES:
        query = sql.SQL("select * from public.{}").format(sql.Identifier(table))
        assert fetch_as(conn, role, None, query) in ([], INSUFFICIENT_PRIVILEGE), table
    for view in ("credit_discrepancies", "stalled_jobs", "expiring_grants"):
        query = sql.SQL("select * from public.{}").format(sql.Identifier(view))
        assert fetch_as(conn, role, None, query) == INSUFFICIENT_PRIVILEGE, view

    kinds = fetch_as(conn, role, None, sql.SQL("select kind, cost from public.job_kinds"))
    assert kinds == [{"kind": "image", "cost": 5}]


@pytest.mark.parametrize("role", USER_ROLES)
def test_data_api_roles_cannot_write_any_table(conn, two_users, role):
    """G9: anon and authenticated hold no INSERT/UPDATE/DELETE/TRUNCATE privilege on any table in
    public, and actually trying each write fails with insufficient_privilege."""
    alice, _bob = two_users
    tables = public_tables(conn)
    assert set(OWNED_TABLES) | {"job_kinds"} <= set(tables)

    for table in tables:
        for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            allowed = conn.execute(
                "select has_table_privilege(%s, %s, %s) as ok",
                (role, f"public.{table}", privilege),
            ).fetchone()["ok"]
            assert not allowed, f"{role} has {privilege} on {table}"

        name = sql.Identifier("public", table)
        column = conn.execute(
            "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0"
            " and attidentity = '' and attgenerated = '' and not attisdropped limit 1",
            (f"public.{table}",),
        ).fetchone()["attname"]
        writes = [
            sql.SQL("insert into {} default values").format(name),
            sql.SQL("update {} set {} = {}").format(
                name, sql.Identifier(column), sql.Identifier(column)
            ),
            sql.SQL("delete from {}").format(name),
            sql.SQL("truncate {}").format(name),
        ]
        for write in writes:
            sqlstate = sqlstate_as(conn, role, alice, write)
            assert sqlstate == INSUFFICIENT_PRIVILEGE, f"{role}: {write.as_string(conn)}"


def test_rls_is_enabled_on_every_table_and_views_check_the_caller(conn):
    """G9: no table in public is readable around RLS, and views run with the caller's rights."""
    tables = conn.execute(
        "select relname, relrowsecurity from pg_class"
        " where relnamespace = 'public'::regnamespace and relkind in ('r', 'p')"
    ).fetchall()
    assert tables and all(t["relrowsecurity"] for t in tables), tables

    views = conn.execute(
        "select relname, reloptions from pg_class"
        " where relnamespace = 'public'::regnamespace and relkind in ('v', 'm')"
    ).fetchall()
    for view in views:
        assert "security_invoker=true" in (view["reloptions"] or []), view


def test_the_sql_reference_documents_every_public_function_as_it_is(conn):
    """docs/sql.md is the SQL surface: every function in public is there once, with its
    parameter names in order and a default exactly where the function has one."""
    documented = documented_functions()
    functions = functions_in(conn, ["public"])
    names = [f["proname"] for f in functions]
    assert sorted(names) == sorted(documented), "docs/sql.md and pg_proc list other functions"

    for function in functions:
        params = documented[function["proname"]]
        # pg_proc has no names (null) for a function without parameters
        assert [p.split(" = ")[0] for p in params] == (function["proargnames"] or []), params
        assert sum(" = " in p for p in params) == function["pronargdefaults"], params


def test_data_api_roles_hold_only_read_privileges(conn):
    """G9: anon and authenticated hold exactly the SELECT grants RLS is written for: no write on
    any table, view or sequence, no function, no use of the internal schema."""
    assert data_api_privileges(conn) == ALLOWED_PRIVILEGES


def test_migrations_take_back_supabases_default_grants(server_url):
    """G9 on a real Supabase project, where default privileges grant anon and authenticated ALL
    on every new table, function and sequence in public: the migrations revoke all of it."""
    name = f"test_supabase_defaults_{secrets.token_hex(4)}"
    create_database(server_url, name)
    try:
        url = with_database(server_url, name)
        with psycopg.connect(url, autocommit=True) as setup:
            setup.execute(BOOTSTRAP.read_text())
            setup.execute(SUPABASE_DEFAULT_PRIVILEGES)
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            assert data_api_privileges(conn) == ALLOWED_PRIVILEGES
    finally:
        drop_database(server_url, name)


def test_only_the_server_may_execute_functions(conn):
    """G9: every function in public is executable by service_role and by nobody else (neither
    anon, authenticated nor PUBLIC); those in credit_jobs_internal by none of them. Checked for
    whatever pg_proc holds, so a new function without its revoke/grant fails here."""
    functions = functions_in(conn)
    assert set(documented_functions()) <= {f["proname"] for f in functions}

    wrong = {
        f["signature"]: f["executors"]
        for f in functions
        if f["executors"] != MAY_EXECUTE[f["nspname"]]
    }
    assert wrong == {}


@pytest.mark.parametrize("role", USER_ROLES)
def test_users_calling_money_functions_directly_are_refused(conn, two_users, role):
    """G9: even with a valid JWT, a Data API user can't grant itself credits or refund a job."""
    alice, _bob = two_users
    calls = [
        ("select public.admin_grant_credits(%s, 1000, 'free money')", (alice,)),
        ("select public.create_job(%s, 'image')", (alice,)),
        ("select public.reap_stalled_jobs()", None),
    ]
    for query, params in calls:
        assert sqlstate_as(conn, role, alice, query, params) == INSUFFICIENT_PRIVILEGE, query


def test_service_role_runs_the_money_functions(conn, make_user):
    """G9 (the other side): a real call through the server's service_role works end to end."""
    add_kind(conn, "image", 5)
    user = make_user()
    with as_role(conn, "service_role"):
        call(conn, "admin_grant_credits", user_id=user, amount=10, reason="service")
        create_job(conn, user, "image")
        job = claim_one(conn, "image")
        done = call(conn, "complete_job", job_id=job["id"], attempt=1, credits_used=2)
        assert done["job"]["refunded"] == 3
        assert discrepancies(conn) == []


def test_every_function_pins_search_path(conn):
    """G9: every function in public and credit_jobs_internal, and every security definer function
    anywhere, runs with search_path = '' so no caller-created object can hijack a name."""
    pinned = 'search_path=""'
    functions = functions_in(conn)
    definers = conn.execute(
        "select p.oid::regprocedure::text as signature, p.proconfig from pg_proc p"
        " where p.prosecdef and p.pronamespace not in"
        " ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
    ).fetchall()
    assert any(f["prosecdef"] for f in functions)

    for function in [*functions, *definers]:
        assert pinned in (function["proconfig"] or []), function["signature"]
