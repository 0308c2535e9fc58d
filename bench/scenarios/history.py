"""Scenario 5: history at scale through the real read function, `list_jobs`, and its cursor.

1,000,000 jobs across 10,000 users, one heavy user holding 100,000 of them. The data is bulk-loaded
with INSERT ... SELECT generate_series, bypassing create_job (which would take hours here): the
jobs are of the free `bench_free` kind (cost 0), so no charge is missing from the ledger and the
balances stay consistent. Then one client times list_jobs for the first page and for page 50
(reached by following next_cursor), and the plan inside list_jobs is captured with auto_explain.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.harness import USER_ID_SQL, Context, user_id
from bench.load import percentile

LIST_SQL = "select public.list_jobs(p_user_id => %s, p_limit => %s, p_cursor => %s, p_status => %s)"

LOAD_PROJECTS = "insert into public.projects (user_id, title) select id, 'history' from auth.users"
# Job g belongs to the heavy user 1 for g <= heavy, else to one of users 2..N in turn; one in ten
# failed; newest first means smallest g.
LOAD_JOBS = (
    "insert into public.jobs (user_id, project_id, kind, status, attempt, cost, credits_used,"
    " params, result, error_message, created_at, updated_at, started_at, finished_at)"
    " select p.user_id, p.id, 'bench_free',"
    "  case when g %% 10 = 0 then 'failed' else 'completed' end, 1, 0, 0,"
    "  jsonb_build_object('prompt', 'job ' || g), jsonb_build_object('ok', g %% 10 <> 0),"
    "  case when g %% 10 = 0 then 'bench failure' end,"
    "  ts, ts, ts, ts + interval '1 second'"
    " from generate_series(1, %(total)s) g"
    " cross join lateral (select now() - g * interval '1 second' as ts,"
    "   case when g <= %(heavy)s then 1 else 2 + g %% (%(users)s - 1) end as n) pick"
    " join public.projects p on p.user_id = " + USER_ID_SQL.format(n="pick.n")
)

KEYSET_EXPLAIN = (
    "explain (analyze, buffers) select j.* from public.jobs j"
    " where j.user_id = %s and (j.created_at, j.id) < (%s, %s)"
    " order by j.created_at desc, j.id desc limit %s"
)


def _timed_pages(
    conn: psycopg.Connection, user: int, page: int, status: str | None, samples: int, size: int
) -> dict[str, Any]:
    """Follow the cursor to `page`, then time fetching that page `samples` times."""
    cursor = None
    for _ in range(page - 1):
        (body,) = conn.execute(LIST_SQL, (user_id(user), size, cursor, status)).fetchone()
        cursor = body["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"user {user} has fewer than {page} pages")
    latencies = []
    for i in range(samples + 10):  # the first 10 warm the plan cache and are not counted
        started = time.perf_counter()
        (body,) = conn.execute(LIST_SQL, (user_id(user), size, cursor, status)).fetchone()
        if i >= 10:
            latencies.append((time.perf_counter() - started) * 1000)
    assert len(body["items"]) == size
    return {
        "samples": samples,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
        "cursor": cursor,
    }


def _plan(conn: psycopg.Connection, user: int, cursor: str | None, size: int) -> str:
    """The plan of the query inside list_jobs, as auto_explain logs it (sent to us as notices)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        conn.execute("load 'auto_explain'")  # superuser only; ships with PostgreSQL's contrib
    except psycopg.Error as exc:
        return f"auto_explain unavailable: {exc}"
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_analyze", "on"),
        ("auto_explain.log_buffers", "on"),
        ("auto_explain.log_nested_statements", "on"),
        ("client_min_messages", "log"),
    ):
        conn.execute("select set_config(%s, %s, false)", (setting, value))
    conn.execute(LIST_SQL, (user_id(user), size, cursor, None)).fetchone()
    conn.execute("set client_min_messages = notice")
    conn.execute("set auto_explain.log_min_duration = -1")
    nested = [n for n in notices if "from public.jobs j" in n and "order by" in n]
    return nested[0] if nested else "\n\n".join(notices)


def _keyset_plan(conn: psycopg.Connection, user: int, page: dict[str, Any], size: int) -> str:
    """For comparison: the same page as a plain keyset query whose bound is an index condition."""
    (after,) = conn.execute(
        "select created_at from public.jobs where id = %s", (page["cursor"],)
    ).fetchone()
    rows = conn.execute(KEYSET_EXPLAIN, (user_id(user), after, page["cursor"], size + 1))
    return "\n".join(row[0] for row in rows)


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    url = ctx.core_copy("s5")
    ctx.log(
        f"s5 history: bulk-loading {cfg.history_jobs:,} jobs over {cfg.users:,} users"
        f" (user 1: {cfg.history_heavy_jobs:,}) ..."
    )
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LOAD_PROJECTS)
        conn.execute(
            LOAD_JOBS,
            {"total": cfg.history_jobs, "heavy": cfg.history_heavy_jobs, "users": cfg.users},
        )
        conn.execute("vacuum analyze public.jobs")
    load_seconds = round(time.monotonic() - started, 1)
    ctx.log(f"    loaded in {load_seconds} s")
    typical = 2  # users 2..N hold (jobs - heavy) / (N - 1) each
    size, samples = cfg.page_size, cfg.history_samples
    typical_last = max(1, (cfg.history_jobs - cfg.history_heavy_jobs) // (cfg.users - 1) // size)
    deep = min(50, cfg.history_heavy_jobs // 10 // size)  # 50, unless --quick has fewer pages
    middle = cfg.history_heavy_jobs // size // 2
    cases = {
        "heavy user, page 1": (1, 1, None),
        f"heavy user, page {deep}": (1, deep, None),
        f"heavy user, page {middle} (middle)": (1, middle, None),
        "heavy user, status=failed, page 1": (1, 1, "failed"),
        f"heavy user, status=failed, page {deep}": (1, deep, "failed"),
        "typical user, page 1": (typical, 1, None),
        f"typical user, last full page ({typical_last})": (typical, typical_last, None),
    }
    pages: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for label, (user, page, status) in cases.items():
            pages[label] = _timed_pages(conn, user, page, status, samples, size)
            ctx.log(
                f"    list_jobs {label:<36} p50 {pages[label]['p50_ms']:6.2f} ms"
                f"  p99 {pages[label]['p99_ms']:6.2f} ms"
            )
        plans = {
            label: _plan(conn, 1, pages[label]["cursor"], size)
            for label in (f"heavy user, page {deep}", f"heavy user, page {middle} (middle)")
        }
        keyset_plan = _keyset_plan(conn, 1, pages[f"heavy user, page {middle} (middle)"], size)
        # Which indexes the reads above used (a write-only index is pure cost on every job write).
        index_scans = dict(
            conn.execute(
                "select indexrelname, idx_scan from pg_stat_user_indexes"
                " where relname = 'jobs' order by indexrelname"
            ).fetchall()
        )
    uses_index = all("Index Scan" in plan for plan in plans.values())
    # Whether the cursor bounds the index scan, or is checked row by row after it (a Filter).
    bound_in_index = all(
        "ROW(created_at, id) <" in line
        for plan in plans.values()
        for line in plan.splitlines()
        if "Index Cond" in line
    )
    ctx.log(f"    plans inside list_jobs use an index: {uses_index}")
    ctx.drop(url)
    for page in pages.values():
        del page["cursor"]
    return {
        "jobs": cfg.history_jobs,
        "heavy_user_jobs": cfg.history_heavy_jobs,
        "users": cfg.users,
        "page_size": size,
        "load_seconds": load_seconds,
        "pages": pages,
        "plans_inside_list_jobs": plans,
        "plan_uses_index": uses_index,
        "cursor_is_index_condition": bound_in_index,
        "plain_keyset_plan_middle_page": keyset_plan,
        "jobs_index_scans": index_scans,
    }
