"""Scenario 8: the hot operations next to a year of history, and what that history weighs.

Two databases, copies of the core data set: one as it is (N = 0: only the core set's own
10,000 finished jobs, `bench.harness.HISTORY_JOBS`) and one holding `scaling_jobs` (10,000,000)
more terminal jobs over every user, bulk-loaded with INSERT ... SELECT
generate_series in chunks, with everything the functions would have written for them: a project
per standalone job and one per three-step project (with its steps), the charge and, for failed
and cancelled jobs, the refund in the ledger, an allocation per charge, a purchase
(credit_grants, its ledger entry, its Stripe payment_events row) per `scaling_jobs_per_purchase`
jobs of a user, and the delivered outbox event of every job end and every purchase. Job g
belongs to user 1 + g % users, in that user's round g / users; the jobs are spread evenly over
the last `scaling_days` days, oldest first; a user's rounds follow one fixed pattern of kinds
and outcomes per purchase (PATTERN), so each purchase pays for exactly its completed jobs, the
refunds went back to it, and every balance still equals its ledger and its grants (checked after
the load: credit_discrepancies is empty). balance_after is the unchanged balance, not a running
one (nothing measured reads it). No jobs wait or run (the flat_cost scenario measures backlog).

Then every hot operation of flat_cost, plus the keyed create, the status read, the projects
page, the credit and outbox sweeps and the admin views, is timed call by call on both databases
in turn (bench.probe), and the tables' and indexes' sizes are recorded at both sizes, with the
rows, dead tuples and HOT updates each table took during the measurement and, where
pg_stat_statements is loaded, the shared buffers each call hit, read, dirtied and wrote.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bench.harness import USER_BALANCE, USER_ID_SQL, Context, user_id
from bench.probe import (
    HISTORY_PAGE,
    HISTORY_USER,
    HOT,
    OPERATIONS,
    PER_UNIT,
    Probe,
    add_history,
    growth,
    time_rounds,
)

# kind, cost: the history's kinds, so its jobs and ledger look like a product's
HISTORY_KINDS = (("bench_chat", 1), ("bench_image", 4), ("bench_story", 10), ("bench_voice", 25))
PATTERN_SEED = 8
FAILED_SHARE, CANCELLED_SHARE = 0.08, 0.06  # the rest completed
STEP_PROJECT_EVERY = 10  # of a user's rounds, 7 standalone jobs, then one project of 3 steps
STANDALONE = 7
AUDIT_CALLS = 3  # per round: full scans, seconds each at 10M rows

# One row per job g of first..last: who, when, what (from PATTERN by place in the purchase), and
# the ids of the rows it belongs to (md5 of a name: as random as gen_random_uuid's, but known).
SPEC = (
    "select g, u.n, u.r, u.user_id, md5('job ' || g)::uuid as job_id,"
    "  md5('project ' || case when u.r %% {every} < {standalone} then g"
    "    else g - (u.r %% {every} - {standalone}) * %(users)s end)::uuid as project_id,"
    "  case when u.r %% {every} >= {standalone} then u.r %% {every} - {standalone} + 1 end"
    "    as step_number,"
    "  md5('grant ' || (g - u.r %% %(per_purchase)s * %(users)s))::uuid as grant_id,"
    "  p.status, p.kind, p.cost, t.ts,"
    "  t.ts + case p.status when 'completed' then interval '30 seconds'"
    "    when 'failed' then interval '95 seconds' else interval '10 seconds' end as finished"
    " from generate_series(%(first)s::bigint, %(last)s::bigint) g"
    " cross join lateral (select 1 + g %% %(users)s as n, g / %(users)s as r,"
    "   " + USER_ID_SQL.format(n="1 + g %% %(users)s") + " as user_id) u"
    " cross join lateral (select 1 + (u.r + 7 * u.n) %% %(per_purchase)s as place,"
    "   %(until)s::timestamptz"
    "    - (%(total)s - g)::float8 * %(span)s / %(total)s * interval '1 second' as ts) t"
    " cross join lateral (select (%(statuses)s::text[])[t.place] as status,"
    "   (%(kinds)s::text[])[t.place] as kind, (%(costs)s::int[])[t.place] as cost) p"
).format(every=STEP_PROJECT_EVERY, standalone=STANDALONE)

LOAD = (
    # projects: one per standalone job, one per step project (made by its first step's job)
    "insert into public.projects (id, user_id, title, created_at, updated_at)"
    " select s.project_id, s.user_id, initcap(replace(s.kind, '_', ' '))"
    "  || to_char(s.ts, ' YYYY-MM-DD HH24:MI'), s.ts, s.finished"
    " from (" + SPEC + ") s where s.step_number is null or s.step_number = 1",
    # purchases: the grant (spent), its ledger entry, its event and its Stripe event
    "with s as (" + SPEC + "), purchases as ("
    " insert into public.credit_grants (id, user_id, amount, remaining, category, expires_at,"
    "  source, external_id, payment_intent, reason, created_at)"
    " select s.grant_id, s.user_id, %(purchase)s, 0, 'paid', s.ts + interval '365 days',"
    "  'stripe', 'cs_bench_' || s.g, 'pi_bench_' || s.g,"
    "  format('Stripe checkout cs_bench_%%s: bench_pack', s.g), s.ts - interval '1 minute'"
    " from s where s.r %% %(per_purchase)s = 0 returning *"
    "), entries as ("
    " insert into public.credit_ledger"
    "  (user_id, entry_type, amount, balance_after, reason, grant_id, created_at)"
    " select user_id, 'grant', amount, %(balance)s, reason, id, created_at from purchases"
    " returning id, user_id, amount, reason, grant_id, created_at"
    "), granted as ("
    " insert into public.credit_events (user_id, type, payload, created_at, attempts,"
    "  next_attempt_at, last_attempt_at, delivered_at)"
    " select e.user_id, 'credits.granted', jsonb_build_object('entry_id', e.id,"
    "   'entry_type', 'grant', 'amount', e.amount, 'balance', %(balance)s, 'job_id', null,"
    "   'reason', e.reason,"
    "   'grant', credit_jobs_internal.grant_json(row(p.*)::public.credit_grants)),"
    "  e.created_at, 1, null, e.created_at + interval '1 second',"
    "  e.created_at + interval '1 second'"
    " from entries e join purchases p on p.id = e.grant_id"
    ") insert into public.payment_events"
    "  (id, type, payload, outcome, payment_intent, grant_id, received_at, processed_at)"
    " select 'evt_bench_' || p.external_id, 'checkout.session.completed',"
    "  jsonb_build_object('id', 'evt_bench_' || p.external_id, 'object', 'event',"
    "   'type', 'checkout.session.completed', 'api_version', '2025-01-27.acacia',"
    "   'created', extract(epoch from p.created_at)::bigint, 'livemode', false,"
    "   'data', jsonb_build_object('object', jsonb_build_object('id', p.external_id,"
    "    'object', 'checkout.session', 'mode', 'payment', 'status', 'complete',"
    "    'payment_status', 'paid', 'amount_total', 999, 'currency', 'usd',"
    "    'customer', 'cus_bench_' || p.user_id, 'client_reference_id', p.user_id,"
    "    'payment_intent', p.payment_intent, 'metadata', jsonb_build_object("
    "     'credit_package', 'bench_pack'), 'created', extract(epoch from p.created_at)::bigint,"
    "    'success_url', 'https://app.example.com/credits?paid=1'))),"
    "  'applied', p.payment_intent, p.id, p.created_at, p.created_at"
    " from purchases p",
    # the jobs, their charges and refunds, allocations and end events
    "with s as materialized (" + SPEC + "), jobs as ("
    " insert into public.jobs (id, user_id, project_id, step_number, kind, status, attempt, cost,"
    "  credits_used, refunded, params, result, error_message, progress, idempotency_key,"
    "  request_hash, pushed, available_at, dispatched_at, created_at, updated_at, started_at,"
    "  finished_at)"
    " select s.job_id, s.user_id, s.project_id, s.step_number, s.kind, s.status,"
    "  case s.status when 'cancelled' then 0 when 'failed' then 3 else 1 end, s.cost,"
    "  case when s.status = 'completed' then s.cost end,"
    "  case when s.status = 'completed' then 0 else s.cost end,"
    "  jsonb_build_object('prompt', 'a lighthouse keeper, take ' || s.g, 'style', 'default'),"
    "  case when s.status = 'completed' then jsonb_build_object("
    "   'url', 'https://cdn.example.com/bench/' || s.job_id || '.png', 'seconds', 28) end,"
    "  case s.status when 'failed' then 'the model gave up' when 'cancelled'"
    "   then 'cancelled by user' end,"
    "  case when s.status = 'completed' then 100 end,"
    "  case when s.g %% 2 = 0 then 'bench-' || s.g end,"
    "  case when s.g %% 2 = 0 then md5(s.g::text) end,"
    "  s.g %% 3 <> 0, s.ts, case when s.g %% 3 <> 0 then s.ts end, s.ts, s.finished,"
    "  case when s.status <> 'cancelled' then s.ts + interval '2 seconds' end, s.finished"
    " from s returning *"
    "), entries as ("
    " insert into public.credit_ledger"
    "  (user_id, job_id, entry_type, amount, balance_after, reason, created_at)"
    " select s.user_id, s.job_id, e.entry_type, e.amount, %(balance)s, e.reason, e.at"
    " from s cross join lateral (values"
    "  ('charge', -s.cost, format('job %%s (%%s)', s.job_id, s.kind), s.ts),"
    "  ('refund', s.cost, s.status || ': ' || case s.status when 'failed'"
    "   then 'the model gave up' else 'cancelled by user' end, s.finished))"
    "  e(entry_type, amount, reason, at)"
    " where e.entry_type = 'charge' or s.status <> 'completed'"
    "), allocations as ("
    " insert into public.credit_allocations (job_id, grant_id, seq, amount, returned)"
    " select s.job_id, s.grant_id, 1, s.cost, case when s.status = 'completed' then 0"
    "  else s.cost end from s"
    ") insert into public.credit_events (user_id, type, payload, created_at, attempts,"
    "  next_attempt_at, last_attempt_at, delivered_at)"
    " select j.user_id, 'job.' || j.status, jsonb_build_object("
    # credit_jobs_internal.event_job_json's keys, built here: that function is not inlined
    "  'job', jsonb_build_object('id', j.id, 'project_id', j.project_id,"
    "   'step_number', j.step_number, 'kind', j.kind, 'status', j.status, 'attempt', j.attempt,"
    "   'cost', j.cost, 'credits_used', j.credits_used, 'refunded', j.refunded,"
    "   'error_message', j.error_message, 'progress', j.progress, 'created_at', j.created_at,"
    "   'updated_at', j.updated_at, 'started_at', j.started_at, 'finished_at', j.finished_at),"
    "  'refunded', j.refunded, 'balance', %(balance)s),"
    "  j.finished_at, 1, null, j.finished_at + interval '1 second',"
    "  j.finished_at + interval '1 second'"
    " from jobs j",
    "insert into public.project_steps"
    "  (project_id, step_number, user_id, data, completed_at, created_at, updated_at)"
    " select s.project_id, s.step_number, s.user_id,"
    "  jsonb_build_object('script', 'scene ' || s.step_number, 'voice', 'warm'),"
    "  case when s.status = 'completed' then s.finished end, s.ts, s.finished"
    " from (" + SPEC + ") s where s.step_number is not null",
)
CUSTOMERS = (
    "insert into public.stripe_customers (customer_id, user_id)"
    " select 'cus_bench_' || id, id from auth.users"
)
ADD_KINDS = "insert into public.job_kinds (kind, cost) select * from unnest(%s::text[], %s::int[])"
SIZES = (
    "select c.relname, c.relkind = 'i', pg_relation_size(c.oid), pg_table_size(c.oid),"
    " pg_total_relation_size(c.oid), coalesce(i.indrelid::regclass::text, c.relname)"
    " from pg_class c join pg_namespace ns on ns.oid = c.relnamespace"
    " left join pg_index i on i.indexrelid = c.oid"
    " where ns.nspname = 'public' and c.relkind in ('r', 'i') order by c.relname"
)
ACTIVITY = (
    "select relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup"
    " from pg_stat_user_tables where schemaname = 'public'"
)
# Where the server records them: shared buffers hit, read (from the OS or disk), dirtied and
# written per call of each statement the probe ran in this database.
THIS_DATABASE = "(select oid from pg_database where datname = current_database())"
STATEMENTS_RESET = f"select pg_stat_statements_reset(0, {THIS_DATABASE}, 0)"
STATEMENTS = (
    "select query, calls, total_exec_time, shared_blks_hit, shared_blks_read,"
    " shared_blks_dirtied, shared_blks_written from pg_stat_statements"
    f" where dbid = {THIS_DATABASE} and calls > 0"
    " and (query like 'select public.%' or query like 'select count(*) from%')"
)
# The biggest tables, each frozen as an anti-wraparound vacuum does: a pass over every page.
FROZEN = ("jobs", "credit_ledger", "credit_events")
# Retention as the schema stands: the oldest day of delivered events (no index leads with time).
OLDEST_DAY = (
    "with gone as (delete from public.credit_events where delivered_at is not null"
    " and created_at < now() - %s * interval '1 day' returning 1) select count(*) from gone"
)
KEYED_CREATE = "select public.create_job(p_user_id => %s, p_kind => %s, p_idempotency_key => %s)"
GET_JOB = "select public.get_job(p_user_id => %s, p_job_id => %s)"
CLAIM_EVENTS = "select public.claim_events(p_limit => 50)"
RECORD_DELIVERIES = "select public.record_event_deliveries(p_results => %s)"
COUNT = "select count(*) from (select 1 from public.{} limit 100) v"
AUDIT = "select count(*) from public.credit_discrepancies"
# What maintenance would have done with the events written so far (grants, the history user's).
DELIVERED = (
    "update public.credit_events set attempts = 1, last_attempt_at = now(), delivered_at = now(),"
    " next_attempt_at = null where delivered_at is null"
)
EXTRA = (
    "create_job (idempotency key)",
    "get_job (status)",
    "list_projects (first page)",
    "expire_credits (nothing due)",
    "claim_events (outbox sweep)",
    "undelivered_events (admin view)",
    "stalled_jobs (admin view)",
    "credit_discrepancies (full audit)",
)
SCALING_OPERATIONS = OPERATIONS[:1] + EXTRA[:2] + OPERATIONS[1:] + EXTRA[2:]
# What users and maintenance call all day; the admin views and the audit are run by hand.
HOT_OPERATIONS = tuple(op for op in SCALING_OPERATIONS if not op.endswith(("view)", "audit)")))


class ScalingProbe(Probe):
    """flat_cost's probe, plus the operations that read or write the history."""

    def step(self, op: str) -> None:
        if op == "create_job (idempotency key)":
            owner, key = self.owner(), f"scaling-{uuid.UUID(int=self.rng.getrandbits(128))}"
            self.created.append((self.timed(op, KEYED_CREATE, (owner, HOT, key))["job"], owner))
        elif op == "get_job (status)":
            job, owner = self.created[self.rng.randrange(len(self.created))]
            self.timed(op, GET_JOB, (owner, job["id"]))
        elif op == "list_projects (first page)":
            self.timed(op, HISTORY_PAGE.format("list_projects"), (user_id(HISTORY_USER),))
        elif op == "claim_events (outbox sweep)":
            events = self.timed(op, CLAIM_EVENTS)["events"]
            if events:  # delivered, as maintenance records them (not timed)
                results = [{"id": e["id"], "delivered": True} for e in events]
                self.conn.execute(RECORD_DELIVERIES, (Jsonb(results),))
        elif op.endswith("(admin view)"):
            self.timed(op, COUNT.format(op.split()[0]))
        elif op == "credit_discrepancies (full audit)":
            self.timed(op, AUDIT)
        else:
            super().step(op)


def pattern(per_purchase: int) -> list[tuple[str, str, int]]:
    """The (status, kind, cost) of each place in a purchase's run of jobs: fixed shares of
    failed and cancelled at seeded places, kinds drawn at random, the first place completed."""
    rng = random.Random(PATTERN_SEED)
    failed = round(per_purchase * FAILED_SHARE)
    cancelled = round(per_purchase * CANCELLED_SHARE)
    statuses = ["failed"] * failed + ["cancelled"] * cancelled
    statuses += ["completed"] * (per_purchase - len(statuses))
    rng.shuffle(statuses)
    first_completed = statuses.index("completed")
    statuses[0], statuses[first_completed] = statuses[first_completed], statuses[0]
    return [(status, *rng.choice(HISTORY_KINDS)) for status in statuses]


def load_history(ctx: Context, conn: psycopg.Connection, total: int) -> dict[str, Any]:
    """Bulk-load `total` jobs of history (see the module docstring); returns the timings."""
    cfg = ctx.config
    users, per_purchase = cfg.users, cfg.scaling_jobs_per_purchase
    if total % users or (total // users) % per_purchase:
        raise ValueError(f"{total:,} jobs must be whole purchases of {per_purchase} per user")
    places = pattern(per_purchase)
    statuses, kinds, costs = (list(column) for column in zip(*places, strict=True))
    (until,) = conn.execute("select now()").fetchone()
    params = {
        "users": users,
        "total": total,
        "per_purchase": per_purchase,
        "span": cfg.scaling_days * 86400,
        "until": until,
        "statuses": statuses,
        "kinds": kinds,
        "costs": costs,
        "balance": USER_BALANCE,
        "purchase": sum(cost for status, _, cost in places if status == "completed"),
    }
    conn.execute(CUSTOMERS)
    started = time.monotonic()
    chunk = cfg.scaling_chunk
    for first in range(0, total, chunk):
        last = min(first + chunk, total) - 1
        for statement in LOAD:
            conn.execute(statement, {**params, "first": first, "last": last})
        ctx.server.checkpoint()  # recycles the WAL chunk by chunk
        elapsed = time.monotonic() - started
        ctx.log(
            f"    {last + 1:>12,} jobs loaded, {elapsed:6.0f} s ({(last + 1) / elapsed:,.0f}/s)"
        )
    load_seconds = time.monotonic() - started
    conn.execute("vacuum analyze")
    vacuum_seconds = time.monotonic() - started - load_seconds
    ctx.log(f"    loaded in {load_seconds:.0f} s, vacuum analyze {vacuum_seconds:.0f} s")
    return {
        "load_seconds": round(load_seconds, 1),
        "vacuum_seconds": round(vacuum_seconds, 1),
    }


def sizes(conn: psycopg.Connection) -> dict[str, Any]:
    """Rows and bytes of every public table (heap + TOAST, its indexes, total) and index."""
    tables: dict[str, Any] = {}
    indexes: dict[str, Any] = {}
    for name, is_index, relation, table, total, owner in conn.execute(SIZES).fetchall():
        if is_index:
            indexes[name] = {"table": owner, "bytes": relation}
        else:
            count = sql.SQL("select count(*) from public.{}").format(sql.Identifier(name))
            (rows,) = conn.execute(count).fetchone()
            tables[name] = {"rows": rows, "table_bytes": table, "index_bytes": total - table,
                            "total_bytes": total}  # fmt: skip
    (database,) = conn.execute("select pg_database_size(current_database())").fetchone()
    return {"database_bytes": database, "tables": tables, "indexes": indexes}


def activity(conn: psycopg.Connection) -> dict[str, tuple[int, ...]]:
    """Per table: rows inserted, updated, HOT-updated and deleted so far, and dead now."""
    conn.execute("select pg_stat_force_next_flush()")  # this session's counts, before reading
    return {name: tuple(values) for name, *values in conn.execute(ACTIVITY).fetchall()}


def _activity_since(before: dict[str, tuple[int, ...]], conn: psycopg.Connection) -> dict:
    fields = ("inserted", "updated", "hot_updated", "deleted")
    after = activity(conn)
    return {
        name: {
            **{f: now - then for f, now, then in zip(fields, values, before[name], strict=False)},
            "dead_now": values[-1],
        }
        for name, values in after.items()
        if values[:4] != before[name][:4]
    }


def buffers(conn: psycopg.Connection) -> dict[str, dict[str, float]]:
    """Per statement the probe ran (labelled by its function or view): calls, ms and shared
    buffers hit, read, dirtied and written per call, from pg_stat_statements."""
    result = {}
    for query, calls, ms, *blocks in conn.execute(STATEMENTS).fetchall():
        label = re.search(r"public\.(\w+)", query).group(1)
        if "p_idempotency_key" in query:
            label += " (idempotency key)"
        per_call = dict(zip(("hit", "read", "dirtied", "written"), blocks, strict=True))
        result[label] = {
            "calls": calls,
            "ms": round(ms / calls, 3),
            **{key: round(value / calls, 2) for key, value in per_call.items()},
        }
    return result


def maintenance(conn: psycopg.Connection, days: int) -> dict[str, Any]:
    """Seconds to freeze the biggest tables, then to delete the oldest day of delivered events
    and vacuum what that left (the vacuum reads each of the table's indexes whole)."""

    def timed(statement: sql.Composable | str, params: tuple = ()) -> tuple[float, Any]:
        started = time.monotonic()
        cursor = conn.execute(statement, params)
        row = cursor.fetchone() if cursor.description else None
        return round(time.monotonic() - started, 1), row

    frozen = {
        table: timed(sql.SQL("vacuum (freeze) public.{}").format(sql.Identifier(table)))[0]
        for table in FROZEN
    }
    delete_seconds, (rows,) = timed(OLDEST_DAY, (days - 1,))
    vacuum_seconds, _ = timed("vacuum public.credit_events")
    return {
        "vacuum_freeze_seconds": frozen,
        "oldest_day_of_events": {
            "rows": rows,
            "delete_seconds": delete_seconds,
            "vacuum_seconds": vacuum_seconds,
        },
    }


def _calls(samples: int) -> Callable[[str], int]:
    """Calls per round: flat_cost's, except a few for each full scan."""
    return lambda op: AUDIT_CALLS if op.endswith("(full audit)") else PER_UNIT.get(op, 1) * samples


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    totals = [0, cfg.scaling_jobs]
    probes, loads, before, measured = [], {}, {}, {}
    statements = ctx.server.has_pg_stat_statements()
    for total in totals:
        url = ctx.core_copy(f"s8_{total}")
        with psycopg.connect(url, autocommit=True) as conn:
            names, costs = zip(*HISTORY_KINDS, strict=True)
            conn.execute(ADD_KINDS, (list(names), list(costs)))
            add_history(conn)
            conn.execute(DELIVERED)
            if total:
                ctx.log(f"s8 scaling: loading {total:,} jobs of history over {cfg.users:,} users")
                loads[str(total)] = load_history(ctx, conn, total)
                (discrepancies,) = conn.execute(AUDIT).fetchone()
                loads[str(total)]["ledger_discrepancies"] = discrepancies
            else:
                conn.execute("vacuum analyze")
            measured[str(total)] = {"before": sizes(conn)}
            before[str(total)] = activity(conn)
            if statements:
                conn.execute("create extension if not exists pg_stat_statements")
                conn.execute(STATEMENTS_RESET)
        probes.append(ScalingProbe(url, total, cfg.users, seed=total))
    rounds = time_rounds(ctx, probes, SCALING_OPERATIONS, cfg.scaling_samples,
                         calls=_calls(cfg.scaling_samples), label="s8 scaling")  # fmt: skip
    operations = growth(ctx, rounds, totals, SCALING_OPERATIONS)
    for probe in probes:
        key = str(probe.size)
        measured[key]["during_measurement"] = _activity_since(before[key], probe.conn)
        measured[key]["buffers_per_call"] = buffers(probe.conn) if statements else {}
        if probe.size:
            ctx.log(f"s8 scaling: maintenance at {probe.size:,} jobs")
            loads[key]["maintenance"] = maintenance(probe.conn, cfg.scaling_days)
            ctx.log(f"    {loads[key]['maintenance']}")
        measured[key]["after"] = sizes(probe.conn)
        probe.close()
        ctx.drop(probe.url)
    return {
        "jobs": totals,
        "users": cfg.users,
        "days": cfg.scaling_days,
        "samples": cfg.scaling_samples,
        "hot_operations": HOT_OPERATIONS,
        "load": loads,
        "operations": operations,
        "sizes": measured,
        "rounds": rounds,
    }
