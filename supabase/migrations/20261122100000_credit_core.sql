-- credit-jobs money core: accounts, ledger, job kinds, projects, steps, jobs, and every function
-- that moves credits. Business errors raise SQLSTATE CJ0xx, listed in docs/errors.md.
-- Money functions validate input, then lock (job row before account row, always), then write.

-- Internal helpers live outside `public` so the Data API never exposes them.
create schema if not exists credit_jobs_internal;
revoke all on schema credit_jobs_internal from public;

---------------------------------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------------------------------

create table public.job_kinds (
  kind text primary key check (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
  cost integer not null check (cost >= 0),
  max_attempts integer not null default 3 check (max_attempts between 1 and 100),
  lease_seconds integer not null default 300 check (lease_seconds between 1 and 86400),
  retry_delay_seconds integer not null default 30 check (retry_delay_seconds between 0 and 86400),
  -- push mode: how long a created job may wait for its pipeline before it is failed and refunded
  dispatch_timeout_seconds integer not null default 900
    check (dispatch_timeout_seconds between 1 and 604800),
  paused boolean not null default false,
  description text not null default '',
  created_at timestamptz not null default now()
);

create table public.credit_accounts (
  user_id uuid primary key references auth.users (id) on delete cascade,
  balance bigint not null default 0 check (balance >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- Append-only. No foreign keys on purpose: the ledger outlives deleted users and jobs (audit).
create table public.credit_ledger (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  job_id uuid,
  entry_type text not null check (entry_type in ('grant', 'charge', 'refund', 'adjustment')),
  amount bigint not null check (amount <> 0),
  balance_after bigint not null check (balance_after >= 0),
  reason text not null default '',
  created_at timestamptz not null default now(),
  check (case entry_type
           when 'charge' then amount < 0 and job_id is not null
           when 'refund' then amount > 0 and job_id is not null
           when 'grant' then amount > 0
           else true
         end)
);
-- A job is charged at most once and refunded at most once: enforced here, not only in code.
create unique index credit_ledger_one_charge_per_job on public.credit_ledger (job_id)
  where entry_type = 'charge';
create unique index credit_ledger_one_refund_per_job on public.credit_ledger (job_id)
  where entry_type = 'refund';
create index credit_ledger_user_history on public.credit_ledger (user_id, id desc);

create table public.projects (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  title text not null check (char_length(title) between 1 and 200),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index projects_user_history on public.projects (user_id, created_at desc, id desc);

create table public.project_steps (
  project_id uuid not null references public.projects (id) on delete cascade,
  step_number integer not null check (step_number between 1 and 1000),
  -- copied from the project so RLS needs no join
  user_id uuid not null references auth.users (id) on delete cascade,
  data jsonb not null default '{}'::jsonb check (jsonb_typeof(data) = 'object'),
  completed_at timestamptz,
  skip_reason text check (char_length(skip_reason) <= 1000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (project_id, step_number)
);
create index project_steps_user on public.project_steps (user_id);

-- Foreign keys are kept to the one create_job needs: every FK check takes a row lock, and all jobs
-- of a kind would share-lock the same job_kinds row (a new MultiXact per insert). The owner is
-- the project's (create_job checks it; deleting the user cascades through the project), and a
-- kind that has jobs cannot be deleted (guard below).
create table public.jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  project_id uuid not null references public.projects (id) on delete cascade,
  step_number integer check (step_number between 1 and 1000),
  kind text not null,
  status text not null default 'pending'
    check (status in ('pending', 'processing', 'completed', 'failed', 'cancelled')),
  attempt integer not null default 0 check (attempt >= 0),
  cost integer not null check (cost >= 0),
  credits_used integer check (credits_used between 0 and cost),
  refunded integer not null default 0 check (refunded between 0 and cost),
  params jsonb not null default '{}'::jsonb check (jsonb_typeof(params) = 'object'),
  result jsonb,
  error_message text,
  progress real check (progress between 0 and 100),
  idempotency_key text check (char_length(idempotency_key) between 1 and 255),
  -- fingerprint of the request behind idempotency_key, to tell a replay from a reuse
  request_hash text,
  worker_id text,
  -- heartbeat deadline while processing; in push mode also the pipeline's deadline to answer
  lease_expires_at timestamptz,
  -- a retried job is claimable again only from here on
  available_at timestamptz not null default now(),
  -- Push or pull, decided once: a job created with create_job(p_start_attempt => true) is pushed
  -- to a pipeline for life (maintenance starts its later attempts); any other job is a queue job
  -- (only claim_jobs starts its attempts). dispatched_at cannot tell them apart: retries clear it.
  pushed boolean not null default false,
  -- push mode: when the current attempt was handed to a pipeline (null: not yet)
  dispatched_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  check ((status in ('completed', 'failed', 'cancelled')) = (finished_at is not null))
);
create unique index jobs_idempotency_key on public.jobs (user_id, idempotency_key)
  where idempotency_key is not null;
create index jobs_user_history on public.jobs (user_id, created_at desc, id desc);
create index jobs_user_status_history on public.jobs (user_id, status, created_at desc, id desc);
create index jobs_project on public.jobs (project_id);
create index jobs_claimable on public.jobs (available_at) where status = 'pending';
create index jobs_lease on public.jobs (lease_expires_at) where lease_expires_at is not null;

---------------------------------------------------------------------------------------------------
-- Guards: the database itself refuses illegal states
---------------------------------------------------------------------------------------------------

create function credit_jobs_internal.reject_ledger_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'credit_ledger is append-only: % is not allowed', tg_op
    using errcode = 'CJ004', hint = 'Correct a balance with admin_grant_credits().';
end;
$$;

create trigger credit_ledger_append_only
  before update or delete on public.credit_ledger
  for each row execute function credit_jobs_internal.reject_ledger_change();
create trigger credit_ledger_no_truncate
  before truncate on public.credit_ledger
  for each statement execute function credit_jobs_internal.reject_ledger_change();

-- Legal moves (docs/lifecycle.md). Terminal rows are frozen: not even an admin's raw UPDATE changes their
-- status or money, so a stalled worker's late "completed" can never overwrite "failed".
create function credit_jobs_internal.guard_job_update() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if old.status in ('completed', 'failed', 'cancelled') then
    if new.status is distinct from old.status
       or new.attempt is distinct from old.attempt
       or new.cost is distinct from old.cost
       or new.credits_used is distinct from old.credits_used
       or new.refunded is distinct from old.refunded then
      raise exception 'job % is % and final', old.id, old.status
        using errcode = 'CJ004';
    end if;
  elsif new.status is distinct from old.status
        and not (old.status, new.status) in (
          ('pending', 'processing'), ('pending', 'completed'), ('pending', 'failed'),
          ('pending', 'cancelled'), ('processing', 'completed'), ('processing', 'failed'),
          ('processing', 'cancelled'), ('processing', 'pending')) then
    raise exception 'job %: % -> % is not a legal transition', old.id, old.status, new.status
      using errcode = 'CJ004';
  end if;
  if new.attempt < old.attempt or new.cost <> old.cost or new.user_id <> old.user_id then
    raise exception 'job %: attempt, cost and owner never go back', old.id
      using errcode = 'CJ004';
  end if;
  new.updated_at := now();
  return new;
end;
$$;

create trigger jobs_guard_update
  before update on public.jobs
  for each row execute function credit_jobs_internal.guard_job_update();

-- A kind with jobs stays (pause it instead): its jobs still need its lease and retry rules.
create function credit_jobs_internal.guard_job_kind_delete() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select from public.jobs where kind = old.kind) then
    raise exception 'job kind % has jobs and cannot be deleted or renamed', old.kind
      using errcode = 'CJ004', hint = 'Pause it: update public.job_kinds set paused = true.';
  end if;
  return old;
end;
$$;

create trigger job_kinds_guard_delete
  before delete or update of kind on public.job_kinds
  for each row execute function credit_jobs_internal.guard_job_kind_delete();

-- Every auth user gets an account with balance 0.
create function credit_jobs_internal.create_credit_account() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.credit_accounts (user_id) values (new.id) on conflict do nothing;
  return new;
end;
$$;

create trigger on_auth_user_created_credit_account
  after insert on auth.users
  for each row execute function credit_jobs_internal.create_credit_account();

insert into public.credit_accounts (user_id)
select id from auth.users
on conflict do nothing;

---------------------------------------------------------------------------------------------------
-- Internal helpers
---------------------------------------------------------------------------------------------------

create function credit_jobs_internal.raise_error(p_sqlstate text, p_message text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception using errcode = p_sqlstate, message = p_message;
end;
$$;

-- The Job object of docs/http-api.md.
create function credit_jobs_internal.job_json(p_job public.jobs) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'id', p_job.id,
    'project_id', p_job.project_id,
    'step_number', p_job.step_number,
    'kind', p_job.kind,
    'status', p_job.status,
    'attempt', p_job.attempt,
    'cost', p_job.cost,
    'credits_used', p_job.credits_used,
    'refunded', p_job.refunded,
    'params', p_job.params,
    'result', p_job.result,
    'error_message', p_job.error_message,
    'progress', p_job.progress,
    'created_at', p_job.created_at,
    'updated_at', p_job.updated_at,
    'started_at', p_job.started_at,
    'finished_at', p_job.finished_at
  )
$$;

create function credit_jobs_internal.step_json(p_step public.project_steps) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'project_id', p_step.project_id,
    'step_number', p_step.step_number,
    'data', p_step.data,
    'completed_at', p_step.completed_at,
    'skip_reason', p_step.skip_reason,
    'created_at', p_step.created_at,
    'updated_at', p_step.updated_at
  )
$$;

-- Moves credits on one account and writes the matching ledger entry, keeping balance_after.
-- Callers hold the job lock (when there is a job); this takes the account lock.
create function credit_jobs_internal.post_entry(
  p_user_id uuid,
  p_job_id uuid,
  p_entry_type text,
  p_amount bigint,
  p_reason text
) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_balance bigint;
begin
  -- lock: one account row
  select balance into v_balance
  from public.credit_accounts
  where user_id = p_user_id
  for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;
  if v_balance + p_amount < 0 then
    perform credit_jobs_internal.raise_error('CJ001',
      format('insufficient credits: balance %s, needs %s', v_balance, -p_amount));
  end if;
  -- write: balance and ledger entry together
  update public.credit_accounts
  set balance = v_balance + p_amount, updated_at = now()
  where user_id = p_user_id;
  insert into public.credit_ledger (user_id, job_id, entry_type, amount, balance_after, reason)
  values (p_user_id, p_job_id, p_entry_type, p_amount, v_balance + p_amount, p_reason);
  return v_balance + p_amount;
end;
$$;

-- Makes a locked, non-terminal job terminal (failed or cancelled) and refunds its whole price.
create function credit_jobs_internal.terminate_with_refund(
  p_job public.jobs,
  p_status text,
  p_reason text
) returns public.jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.jobs;
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
    perform credit_jobs_internal.post_entry(
      v_job.user_id, v_job.id, 'refund', v_job.cost,
      format('%s: %s', p_status, coalesce(p_reason, 'no reason given')));
  end if;
  return v_job;
end;
$$;

-- Locks a job for a pipeline report and checks the attempt fence.
create function credit_jobs_internal.lock_job_for_report(p_job_id uuid, p_attempt integer)
returns public.jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  if p_job_id is null or p_attempt is null or p_attempt < 1 then
    perform credit_jobs_internal.raise_error('CJ007', 'job_id and attempt (>= 1) are required');
  end if;
  select * into v_job from public.jobs where id = p_job_id for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('job %s not found', p_job_id));
  end if;
  if p_attempt <> v_job.attempt then
    perform credit_jobs_internal.raise_error('CJ005',
      format('job %s: report for attempt %s, current attempt is %s', p_job_id, p_attempt, v_job.attempt));
  end if;
  return v_job;
end;
$$;

-- An attempt is over once its job went back to pending for a retry and nobody has started the
-- next one yet: late reports of it must not revive the job.
create function credit_jobs_internal.attempt_is_over(p_job public.jobs) returns boolean
language sql
immutable
set search_path = ''
as $$
  select p_job.status = 'pending' and p_job.dispatched_at is null
$$;

---------------------------------------------------------------------------------------------------
-- Public functions (docs/sql.md)
---------------------------------------------------------------------------------------------------

create function public.create_job(
  p_user_id uuid,
  p_kind text,
  p_params jsonb default '{}'::jsonb,
  p_project_id uuid default null,
  p_step_number integer default null,
  p_idempotency_key text default null,
  p_start_attempt boolean default false
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_kind public.job_kinds;
  v_params jsonb := coalesce(p_params, '{}'::jsonb);
  v_request_hash text;
  v_job public.jobs;
  v_balance bigint;
  v_project_id uuid := p_project_id;
begin
  -- validate
  if p_user_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'user_id is required');
  end if;
  if jsonb_typeof(v_params) <> 'object' then
    perform credit_jobs_internal.raise_error('CJ007', 'params must be a JSON object');
  end if;
  if octet_length(v_params::text) > 65536 then
    perform credit_jobs_internal.raise_error('CJ007', 'params must be at most 64 KiB');
  end if;
  if p_step_number is not null and p_step_number not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'step_number must be between 1 and 1000');
  end if;
  if p_idempotency_key is not null and char_length(p_idempotency_key) not between 1 and 255 then
    perform credit_jobs_internal.raise_error('CJ007', 'idempotency key must be 1 to 255 characters');
  end if;
  select * into v_kind from public.job_kinds where kind = p_kind;
  if not found then
    perform credit_jobs_internal.raise_error('CJ002', format('unknown job kind %L', p_kind));
  end if;
  if v_kind.paused then
    perform credit_jobs_internal.raise_error('CJ002', format('job kind %L is paused', p_kind));
  end if;

  -- lock: the account serializes this user's requests, so the idempotency check below is exact
  select balance into v_balance from public.credit_accounts where user_id = p_user_id for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;

  -- replay: same key and same request returns the first job; a different request is an error
  if p_idempotency_key is not null then
    v_request_hash := md5(jsonb_build_array(p_kind, v_params, p_project_id, p_step_number)::text);
    select * into v_job from public.jobs
    where user_id = p_user_id and idempotency_key = p_idempotency_key;
    if found then
      if v_job.request_hash <> v_request_hash then
        perform credit_jobs_internal.raise_error('CJ006',
          'this Idempotency-Key was already used for a different request');
      end if;
      return jsonb_build_object(
        'job', credit_jobs_internal.job_json(v_job), 'balance', v_balance, 'replayed', true);
    end if;
  end if;

  if v_project_id is null then
    insert into public.projects (user_id, title)
    values (p_user_id, format('%s %s', initcap(replace(p_kind, '_', ' ')), to_char(now(), 'YYYY-MM-DD HH24:MI')))
    returning id into v_project_id;
  elsif not exists (select from public.projects where id = v_project_id and user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('project %s not found', v_project_id));
  end if;

  -- write: the job and its charge commit together or not at all
  insert into public.jobs (
    user_id, project_id, step_number, kind, cost, params, idempotency_key, request_hash,
    pushed, attempt, dispatched_at, lease_expires_at)
  values (
    p_user_id, v_project_id, p_step_number, p_kind, v_kind.cost, v_params, p_idempotency_key,
    v_request_hash,
    coalesce(p_start_attempt, false),
    case when p_start_attempt then 1 else 0 end,
    case when p_start_attempt then now() end,
    case when p_start_attempt then now() + make_interval(secs => v_kind.lease_seconds) end)
  returning * into v_job;
  if v_kind.cost > 0 then
    v_balance := credit_jobs_internal.post_entry(
      p_user_id, v_job.id, 'charge', -v_kind.cost, format('job %s (%s)', v_job.id, p_kind));
  end if;

  return jsonb_build_object(
    'job', credit_jobs_internal.job_json(v_job), 'balance', v_balance, 'replayed', false);
end;
$$;

create function public.claim_jobs(
  p_worker_id text,
  p_kinds text[] default null,
  p_limit integer default 1
) returns jsonb
language plpgsql
security definer
set search_path = ''
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

  -- lock + write: skip rows another worker holds; each claim starts a new attempt
  with picked as (
    select j.id
    from public.jobs j
    join public.job_kinds k on k.kind = j.kind
    where j.status = 'pending'
      and j.available_at <= now()
      and not j.pushed
      and not k.paused
      and (p_kinds is null or j.kind = any (p_kinds))
    order by j.available_at, j.created_at
    limit p_limit
    for update of j skip locked
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

create function public.heartbeat_job(
  p_job_id uuid,
  p_attempt integer,
  p_progress double precision default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  -- validate
  if p_progress is not null and p_progress not between 0 and 100 then
    perform credit_jobs_internal.raise_error('CJ007', 'progress must be between 0 and 100');
  end if;
  -- lock + fence
  v_job := credit_jobs_internal.lock_job_for_report(p_job_id, p_attempt);
  if credit_jobs_internal.attempt_is_over(v_job) then
    perform credit_jobs_internal.raise_error('CJ005',
      format('job %s: attempt %s is over, the job waits for its next attempt', p_job_id, p_attempt));
  end if;
  if v_job.status not in ('pending', 'processing') then
    perform credit_jobs_internal.raise_error('CJ004',
      format('job %s is %s: no more heartbeats', p_job_id, v_job.status));
  end if;
  -- write: a pushed job's first sign of life moves it to processing
  update public.jobs j
  set status = 'processing',
      started_at = coalesce(j.started_at, now()),
      progress = coalesce(p_progress, j.progress),
      lease_expires_at = now() + make_interval(secs => k.lease_seconds)
  from public.job_kinds k
  where j.id = p_job_id and k.kind = j.kind
  returning j.* into v_job;
  return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'applied');
end;
$$;

create function public.complete_job(
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
  -- write: completion and the partial-capture refund commit together
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
    perform credit_jobs_internal.post_entry(
      v_job.user_id, v_job.id, 'refund', v_job.refunded,
      format('partial capture: used %s of %s', v_used, v_job.cost));
  end if;
  return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'applied');
end;
$$;

create function public.refund_job_atomic(
  p_job_id uuid,
  p_reason text default null,
  p_attempt integer default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  -- validate
  if p_job_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'job_id is required');
  end if;
  -- lock: the job row first, the account inside post_entry
  select * into v_job from public.jobs where id = p_job_id for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('job %s not found', p_job_id));
  end if;
  if v_job.status in ('failed', 'cancelled') then
    return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'already_refunded');
  end if;
  -- a null attempt is the system or an admin acting on whatever attempt is current
  if p_attempt is not null and p_attempt <> v_job.attempt then
    perform credit_jobs_internal.raise_error('CJ005',
      format('job %s: refund for attempt %s, current attempt is %s', p_job_id, p_attempt, v_job.attempt));
  end if;
  if v_job.status = 'completed' then
    perform credit_jobs_internal.raise_error('CJ004',
      format('job %s is completed; correct the balance with admin_grant_credits()', p_job_id));
  end if;
  -- write
  v_job := credit_jobs_internal.terminate_with_refund(v_job, 'failed', coalesce(p_reason, 'refunded'));
  return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'refunded');
end;
$$;

create function public.fail_job(
  p_job_id uuid,
  p_attempt integer,
  p_error text default null,
  p_retryable boolean default false
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_kind public.job_kinds;
  v_error text := left(coalesce(p_error, 'failed'), 2000);
begin
  -- lock + fence
  v_job := credit_jobs_internal.lock_job_for_report(p_job_id, p_attempt);
  -- this attempt's failure was already applied (refunded, or retried and waiting)
  if v_job.status = 'failed' or credit_jobs_internal.attempt_is_over(v_job) then
    return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'duplicate');
  end if;
  if v_job.status in ('completed', 'cancelled') then
    perform credit_jobs_internal.raise_error('CJ004',
      format('job %s is already %s', p_job_id, v_job.status));
  end if;
  select * into v_kind from public.job_kinds where kind = v_job.kind;
  -- write: another attempt after the kind's delay, or the end with a full refund
  if coalesce(p_retryable, false) and v_job.attempt < v_kind.max_attempts then
    update public.jobs
    set status = 'pending',
        error_message = v_error,
        worker_id = null,
        lease_expires_at = null,
        dispatched_at = null,
        available_at = now() + make_interval(secs => v_kind.retry_delay_seconds)
    where id = p_job_id
    returning * into v_job;
    return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'retried');
  end if;
  v_job := credit_jobs_internal.terminate_with_refund(v_job, 'failed', v_error);
  return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'refunded');
end;
$$;

create function public.cancel_job(p_job_id uuid, p_user_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_outcome text := 'refunded';
begin
  -- validate
  if p_job_id is null or p_user_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'job_id and user_id are required');
  end if;
  -- lock: another user's job is reported as missing, never as forbidden
  select * into v_job from public.jobs where id = p_job_id and user_id = p_user_id for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('job %s not found', p_job_id));
  end if;
  if v_job.status = 'cancelled' then
    v_outcome := 'already_refunded';
  elsif v_job.status in ('completed', 'failed') then
    perform credit_jobs_internal.raise_error('CJ004',
      format('job %s is already %s', p_job_id, v_job.status));
  else
    -- write
    v_job := credit_jobs_internal.terminate_with_refund(v_job, 'cancelled', 'cancelled by user');
  end if;
  return jsonb_build_object(
    'job', credit_jobs_internal.job_json(v_job),
    'balance', (select balance from public.credit_accounts where user_id = p_user_id),
    'outcome', v_outcome);
end;
$$;

-- Batches are small by default: each holds its users' account locks until it commits.
create function public.reap_stalled_jobs(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
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
    where j.id in (
      select id from public.jobs
      where status = 'processing' and lease_expires_at < now()
      order by lease_expires_at
      limit p_limit
      for update skip locked)
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

create function public.upsert_project_step(
  p_user_id uuid,
  p_project_id uuid,
  p_step_number integer,
  p_data jsonb,
  p_completed_at timestamptz default null,
  p_skip_reason text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_step jsonb;
  v_created boolean;
begin
  -- validate
  if p_user_id is null or p_project_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'user_id and project_id are required');
  end if;
  if p_step_number is null or p_step_number not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'step_number must be between 1 and 1000');
  end if;
  if p_data is null or jsonb_typeof(p_data) <> 'object' then
    perform credit_jobs_internal.raise_error('CJ007', 'data must be a JSON object');
  end if;
  if octet_length(p_data::text) > 65536 then
    perform credit_jobs_internal.raise_error('CJ007', 'data must be at most 64 KiB');
  end if;
  if char_length(p_skip_reason) > 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'skip_reason must be at most 1000 characters');
  end if;
  if not exists (select from public.projects where id = p_project_id and user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('project %s not found', p_project_id));
  end if;
  -- write: a real upsert that returns the row as stored now; nulls keep the earlier values
  insert into public.project_steps as s (
    project_id, step_number, user_id, data, completed_at, skip_reason)
  values (p_project_id, p_step_number, p_user_id, p_data, p_completed_at, p_skip_reason)
  on conflict (project_id, step_number) do update
  set data = excluded.data,
      completed_at = coalesce(excluded.completed_at, s.completed_at),
      skip_reason = coalesce(excluded.skip_reason, s.skip_reason),
      updated_at = now()
  returning credit_jobs_internal.step_json(s), (s.xmax = 0) into v_step, v_created;
  update public.projects set updated_at = now() where id = p_project_id;
  return jsonb_build_object('step', v_step, 'created', v_created);
end;
$$;

create function public.admin_grant_credits(
  p_user_id uuid,
  p_amount bigint,
  p_reason text
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
begin
  -- validate
  if p_user_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'user_id is required');
  end if;
  if p_amount is null or p_amount = 0 then
    perform credit_jobs_internal.raise_error('CJ007', 'amount must be a non-zero integer');
  end if;
  if p_reason is null or char_length(btrim(p_reason)) = 0 then
    perform credit_jobs_internal.raise_error('CJ007', 'a reason is required for the audit trail');
  end if;
  -- lock + write (post_entry refuses to go below zero)
  v_balance := credit_jobs_internal.post_entry(
    p_user_id, null, case when p_amount > 0 then 'grant' else 'adjustment' end, p_amount, p_reason);
  return jsonb_build_object('user_id', p_user_id, 'balance', v_balance, 'outcome', 'applied');
end;
$$;

---------------------------------------------------------------------------------------------------
-- Views for admins
---------------------------------------------------------------------------------------------------

create view public.credit_discrepancies with (security_invoker = true) as
select a.user_id, a.balance, coalesce(l.ledger_sum, 0) as ledger_sum,
       a.balance - coalesce(l.ledger_sum, 0) as difference
from public.credit_accounts a
left join (
  select user_id, sum(amount) as ledger_sum from public.credit_ledger group by user_id
) l on l.user_id = a.user_id
where a.balance <> coalesce(l.ledger_sum, 0);

create view public.stalled_jobs with (security_invoker = true) as
select j.id, j.user_id, j.kind, j.attempt, k.max_attempts, j.worker_id, j.lease_expires_at,
       now() - j.lease_expires_at as overdue, j.started_at, j.progress
from public.jobs j
join public.job_kinds k on k.kind = j.kind
where j.status = 'processing' and j.lease_expires_at < now();

---------------------------------------------------------------------------------------------------
-- Security: RLS on every table, read-only own rows for users, money functions for the server only
---------------------------------------------------------------------------------------------------

alter table public.job_kinds enable row level security;
alter table public.credit_accounts enable row level security;
alter table public.credit_ledger enable row level security;
alter table public.projects enable row level security;
alter table public.project_steps enable row level security;
alter table public.jobs enable row level security;

create policy "job kinds are a public price list" on public.job_kinds
  for select to anon, authenticated using (true);
create policy "users read their own account" on public.credit_accounts
  for select to authenticated using (user_id = (select auth.uid()));
create policy "users read their own ledger" on public.credit_ledger
  for select to authenticated using (user_id = (select auth.uid()));
create policy "users read their own projects" on public.projects
  for select to authenticated using (user_id = (select auth.uid()));
create policy "users read their own steps" on public.project_steps
  for select to authenticated using (user_id = (select auth.uid()));
create policy "users read their own jobs" on public.jobs
  for select to authenticated using (user_id = (select auth.uid()));

-- Supabase's default privileges grant everything to anon/authenticated: take it back explicitly.
revoke all on public.job_kinds, public.credit_accounts, public.credit_ledger, public.projects,
  public.project_steps, public.jobs, public.credit_discrepancies, public.stalled_jobs
  from anon, authenticated, service_role;
-- ...and on sequences (the ledger's identity): UPDATE there would let a caller setval() it.
revoke all on all sequences in schema public from anon, authenticated;
grant select on public.job_kinds to anon, authenticated;
grant select on public.credit_accounts, public.credit_ledger, public.projects,
  public.project_steps, public.jobs to authenticated;
grant select on public.job_kinds, public.credit_accounts, public.credit_ledger, public.projects,
  public.project_steps, public.jobs, public.credit_discrepancies, public.stalled_jobs
  to service_role;

revoke all on all functions in schema credit_jobs_internal from public, anon, authenticated, service_role;

revoke execute on function
  public.create_job(uuid, text, jsonb, uuid, integer, text, boolean),
  public.claim_jobs(text, text[], integer),
  public.heartbeat_job(uuid, integer, double precision),
  public.complete_job(uuid, integer, jsonb, integer),
  public.fail_job(uuid, integer, text, boolean),
  public.refund_job_atomic(uuid, text, integer),
  public.cancel_job(uuid, uuid),
  public.reap_stalled_jobs(integer),
  public.upsert_project_step(uuid, uuid, integer, jsonb, timestamptz, text),
  public.admin_grant_credits(uuid, bigint, text)
  from public, anon, authenticated;
grant execute on function
  public.create_job(uuid, text, jsonb, uuid, integer, text, boolean),
  public.claim_jobs(text, text[], integer),
  public.heartbeat_job(uuid, integer, double precision),
  public.complete_job(uuid, integer, jsonb, integer),
  public.fail_job(uuid, integer, text, boolean),
  public.refund_job_atomic(uuid, text, integer),
  public.cancel_job(uuid, uuid),
  public.reap_stalled_jobs(integer),
  public.upsert_project_step(uuid, uuid, integer, jsonb, timestamptz, text),
  public.admin_grant_credits(uuid, bigint, text)
  to service_role;
