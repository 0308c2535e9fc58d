-- Flat cost and fair claims. Every queue-side scan reads an index that leads with what the
-- operation asks for (the kind, then the due time or the fair order) and stops at the first row
-- that is not due, so jobs of other kinds, of paused kinds, still waiting out a retry delay,
-- waiting on a pipeline or in flight are never walked. Within a kind, waiting jobs are served
-- round robin across users (jobs.fair_key), so one user's backlog does not delay anyone else's
-- job. The queue functions run with plan_cache_mode = force_generic_plan: each statement is
-- planned once per connection, not on every call (planning against a big jobs table costs more
-- than these index probes); tests/integration/test_flat_cost.py checks those plans.

---------------------------------------------------------------------------------------------------
-- The fair order
---------------------------------------------------------------------------------------------------

-- Round robin by rounds: a waiting job's key is one round after the round being served now (the
-- smallest key waiting) or after its owner's last waiting job of the kind, whichever is later.
-- So every user with work waiting gets one job per round, and a newcomer joins the next round.
-- A retry queues again like a new job of its owner once its delay is over; a cancelled job leaves
-- a gap its owner's later jobs keep (they are never served later than without the cancel).
alter table public.jobs add column fair_key bigint;
comment on column public.jobs.fair_key is
  'place in the kind''s round-robin order while the job waits for an attempt to start (claimed '
  'or dispatched in ascending order); null while a retry waits out its delay';

-- Jobs already waiting: each user's k-th waiting job of a kind is in round k.
update public.jobs j
set fair_key = w.round
from (
  select id, row_number() over (partition by kind, pushed, user_id order by available_at, created_at)
           as round
  from public.jobs
  where status = 'pending' and dispatched_at is null and available_at <= now()
) w
where j.id = w.id;

---------------------------------------------------------------------------------------------------
-- Indexes: one per scan, each leading with what the scan asks for
---------------------------------------------------------------------------------------------------

-- Waiting for an attempt to start (queue jobs, pushed retries), per kind and mode, in fair order.
create index jobs_fair_queue on public.jobs (kind, pushed, fair_key, available_at)
  where status = 'pending' and dispatched_at is null and fair_key is not null;
-- The owner's last place in that order.
create index jobs_fair_user on public.jobs (user_id, kind, pushed, fair_key)
  where status = 'pending' and dispatched_at is null and fair_key is not null;
-- Retries waiting out their delay, by due time.
create index jobs_retry_delay on public.jobs (kind, pushed, available_at)
  where status = 'pending' and dispatched_at is null and fair_key is null;
-- Pushed jobs handed to a pipeline that has not reported yet, per kind: by the pipeline's deadline
-- to answer (the lease), and by the dispatch deadline.
create index jobs_awaiting_pipeline on public.jobs (kind, lease_expires_at)
  where status = 'pending' and dispatched_at is not null;
create index jobs_dispatch_deadline on public.jobs (kind, dispatched_at)
  where status = 'pending' and dispatched_at is not null;
-- Leases of running jobs, for the reaper.
create index jobs_processing_lease on public.jobs (lease_expires_at) where status = 'processing';

drop index public.jobs_claimable;
drop index public.jobs_to_dispatch;
drop index public.jobs_lease;

---------------------------------------------------------------------------------------------------
-- Taking a place: on insert, when a job goes back to waiting, and when a retry's delay is over
---------------------------------------------------------------------------------------------------

-- plpgsql, so its statement is planned once per connection (its callers plan generically).
create function credit_jobs_internal.next_fair_key(p_kind text, p_pushed boolean, p_user_id uuid)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
  return greatest(
    (select j.fair_key from public.jobs j  -- jobs_fair_queue: the round served now
     where j.kind = p_kind and j.pushed = p_pushed and j.status = 'pending'
       and j.dispatched_at is null and j.fair_key is not null
     order by j.fair_key
     limit 1),
    (select j.fair_key from public.jobs j  -- jobs_fair_user: the owner's last round
     where j.user_id = p_user_id and j.kind = p_kind and j.pushed = p_pushed
       and j.status = 'pending' and j.dispatched_at is null and j.fair_key is not null
     order by j.fair_key desc
     limit 1),
    0) + 1;
end;
$$;

create function credit_jobs_internal.set_fair_key() returns trigger
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
begin
  -- a retry still in its delay takes its place when it is due (queue_due_retries)
  new.fair_key := case when new.available_at <= now()
    then credit_jobs_internal.next_fair_key(new.kind, new.pushed, new.user_id) end;
  return new;
end;
$$;

-- Named after jobs_guard_update so they fire after it (illegal moves are refused first).
create trigger jobs_set_fair_key_on_insert
  before insert on public.jobs
  for each row
  when (new.status = 'pending' and new.dispatched_at is null and new.fair_key is null)
  execute function credit_jobs_internal.set_fair_key();
create trigger jobs_set_fair_key_on_requeue
  before update of status, dispatched_at on public.jobs
  for each row
  when (new.status = 'pending' and new.dispatched_at is null
        and (old.status <> 'pending' or old.dispatched_at is not null))
  execute function credit_jobs_internal.set_fair_key();

-- Up to p_limit retries of one kind and mode whose delay is over, oldest first, take their place
-- (rows another transaction holds are skipped). Called before each claim or dispatch scan, so
-- due retries are queued at least as fast as they can be started.
create function credit_jobs_internal.queue_due_retries(
  p_kind text,
  p_pushed boolean,
  p_limit integer
) returns void
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_job record;
begin
  for v_job in
    select j.id, j.user_id
    from public.jobs j  -- jobs_retry_delay
    where j.kind = p_kind and j.pushed = p_pushed and j.status = 'pending'
      and j.dispatched_at is null and j.fair_key is null and j.available_at <= now()
    order by j.available_at
    limit p_limit
    for update skip locked
  loop
    update public.jobs
    set fair_key = credit_jobs_internal.next_fair_key(p_kind, p_pushed, v_job.user_id)
    where id = v_job.id;
  end loop;
end;
$$;

---------------------------------------------------------------------------------------------------
-- claim_jobs: per requested kind, the fair order's head
---------------------------------------------------------------------------------------------------

create or replace function public.claim_jobs(
  p_worker_id text,
  p_kinds text[] default null,
  p_limit integer default 1
) returns jsonb
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_jobs jsonb;
begin
  -- validate
  if p_worker_id is null or char_length(p_worker_id) not between 1 and 200 then
    perform credit_jobs_internal.raise_error('CJ007', 'worker_id must be 1 to 200 characters');
  end if;
  if p_limit is null or p_limit not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 1000');
  end if;

  perform credit_jobs_internal.queue_due_retries(k.kind, false, p_limit)
  from public.job_kinds k
  where not k.paused and (p_kinds is null or k.kind = any (p_kinds));

  -- lock + write: per unpaused requested kind, the head of its fair order (skipping rows another
  -- worker holds, and jobs past their start deadline: fail_unstarted_jobs refunds those); kinds
  -- interleave by round relative to their own head. Each claim starts a new attempt.
  with candidates as (
    select k.kind, c.id, c.fair_key, c.available_at
    from public.job_kinds k
    cross join lateral (
      select j.id, j.fair_key, j.available_at
      from public.jobs j  -- jobs_fair_queue
      where j.kind = k.kind and not j.pushed and j.status = 'pending'
        and j.dispatched_at is null and j.fair_key is not null
        and j.available_at <= now()
        and j.available_at + make_interval(secs => k.dispatch_timeout_seconds) >= now()
      order by j.fair_key, j.available_at
      limit p_limit
      for update of j skip locked
    ) c
    where not k.paused and (p_kinds is null or k.kind = any (p_kinds))
  ), picked as (
    select id
    from candidates
    order by fair_key - min(fair_key) over (partition by kind), available_at
    limit p_limit
  ), claimed as (
    update public.jobs j
    set status = 'processing',
        attempt = j.attempt + 1,
        worker_id = p_worker_id,
        started_at = now(),
        progress = null,
        lease_expires_at = now() + make_interval(secs => k.lease_seconds)
    from picked, public.job_kinds k
    where j.id = picked.id and k.kind = j.kind
    returning j as job, k.lease_seconds
  )
  -- each job carries its lease so a worker knows how often to heartbeat without another query
  select coalesce(
    jsonb_agg(
      credit_jobs_internal.job_json(claimed.job)
        || jsonb_build_object('lease_seconds', claimed.lease_seconds)
      order by (claimed.job).created_at),
    '[]'::jsonb)
  into v_jobs
  from claimed;

  return jsonb_build_object('jobs', v_jobs);
end;
$$;

---------------------------------------------------------------------------------------------------
-- take_jobs_to_dispatch: per kind, only the rows that are due
---------------------------------------------------------------------------------------------------

-- As before (see 20261201110000_start_deadlines_and_pipelines_per_kind.sql): (a) retried jobs'
-- new attempts, now in their kind's fair order, (b) dispatched jobs whose pipeline stayed silent
-- past the lease, (c) dispatched jobs past dispatched_at + dispatch_timeout_seconds (failed and
-- refunded; paused kinds too). Each part reads its own index from the due end.
create or replace function public.take_jobs_to_dispatch(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_job public.jobs;
  v_kind public.job_kinds;
  v_jobs jsonb := '[]'::jsonb;
  v_failed integer := 0;
begin
  -- validate
  if p_limit is null or p_limit not between 1 and 10000 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 10000');
  end if;

  perform credit_jobs_internal.queue_due_retries(k.kind, true, p_limit)
  from public.job_kinds k
  where not k.paused;

  -- lock: one batch, skipping rows a live report or another maintenance run holds;
  -- accounts (refunds) in user order
  for v_job in
    select j.*
    from public.jobs j
    where j.id = any (array(
      select due.id
      from public.job_kinds k
      cross join lateral (
        select a.id from (
          select c.id
          from public.jobs c  -- (a) jobs_fair_queue
          where not k.paused and c.kind = k.kind and c.pushed and c.status = 'pending'
            and c.dispatched_at is null and c.fair_key is not null
            and c.available_at <= now()
            and c.available_at + make_interval(secs => k.dispatch_timeout_seconds) >= now()
          order by c.fair_key, c.available_at
          limit p_limit
          for update of c skip locked) a
        union all
        select b.id from (
          select c.id
          from public.jobs c  -- (b) jobs_awaiting_pipeline
          where not k.paused and c.kind = k.kind and c.status = 'pending'
            and c.dispatched_at is not null and c.lease_expires_at < now()
          order by c.lease_expires_at
          limit p_limit
          for update of c skip locked) b
        union all
        select o.id from (
          select c.id
          from public.jobs c  -- (c) jobs_dispatch_deadline
          where c.kind = k.kind and c.status = 'pending'
            and c.dispatched_at < now() - make_interval(secs => k.dispatch_timeout_seconds)
          order by c.dispatched_at
          limit p_limit
          for update of c skip locked) o
      ) due
      limit p_limit))
    order by j.user_id
  loop
    select * into v_kind from public.job_kinds where kind = v_job.kind;
    -- write
    if v_job.dispatched_at + make_interval(secs => v_kind.dispatch_timeout_seconds) < now() then
      perform credit_jobs_internal.terminate_with_refund(v_job, 'failed',
        format('attempt %s was never picked up by the pipeline within %s s',
               v_job.attempt, v_kind.dispatch_timeout_seconds));
      v_failed := v_failed + 1;
      continue;
    end if;
    update public.jobs
    set attempt = case when dispatched_at is null then attempt + 1 else attempt end,
        dispatched_at = coalesce(dispatched_at, now()),
        progress = case when dispatched_at is null then null else progress end,
        lease_expires_at = now() + make_interval(secs => v_kind.lease_seconds)
    where id = v_job.id
    returning * into v_job;
    v_jobs := v_jobs || jsonb_build_array(
      credit_jobs_internal.job_json(v_job) || jsonb_build_object('pipeline', v_kind.pipeline));
  end loop;
  return jsonb_build_object('jobs', v_jobs, 'failed', v_failed);
end;
$$;

---------------------------------------------------------------------------------------------------
-- reap_stalled_jobs, fail_unstarted_jobs: the batch is an array of ids
---------------------------------------------------------------------------------------------------

-- Unchanged but for generic plans and how the batch is joined back: `id = any (array(...))` is
-- looked up by primary key, where `id in (...)` may become, in a generic plan (p_limit unknown),
-- a hash join over a scan of every job. The batch scans read jobs_processing_lease and
-- jobs_waiting_to_start.
create or replace function public.reap_stalled_jobs(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_job public.jobs;
  v_reaped integer := 0;
  v_retried integer := 0;
begin
  -- validate
  if p_limit is null or p_limit not between 1 and 100000 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 100000');
  end if;
  -- lock: one batch of expired leases, skipping rows a live report holds; accounts in user order
  for v_job in
    select j.*
    from public.jobs j
    where j.id = any (array(
      select id from public.jobs
      where status = 'processing' and lease_expires_at < now()
      order by lease_expires_at
      limit p_limit
      for update skip locked))
    order by j.user_id
  loop
    v_reaped := v_reaped + 1;
    -- write: retry when the kind allows another attempt, otherwise fail and refund
    update public.jobs j
    set status = 'pending',
        error_message = format('attempt %s stalled: lease expired', j.attempt),
        worker_id = null,
        lease_expires_at = null,
        dispatched_at = null,
        available_at = now() + make_interval(secs => k.retry_delay_seconds)
    from public.job_kinds k
    where j.id = v_job.id and k.kind = j.kind and j.attempt < k.max_attempts;
    if found then
      v_retried := v_retried + 1;
    else
      perform credit_jobs_internal.terminate_with_refund(
        v_job, 'failed', format('attempt %s stalled: lease expired, no attempts left', v_job.attempt));
    end if;
  end loop;
  return jsonb_build_object('reaped', v_reaped, 'retried', v_retried);
end;
$$;

create or replace function public.fail_unstarted_jobs(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_job public.jobs;
  v_timeout integer;
  v_failed integer := 0;
begin
  -- validate
  if p_limit is null or p_limit not between 1 and 10000 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 10000');
  end if;
  -- lock: job rows (skipping any a claim or report holds), then accounts in user order
  for v_job in
    select j.*
    from public.jobs j
    where j.id = any (array(
      select overdue.id
      from public.job_kinds kk
      cross join lateral (
        select c.id
        from public.jobs c
        where c.kind = kk.kind and c.status = 'pending' and c.dispatched_at is null
          and c.available_at < now() - make_interval(secs => kk.dispatch_timeout_seconds)
        order by c.available_at
        limit p_limit
        for update of c skip locked) overdue
      limit p_limit))
    order by j.user_id
  loop
    select dispatch_timeout_seconds into v_timeout from public.job_kinds where kind = v_job.kind;
    -- write
    perform credit_jobs_internal.terminate_with_refund(v_job, 'failed',
      format('no %s started attempt %s within %s s',
             case when v_job.pushed then 'pipeline' else 'worker' end,
             v_job.attempt + 1, v_timeout));
    v_failed := v_failed + 1;
  end loop;
  return jsonb_build_object('failed', v_failed);
end;
$$;

revoke all on function
  credit_jobs_internal.next_fair_key(text, boolean, uuid),
  credit_jobs_internal.set_fair_key(),
  credit_jobs_internal.queue_due_retries(text, boolean, integer)
  from public, anon, authenticated, service_role;
