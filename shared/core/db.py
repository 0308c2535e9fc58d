"""The database port: one call, `rpc(name, **params) -> dict`, over two transports.

- `PostgresDatabase(url)`: psycopg 3 through a `psycopg_pool` pool, one transaction per call
  (a single autocommit statement).
- `SupabaseDatabase(url, service_role_key)`: supabase-py `client.rpc(...)` (PostgREST Data API),
  for deployments that only have SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY.

Both raise only `ApiError` (translated by SQLSTATE through `shared.core.errors`, never by message).

Parameter values: a `dict` is sent as jsonb; a `list` as a Postgres array (e.g. claim_jobs'
`p_kinds text[]`). Wrap any other value meant for a jsonb parameter (a JSON list, string or number
as a job result) in `Json(value)`. UUIDs and datetimes pass as they are.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import select
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.core import errors, jsoncodec
from shared.core.settings import ConfigurationError, Settings

# Supavisor's transaction pooler: a connection may change between statements, so psycopg must
# not prepare statements server-side.
SUPAVISOR_TRANSACTION_PORT = "6543"
# Serverless instances handle one or a few requests at a time: keep one warm, cap the rest.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
POOL_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10
DATA_API_TIMEOUT_SECONDS = 30.0
# Distinct (function, parameter names) the code calls, with room to spare.
RPC_STATEMENTS_CACHED = 256


class Database(Protocol):
    def rpc(self, name: str, **params: Any) -> Any:
        """Call `public.<name>(p_x => ...)` and return its jsonb result (usually a dict)."""
        ...


@dataclass(frozen=True)
class Json:
    """A value for a jsonb parameter that is not a dict (a list, string, number, true/false)."""

    value: Any


class PostgresDatabase:
    def __init__(self, url: str) -> None:
        self.url = url

    def rpc(self, name: str, **params: Any) -> Any:
        query = _rpc_statement(name, tuple(params))
        values = {key: _to_postgres(value) for key, value in params.items()}
        try:
            # one statement in autocommit: the stored procedure's work commits or rolls back whole
            with _pool_for(self.url).connection() as conn:
                row = conn.execute(query, values).fetchone()
        except psycopg.Error as exc:
            raise _translate_psycopg(exc) from exc
        return row[0] if row else None


class SupabaseDatabase:
    def __init__(self, url: str, service_role_key: str) -> None:
        self.url = url
        self.service_role_key = service_role_key
        self._client = None
        self._lock = threading.Lock()

    def rpc(self, name: str, **params: Any) -> Any:
        import httpx
        from postgrest.exceptions import APIError

        body = {key: _to_json(value) for key, value in params.items()}
        try:
            return self._get_client().rpc(name, body).execute().data
        except APIError as exc:
            if exc.code in errors.POSTGREST_UNAVAILABLE:
                raise errors.database_unavailable() from exc
            raise errors.from_sqlstate(exc.code, exc.message) from exc
        except httpx.TransportError as exc:
            raise errors.database_unavailable() from exc

    def _get_client(self):
        with self._lock:
            if self._client is None:
                import httpx
                from supabase.lib.client_options import SyncClientOptions

                from supabase import create_client

                http = httpx.Client(timeout=httpx.Timeout(DATA_API_TIMEOUT_SECONDS, connect=5.0))
                self._client = create_client(
                    self.url, self.service_role_key, SyncClientOptions(httpx_client=http)
                )
            return self._client


@functools.lru_cache(maxsize=RPC_STATEMENTS_CACHED)
def _rpc_statement(name: str, keys: tuple[str, ...]) -> str:
    """`select "public"."<name>"("<key>" => %(<key>)s, ...)`, composed once per name and keys.

    As text, psycopg also reuses its parsed form of the statement (a Composed is rendered anew on
    every execute). Names and keys come from the code, never from a request.
    """
    return (
        sql.SQL("select {}.{}({})")
        .format(
            sql.Identifier("public"),
            sql.Identifier(name),
            sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(key), sql.Placeholder(key))
                for key in keys
            ),
        )
        .as_string()
    )


def database_from_settings(settings: Settings) -> Database:
    """DATABASE_URL wins; otherwise the Data API with the service-role key."""
    if settings.database_url:
        return PostgresDatabase(settings.database_url)
    if settings.supabase_url and settings.supabase_service_role_key:
        return SupabaseDatabase(settings.supabase_url, settings.supabase_service_role_key)
    raise ConfigurationError("set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")


# One pool per URL for the whole process, so re-importing functions/main.py or rebuilding
# services does not open more connections.
_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


def _pool_for(url: str) -> ConnectionPool:
    with _pools_lock:
        pool = _pools.get(url)
        if pool is None:
            # Every call is one statement, so autocommit makes it its own transaction without
            # the two extra round trips of BEGIN and COMMIT.
            kwargs: dict[str, Any] = {
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "autocommit": True,
            }
            if _is_transaction_pooler(url):
                kwargs["prepare_threshold"] = None
            pool = ConnectionPool(
                url,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=POOL_TIMEOUT_SECONDS,
                kwargs=kwargs,
                configure=_configure_connection,
                check=_check_idle_connection,
                open=True,
                name="credit-jobs",
            )
            _pools[url] = pool
        return pool


def _configure_connection(conn: psycopg.Connection) -> None:
    set_json_loads(jsoncodec.loads, conn)


def _check_idle_connection(conn: psycopg.Connection) -> None:
    """The pool's check before handing out a connection, without a round trip while it is sound.

    A pooler or the server may drop idle connections. An idle connection has nothing to read
    unless the server closed it or said something (shutting down, terminating the backend): then,
    and for a connection psycopg knows is closed, the full check (an empty query) runs, and fails
    on a dead one so the pool takes another.
    """
    if conn.closed or _readable(conn.pgconn.socket):
        ConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def close_pools() -> None:
    """Close every pool (tests call this between databases; also runs at exit)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


atexit.register(close_pools)


def _is_transaction_pooler(url: str) -> bool:
    port = str(conninfo_to_dict(url).get("port") or "")
    return SUPAVISOR_TRANSACTION_PORT in port.split(",")


def _translate_psycopg(exc: psycopg.Error) -> errors.ApiError:
    # Our business errors first: they are raised with a CJ SQLSTATE whatever the class.
    if exc.sqlstate in errors.SQLSTATE_ERRORS:
        return errors.from_sqlstate(exc.sqlstate, exc.diag.message_primary)
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return errors.database_unavailable()
    return errors.from_sqlstate(exc.sqlstate, str(exc))


def _to_postgres(value: Any) -> Any:
    if isinstance(value, Json):
        return Jsonb(value.value)
    if isinstance(value, dict):
        return Jsonb(value)
    return value


def _to_json(value: Any) -> Any:
    if isinstance(value, Json):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value
