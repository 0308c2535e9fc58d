-- Each kind says how its jobs are started, and no job waits for a start forever.
--   job_kinds.pipeline: 'webhook', 'prefect', 'local' (push) or 'queue' (workers claim); null =
--   the deployment's default, which the functions pass to create_job as p_pipeline.
--   dispatch_timeout_seconds now bounds every wait for a start: a job still pending (not yet
--   handed to a pipeline, not claimed) that long after it became available is failed and
--   refunded by fail_unstarted_jobs; claim_jobs no longer starts such a job.

alter table public.job_kinds
  add column pipeline text check (pipeline in ('local', 'webhook', 'prefect', 'queue'));
comment on column public.job_kinds.pipeline is
  'how jobs of this kind are started: webhook, prefect, local (pushed) or queue (claimed by '
  'workers); null = the deployment''s PIPELINE';
comment on column public.job_kinds.dispatch_timeout_seconds is
  'longest wait for a start (dispatch accepted or claim) before the job is failed and refunded';

-- Jobs waiting for their attempt to start, per kind, oldest first: fail_unstarted_jobs walks only
-- the overdue end of each kind.
create index jobs_waiting_to_start on public.jobs (kind, available_at)
  where status = 'pending' and dispatched_at is null;

---------------------------------------------------------------------------------------------------
-- create_job: the kind's pipeline (or the deployment's) decides push or queue
---------------------------------------------------------------------------------------------------

drop function public.create_job(uuid, text, jsonb, uuid, integer, text, boolean);

create function public.create_job(
  p_user_id uuid,
  p_kind text,
  p_params jsonb default '{}'::jsonb,
  p_project_id uuid default null,
  p_step_number integer default null,
  p_idempotency_key text default null,
  p_pipeline text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_kind public.job_kinds;
  v_params jsonb := coalesce(p_params, '{}'::jsonb);
  v_pipeline text;
  v_pushed boolean;
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
  if p_pipeline is not null and p_pipeline not in ('local', 'webhook', 'prefect', 'queue') then
    perform credit_jobs_internal.raise_error('CJ007',
      'pipeline must be one of local, webhook, prefect, queue');
  end if;
  select * into v_kind from public.job_kinds where kind = p_kind;
  if not found then
    perform credit_jobs_internal.raise_error('CJ002', format('unknown job kind %L', p_kind));
  end if;
  if v_kind.paused then
    perform credit_jobs_internal.raise_error('CJ002', format('job kind %L is paused', p_kind));
  end if;
  v_pipeline := coalesce(v_kind.pipeline, p_pipeline, 'queue');
  v_pushed := v_pipeline <> 'queue';

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
        'job', credit_jobs_internal.job_json(v_job), 'balance', v_balance, 'replayed', true,
        'pipeline', case when v_job.pushed then v_pipeline else 'queue' end);
    end if;
  end if;

  if v_project_id is null then
    insert into public.projects (user_id, title)
    values (p_user_id, format('%s %s', initcap(replace(p_kind, '_', ' ')), to_char(now(), 'YYYY-MM-DD HH24:MI')))
    returning id into v_project_id;
  elsif not exists (select from public.projects where id = v_project_id and user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('project %s not found', v_project_id));
  end if;

  -- write: the job and its charge commit together or not at all; a pushed job's first attempt
  -- starts now (the caller dispatches it), a queue job's when a worker claims it
  insert into public.jobs (
    user_id, project_id, step_number, kind, cost, params, idempotency_key, request_hash,
    pushed, attempt, dispatched_at, lease_expires_at)
  values (
    p_user_id, v_project_id, p_step_number, p_kind, v_kind.cost, v_params, p_idempotency_key,
    v_request_hash,
    v_pushed,
    case when v_pushed then 1 else 0 end,
    case when v_pushed then now() end,
    case when v_pushed then now() + make_interval(secs => v_kind.lease_seconds) end)
  returning * into v_job;
  if v_kind.cost > 0 then
    v_balance := credit_jobs_internal.post_entry(
      p_user_id, v_job.id, 'charge', -v_kind.cost, format('job %s (%s)', v_job.id, p_kind));
  end if;

  return jsonb_build_object(
    'job', credit_jobs_internal.job_json(v_job), 'balance', v_balance, 'replayed', false,
    'pipeline', v_pipeline);
end;
$$;

revoke execute on function public.create_job(uuid, text, jsonb, uuid, integer, text, text)
  from public, anon, authenticated;
grant execute on function public.create_job(uuid, text, jsonb, uuid, integer, text, text)
  to service_role;

---------------------------------------------------------------------------------------------------
-- claim_jobs: a job past its start deadline is not started (fail_unstarted_jobs refunds it)
---------------------------------------------------------------------------------------------------

create or replace function public.claim_jobs(
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
      and j.available_at + make_interval(secs => k.dispatch_timeout_seconds) >= now()
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

---------------------------------------------------------------------------------------------------
-- take_jobs_to_dispatch: each job says which pipeline its kind names
---------------------------------------------------------------------------------------------------

-- As before (see 20261122120000_workers_and_maintenance.sql), plus `pipeline` on each job
-- (the kind's; null = the deployment's default). A retried job whose new attempt was never
-- dispatched (e.g. its kind is paused) is left to fail_unstarted_jobs.
create or replace function public.take_jobs_to_dispatch(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
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
  -- lock: one batch, skipping rows a live report or another maintenance run holds;
  -- accounts (refunds) in user order
  for v_job in
    select j.*
    from public.jobs j
    where j.id in (
      select c.id
      from public.jobs c
      join public.job_kinds k on k.kind = c.kind
      where c.status = 'pending' and c.pushed
        and (
          (c.dispatched_at is null and c.available_at <= now() and not k.paused
            and c.available_at + make_interval(secs => k.dispatch_timeout_seconds) >= now())
          or (c.dispatched_at is not null and c.lease_expires_at < now() and not k.paused)
          or c.dispatched_at + make_interval(secs => k.dispatch_timeout_seconds) < now())
      order by c.available_at
      limit p_limit
      for update of c skip locked)
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
-- fail_unstarted_jobs: no credit is held by a job nobody starts
---------------------------------------------------------------------------------------------------

-- Fails and refunds pending jobs whose attempt was never started (queue jobs nobody claimed,
-- pushed retries never dispatched) within their kind's dispatch_timeout_seconds of becoming
-- available. Paused kinds included: a pause stops new starts, it does not hold credits.
-- Returns {failed}. Walks each kind's overdue end of jobs_waiting_to_start only.
create function public.fail_unstarted_jobs(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
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
    where j.id in (
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
      limit p_limit)
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

revoke execute on function public.fail_unstarted_jobs(integer) from public, anon, authenticated;
grant execute on function public.fail_unstarted_jobs(integer) to service_role;
