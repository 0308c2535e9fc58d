-- The outbox (docs/events.md): every money event is a credit_events row written by the money
-- function itself, in the transaction that makes the change, so an event can never disagree with
-- the ledger. Where each type is written, once:
--   write_entry (every ledger entry): credits.granted (a `grant` entry), credits.expired (an
--     `expiry` entry), credits.low (a decrease from >= the threshold to below it) and
--     credits.depleted (a decrease to 0);
--   terminate_with_refund: job.failed, job.cancelled (with the refund);
--   complete_job: job.completed (with a partial capture's refund).
-- maintenance delivers them (shared/push/events.py) through claim_events and
-- record_event_deliveries, which touch event rows only: never a job, account or grant lock.

---------------------------------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------------------------------

-- credits.low fires when a decrease takes the balance from >= the threshold to below it: the
-- account's own threshold, or this deployment's default. 0 turns it off.
alter table public.credit_settings
  add column low_balance_threshold bigint not null default 10 check (low_balance_threshold >= 0);
alter table public.credit_accounts
  add column low_balance_threshold bigint check (low_balance_threshold >= 0);
comment on column public.credit_accounts.low_balance_threshold is
  'credits.low fires when the balance drops below this; null = credit_settings.low_balance_threshold';

-- No foreign keys, as for the ledger: events outlive deleted users and jobs.
create table public.credit_events (
  -- stable per event: the webhook-id of every delivery attempt, so receivers drop duplicates
  id uuid primary key default gen_random_uuid(),
  -- outbox order (events of one transaction share created_at)
  seq bigint generated always as identity,
  user_id uuid not null,
  type text not null check (type in ('job.completed', 'job.failed', 'job.cancelled',
    'credits.granted', 'credits.low', 'credits.depleted', 'credits.expired')),
  payload jsonb not null check (jsonb_typeof(payload) = 'object'),
  created_at timestamptz not null default now(),
  -- delivery: due from next_attempt_at; null once delivered or given up
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at timestamptz default now(),
  last_attempt_at timestamptz,
  last_error text,
  delivered_at timestamptz,
  check (delivered_at is null or next_attempt_at is null)
);
create index credit_events_due on public.credit_events (next_attempt_at)
  where next_attempt_at is not null;
-- what undelivered_events shows: events whose deliveries failed, retrying or given up
create index credit_events_failing on public.credit_events (seq)
  where delivered_at is null and attempts > 0;

---------------------------------------------------------------------------------------------------
-- Writing events
---------------------------------------------------------------------------------------------------

create function credit_jobs_internal.emit_event(p_user_id uuid, p_type text, p_payload jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into public.credit_events (user_id, type, payload) values (p_user_id, p_type, p_payload)
$$;

-- The Job object without its params and result (up to 64 KiB and 1 MiB): what an event carries.
create function credit_jobs_internal.event_job_json(p_job public.jobs) returns jsonb
language sql
stable
set search_path = ''
as $$
  select credit_jobs_internal.job_json(p_job) - 'params' - 'result'
$$;

-- 20261201140000's write_entry, and the events of the entry it writes.
create or replace function credit_jobs_internal.write_entry(
  p_user_id uuid,
  p_job_id uuid,
  p_entry_type text,
  p_amount bigint,
  p_reason text,
  p_grant_id uuid default null
) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_balance bigint;
  v_threshold bigint;
  v_entry_id bigint;
  v_entry jsonb;
begin
  update public.credit_accounts
  set balance = balance + p_amount, updated_at = now()
  where user_id = p_user_id
  returning balance, low_balance_threshold into v_balance, v_threshold;
  insert into public.credit_ledger
    (user_id, job_id, entry_type, amount, balance_after, reason, grant_id)
  values (p_user_id, p_job_id, p_entry_type, p_amount, v_balance, p_reason, p_grant_id)
  returning id into v_entry_id;
  -- events (docs/events.md)
  v_entry := jsonb_build_object('entry_id', v_entry_id, 'entry_type', p_entry_type,
    'amount', p_amount, 'balance', v_balance, 'job_id', p_job_id, 'reason', p_reason);
  if p_entry_type in ('grant', 'expiry') then
    perform credit_jobs_internal.emit_event(p_user_id,
      case p_entry_type when 'grant' then 'credits.granted' else 'credits.expired' end,
      v_entry || jsonb_build_object('grant',
        (select credit_jobs_internal.grant_json(g) from public.credit_grants g where g.id = p_grant_id)));
  end if;
  if p_amount < 0 then
    v_threshold := coalesce(v_threshold,
      (select s.low_balance_threshold from public.credit_settings s));
    if v_balance - p_amount >= v_threshold and v_balance < v_threshold then
      perform credit_jobs_internal.emit_event(p_user_id, 'credits.low',
        v_entry || jsonb_build_object('threshold', v_threshold));
    end if;
    if v_balance = 0 then
      perform credit_jobs_internal.emit_event(p_user_id, 'credits.depleted', v_entry);
    end if;
  end if;
  return v_balance;
end;
$$;

-- 20261122100000's terminate_with_refund, and its job.failed / job.cancelled event.
create or replace function credit_jobs_internal.terminate_with_refund(
  p_job public.jobs,
  p_status text,
  p_reason text
) returns public.jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_balance bigint;
begin
  update public.jobs
  set status = p_status,
      refunded = cost,
      error_message = coalesce(p_reason, error_message),
      lease_expires_at = null,
      worker_id = null,
      finished_at = now()
  where id = p_job.id
  returning * into v_job;
  if v_job.cost > 0 then
    v_balance := credit_jobs_internal.post_entry(
      v_job.user_id, v_job.id, 'refund', v_job.cost,
      format('%s: %s', p_status, coalesce(p_reason, 'no reason given')));
  else
    select balance into v_balance from public.credit_accounts where user_id = v_job.user_id;
  end if;
  perform credit_jobs_internal.emit_event(v_job.user_id, 'job.' || p_status, jsonb_build_object(
    'job', credit_jobs_internal.event_job_json(v_job), 'refunded', v_job.refunded,
    'balance', v_balance));
  return v_job;
end;
$$;

-- 20261122100000's complete_job, and its job.completed event.
create or replace function public.complete_job(
  p_job_id uuid,
  p_attempt integer,
  p_result jsonb default null,
  p_credits_used integer default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_used integer;
  v_balance bigint;
begin
  -- lock + fence
  v_job := credit_jobs_internal.lock_job_for_report(p_job_id, p_attempt);
  if credit_jobs_internal.attempt_is_over(v_job) then
    perform credit_jobs_internal.raise_error('CJ005',
      format('job %s: attempt %s is over, the job waits for its next attempt', p_job_id, p_attempt));
  end if;
  if v_job.status = 'completed' then
    return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'duplicate');
  end if;
  if v_job.status in ('failed', 'cancelled') then
    perform credit_jobs_internal.raise_error('CJ004',
      format('job %s is already %s', p_job_id, v_job.status));
  end if;
  -- validate
  v_used := coalesce(p_credits_used, v_job.cost);
  if v_used not between 0 and v_job.cost then
    perform credit_jobs_internal.raise_error('CJ007',
      format('credits_used must be between 0 and the price %s', v_job.cost));
  end if;
  if p_result is not null and octet_length(p_result::text) > 1048576 then
    perform credit_jobs_internal.raise_error('CJ007', 'result must be at most 1 MiB');
  end if;
  -- write: completion, the partial-capture refund and the event commit together
  update public.jobs
  set status = 'completed',
      result = p_result,
      credits_used = v_used,
      refunded = cost - v_used,
      progress = 100,
      started_at = coalesce(started_at, now()),
      lease_expires_at = null,
      worker_id = null,
      finished_at = now()
  where id = p_job_id
  returning * into v_job;
  if v_job.refunded > 0 then
    v_balance := credit_jobs_internal.post_entry(
      v_job.user_id, v_job.id, 'refund', v_job.refunded,
      format('partial capture: used %s of %s', v_used, v_job.cost));
  else
    select balance into v_balance from public.credit_accounts where user_id = v_job.user_id;
  end if;
  perform credit_jobs_internal.emit_event(v_job.user_id, 'job.completed', jsonb_build_object(
    'job', credit_jobs_internal.event_job_json(v_job), 'refunded', v_job.refunded,
    'balance', v_balance));
  return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'applied');
end;
$$;

---------------------------------------------------------------------------------------------------
-- Delivery (maintenance) and replay (admins)
---------------------------------------------------------------------------------------------------

-- Takes up to p_limit due events, oldest first, skipping those another run holds, and leases them
-- for p_lease_seconds (not due again meanwhile). One short transaction on event rows only; the
-- caller POSTs them outside any transaction. Returns {events: [{id, type, user_id, payload,
-- created_at, attempts}]}, attempts = the failed attempts before this one.
create function public.claim_events(p_limit integer default 50, p_lease_seconds integer default 60)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_events jsonb;
begin
  -- validate
  if p_limit is null or p_limit not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 1000');
  end if;
  if p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
    perform credit_jobs_internal.raise_error('CJ007', 'lease_seconds must be between 1 and 3600');
  end if;
  -- lock + write: due event rows (credit_events_due), leased
  with due as (
    select id from public.credit_events
    where next_attempt_at <= now()
    order by next_attempt_at, seq
    limit p_limit
    for update skip locked
  ), claimed as (
    update public.credit_events e
    set next_attempt_at = now() + make_interval(secs => p_lease_seconds)
    from due
    where e.id = due.id
    returning e.*
  )
  select coalesce(jsonb_agg(jsonb_build_object(
      'id', c.id, 'type', c.type, 'user_id', c.user_id, 'payload', c.payload,
      'created_at', c.created_at, 'attempts', c.attempts)
    order by c.seq), '[]'::jsonb)
  into v_events
  from claimed c;
  return jsonb_build_object('events', v_events);
end;
$$;

-- Records claimed events' attempts: p_results = [{id, delivered, error, retry_in_seconds}].
-- Delivered: done. Failed: due again in retry_in_seconds, or given up when that is null (then it
-- stays in undelivered_events until replay_events). Returns {delivered, failed, gave_up}.
create function public.record_event_deliveries(p_results jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_counts jsonb;
begin
  -- validate
  if jsonb_typeof(p_results) is distinct from 'array' then
    perform credit_jobs_internal.raise_error('CJ007', 'results must be a JSON array');
  end if;
  -- lock + write: those event rows only (a delivered one stays delivered)
  with results as (
    select * from jsonb_to_recordset(p_results)
      as r(id uuid, delivered boolean, error text, retry_in_seconds integer)
  ), recorded as (
    update public.credit_events e
    set attempts = e.attempts + 1,
        last_attempt_at = now(),
        delivered_at = case when r.delivered then now() end,
        next_attempt_at = case when not r.delivered and r.retry_in_seconds is not null
                               then now() + make_interval(secs => greatest(r.retry_in_seconds, 0)) end,
        last_error = case when r.delivered then null
                          else left(coalesce(r.error, 'delivery failed'), 1000) end
    from results r
    where e.id = r.id and e.delivered_at is null
    returning e.delivered_at, e.next_attempt_at
  )
  select jsonb_build_object(
    'delivered', count(*) filter (where delivered_at is not null),
    'failed', count(*) filter (where delivered_at is null),
    'gave_up', count(*) filter (where delivered_at is null and next_attempt_at is null))
  into v_counts
  from recorded;
  return v_counts;
end;
$$;

-- Makes events due now with a fresh count of attempts: those named (delivered or not: a receiver
-- that lost one gets it again, same id), or with null every event that gave up. Returns {replayed}.
create function public.replay_events(p_event_ids uuid[] default null) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- lock + write: event rows only
  if p_event_ids is null then
    update public.credit_events
    set attempts = 0, next_attempt_at = now()
    where delivered_at is null and attempts > 0 and next_attempt_at is null;
  else
    update public.credit_events
    set attempts = 0, next_attempt_at = now(), delivered_at = null
    where id = any (p_event_ids);
  end if;
  get diagnostics v_count = row_count;
  return jsonb_build_object('replayed', v_count);
end;
$$;

-- The operator's backend (or an admin) sets one user's credits.low threshold; null = the default.
create function public.set_low_balance_threshold(p_user_id uuid, p_threshold bigint) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account public.credit_accounts;
begin
  -- validate
  if p_user_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'user_id is required');
  end if;
  if p_threshold < 0 then
    perform credit_jobs_internal.raise_error('CJ007', 'threshold must be 0 or more (null: the default)');
  end if;
  -- lock + write: the account row (not its balance)
  update public.credit_accounts set low_balance_threshold = p_threshold, updated_at = now()
  where user_id = p_user_id
  returning * into v_account;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;
  return jsonb_build_object(
    'user_id', v_account.user_id,
    'low_balance_threshold', v_account.low_balance_threshold,
    'effective_threshold', coalesce(v_account.low_balance_threshold,
      (select s.low_balance_threshold from public.credit_settings s)),
    'outcome', 'applied');
end;
$$;

---------------------------------------------------------------------------------------------------
-- View for admins
---------------------------------------------------------------------------------------------------

-- Events whose deliveries failed: `retrying` (due again at next_attempt_at) or `gave_up` (after
-- the last attempt; replay with supabase/admin/replay_events.sql).
create view public.undelivered_events with (security_invoker = true) as
select e.id, e.user_id, e.type, e.created_at, e.attempts, e.last_attempt_at, e.last_error,
       e.next_attempt_at,
       case when e.next_attempt_at is null then 'gave_up' else 'retrying' end as state,
       e.payload
from public.credit_events e
where e.delivered_at is null and e.attempts > 0
order by e.seq;

---------------------------------------------------------------------------------------------------
-- Security: RLS, grants
---------------------------------------------------------------------------------------------------

-- The operator's outbox, not the users': they read the same facts in their jobs, ledger and
-- grants (and through Realtime). No policy, so no Data API user reads a row.
alter table public.credit_events enable row level security;
revoke all on public.credit_events, public.undelivered_events from anon, authenticated, service_role;
revoke all on all sequences in schema public from anon, authenticated;
grant select on public.credit_events, public.undelivered_events to service_role;
grant update (low_balance_threshold) on public.credit_settings to service_role;

revoke all on all functions in schema credit_jobs_internal from public, anon, authenticated, service_role;
revoke execute on function
  public.claim_events(integer, integer),
  public.record_event_deliveries(jsonb),
  public.replay_events(uuid[]),
  public.set_low_balance_threshold(uuid, bigint)
  from public, anon, authenticated;
grant execute on function
  public.claim_events(integer, integer),
  public.record_event_deliveries(jsonb),
  public.replay_events(uuid[]),
  public.set_low_balance_threshold(uuid, bigint)
  to service_role;
