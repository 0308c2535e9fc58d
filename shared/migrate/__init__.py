"""Apply supabase/migrations to DATABASE_URL and record them the way the Supabase CLI does.

    python -m shared.migrate [up]        apply the bootstrap (plain Postgres only) and pending files
    python -m shared.migrate --dry-run   list what `up` would apply, change nothing
    python -m shared.migrate status      list applied and pending migrations
    python -m shared.migrate check       exit 0 only if the database is reachable and up to date

History lives in supabase_migrations.schema_migrations(version, statements, name), created and
filled exactly like the CLI's pkg/migration (history.go, file.go), so `supabase db push` agrees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "supabase" / "migrations"
DEFAULT_BOOTSTRAP = ROOT / "supabase" / "bootstrap.sql"

# The newest migration this code was written for. Deployed functions ship without
# supabase/migrations, so `health` compares the database with this constant;
# tests/unit/test_schema_version.py keeps it equal to the newest file.
SCHEMA_VERSION = "20261202100000"

# Supabase CLI naming: <14-digit timestamp>_<name>.sql; the CLI stores the two parts separately.
FILE_PATTERN = re.compile(r"^(\d{14})_(.+)\.sql$")

# Same statements, in the same order, as the CLI's CreateMigrationTable.
HISTORY_DDL = (
    "CREATE SCHEMA IF NOT EXISTS supabase_migrations",
    "CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations"
    " (version text NOT NULL PRIMARY KEY)",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[]",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text",
)
INSERT_VERSION = (
    "INSERT INTO supabase_migrations.schema_migrations(version, name, statements)"
    " VALUES (%s, %s, %s)"
)

# Serialises migrators on one database; transaction-scoped so a crash can never leave it held.
LOCK_KEY = 0x63726A6D  # "crjm"

DOLLAR_QUOTE = re.compile(r"\$([A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
WORD = re.compile(r"[\w$]+")
LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)

# Roles are cluster-wide: two databases bootstrapping at once can race on CREATE ROLE.
ROLE_RACE_SQLSTATES = {"23505", "42710"}


class MigrationError(Exception):
    """A migration (or the bootstrap) failed and was rolled back; str() says where and why."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


@dataclass(frozen=True)
class Statement:
    text: str  # as the CLI records it: comments kept, trailing ';' and surrounding blanks trimmed
    offset: int  # index of text's first character in the file, for error line numbers


def split_statements(sql: str) -> list[str]:
    """Split a SQL file into statements exactly as the Supabase CLI records them."""
    return [s.text for s in _split(sql)]


def _split(sql: str) -> list[Statement]:
    # A small lexer: ';' ends a statement only outside quotes, comments, dollar quotes,
    # parentheses and BEGIN ATOMIC ... END bodies.
    out: list[Statement] = []
    start = 0
    i = 0
    n = len(sql)
    depth = 0
    atomic = 0  # >0 inside BEGIN ATOMIC; counts nested CASE ... END too
    prev_word = ""
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            continue
        if c == "'" or c == '"':
            escapes = c == "'" and _is_escape_string(sql, i)
            i = _skip_quoted(sql, i, c, escapes)
            prev_word = ""
            continue
        if c == "$" and (i == 0 or not _is_ident_char(sql[i - 1])):
            m = DOLLAR_QUOTE.match(sql, i)
            if m:
                end = sql.find(m.group(0), m.end())
                i = n if end < 0 else end + len(m.group(0))
                continue
        if c.isalpha() or c == "_":
            m = WORD.match(sql, i)
            assert m  # c is a word character
            word = m.group(0).upper()
            if word == "ATOMIC" and prev_word == "BEGIN" and depth == 0:
                atomic = 1
            elif atomic and word == "CASE":
                atomic += 1
            elif atomic and word == "END":
                atomic -= 1
            prev_word = word
            i = m.end()
            continue
        if not c.isspace():
            prev_word = ""
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c == ";" and depth == 0 and atomic == 0:
            _emit(out, sql, start, i + 1)
            start = i + 1
        i += 1
    _emit(out, sql, start, n)
    return out


def _emit(out: list[Statement], sql: str, start: int, end: int) -> None:
    # The CLI trims trailing ';' then whitespace, and drops what is left empty.
    raw = sql[start:end].rstrip(";")
    text = raw.strip()
    if text:
        offset = start + (len(raw) - len(raw.lstrip()))
        out.append(Statement(text, offset))


def _skip_block_comment(sql: str, i: int) -> int:
    # PostgreSQL block comments nest.
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _skip_quoted(sql: str, i: int, quote: str, escapes: bool) -> int:
    # A doubled quote is a literal quote; in E'' strings a backslash escapes the next character.
    i += 1
    while i < len(sql):
        c = sql[i]
        if escapes and c == "\\":
            i += 2
        elif c == quote:
            if sql.startswith(quote, i + 1):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


def _is_escape_string(sql: str, i: int) -> bool:
    return i > 0 and sql[i - 1] in "eE" and (i == 1 or not _is_ident_char(sql[i - 2]))


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c in "_$"


def discover(migrations_dir: Path = DEFAULT_DIR) -> list[Migration]:
    """Return the migration files of migrations_dir in version order."""
    found: dict[str, Migration] = {}
    for path in sorted(Path(migrations_dir).glob("*.sql")):
        m = FILE_PATTERN.match(path.name)
        if not m:
            # A silently skipped file would be a migration that never runs.
            raise MigrationError(f"{path.name}: not named <14-digit timestamp>_<name>.sql")
        version, name = m.groups()
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version} also used by {found[version].path.name}"
            )
        found[version] = Migration(version, name, path)
    return [found[v] for v in sorted(found)]


def applied_versions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Return {version: name} of the migrations recorded in the database (empty if none)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("select to_regclass('supabase_migrations.schema_migrations') is not null")
        if cur.fetchone() != (True,):
            return {}
        cur.execute(
            "select version, coalesce(name, '') from supabase_migrations.schema_migrations"
            " order by version"
        )
        return dict(cur.fetchall())


def needs_bootstrap(conn: psycopg.Connection[Any]) -> bool:
    """True on plain Postgres, where Supabase's auth.users does not exist yet."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("select to_regclass('auth.users') is null")
        return cur.fetchone() == (True,)


@dataclass(frozen=True)
class Status:
    bootstrap_needed: bool
    applied: dict[str, str]  # version -> name, as recorded in the database
    pending: list[Migration]  # local files not recorded yet, in the order `up` applies them
    unknown: list[str]  # recorded versions with no local file (a newer checkout applied them)

    @property
    def up_to_date(self) -> bool:
        return not self.bootstrap_needed and not self.pending


def status(url: str, migrations_dir: Path = DEFAULT_DIR) -> Status:
    """Compare migrations_dir with what the database at url has recorded."""
    local = discover(migrations_dir)
    with _connect(url) as conn:
        done = applied_versions(conn)
        bootstrap_needed = needs_bootstrap(conn)
    known = {m.version for m in local}
    return Status(
        bootstrap_needed=bootstrap_needed,
        applied=done,
        pending=[m for m in local if m.version not in done],
        unknown=[v for v in done if v not in known],
    )


def migrate(
    url: str, migrations_dir: Path = DEFAULT_DIR, bootstrap: Path = DEFAULT_BOOTSTRAP
) -> list[str]:
    """Bootstrap plain Postgres if needed, apply pending migrations; return applied versions."""
    migrations = discover(migrations_dir)
    applied: list[str] = []
    with _connect(url) as conn:
        _bootstrap(conn, Path(bootstrap))
        with conn.transaction():
            _lock(conn)
            # Like the CLI, the history DDL runs alone under a short lock timeout.
            conn.execute("SET LOCAL lock_timeout = '4s'")
            for stmt in HISTORY_DDL:
                conn.execute(stmt)
        for migration in migrations:
            with conn.transaction():
                _lock(conn)
                # Checked under the lock: a concurrent migrator may have applied it meanwhile.
                if migration.version in applied_versions(conn):
                    continue
                statements = _run_file(conn, migration.path)
                conn.execute(INSERT_VERSION, (migration.version, migration.name, statements))
            applied.append(migration.version)
    return applied


def _bootstrap(conn: psycopg.Connection[Any], bootstrap: Path, retries: int = 3) -> None:
    for attempt in range(retries):
        try:
            with conn.transaction():
                _lock(conn)
                if needs_bootstrap(conn):
                    _run_file(conn, bootstrap)
            return
        except MigrationError as exc:
            cause = exc.__cause__
            sqlstate = cause.sqlstate if isinstance(cause, psycopg.Error) else None
            # Another database of this cluster created the same role first: run again.
            if sqlstate not in ROLE_RACE_SQLSTATES or attempt == retries - 1:
                raise


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))


def _run_file(conn: psycopg.Connection[Any], path: Path) -> list[str]:
    # Runs inside the caller's transaction, statement by statement like the CLI's batch.
    sql = path.read_text(encoding="utf-8")
    statements = _split(sql)
    for number, stmt in enumerate(statements, 1):
        try:
            # Bytes: sent as-is by the simple protocol, so '%' needs no escaping.
            conn.execute(stmt.text.encode())
        except psycopg.Error as exc:
            raise MigrationError(_describe(path, sql, number, stmt, exc)) from exc
    return [s.text for s in statements]


def _describe(path: Path, sql: str, number: int, stmt: Statement, exc: psycopg.Error) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    code = LEADING_COMMENTS.match(stmt.text)
    assert code  # the pattern also matches the empty string
    # Without a position (errors raised at run time, e.g. inside DO) point at the code's start.
    if diag.statement_position:
        position = stmt.offset + int(diag.statement_position) - 1
    else:
        position = stmt.offset + code.end()
    line = sql.count("\n", 0, position) + 1
    parts = [f"{path}:{line}: statement {number}: {message} (SQLSTATE {exc.sqlstate})"]
    details = (
        ("DETAIL", diag.message_detail),
        ("HINT", diag.message_hint),
        ("CONTEXT", diag.context),
    )
    parts += [f"  {label}: {value}" for label, value in details if value]
    first_line = (stmt.text[code.end() :].splitlines() or [""])[0]
    parts.append(f"  statement: {first_line[:120]}")
    parts.append("  rolled back: nothing from this file was applied")
    return "\n".join(parts)


def _connect(url: str) -> psycopg.Connection[Any]:
    # Autocommit so each transaction() block is one real transaction; no prepared statements so
    # a Supavisor transaction pooler (port 6543) works too.
    return psycopg.connect(url, autocommit=True, prepare_threshold=None)
