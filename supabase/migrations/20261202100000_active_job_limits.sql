-- Active-job limits per user, and a shorter hold on the account lock.
--   job_kinds.max_active_per_user: at most that many of one user's jobs of the kind are pending or
--   processing at once; create_job refuses one more with CJ008 (HTTP 429 too_many_active_jobs)
--   and charges nothing. It counts under the account lock, which every create of the user takes,
--   so the limit is exact under any concurrency.
--   create_job answers a retry of a committed request before taking any lock or writing
--   anything, inserts the project before the account lock, and catches a concurrent replay with
--   the job insert itself (ON CONFLICT on jobs_idempotency_key). The job is still inserted under
--   the lock: its place in the fair order (jobs_set_fair_key_on_insert) follows the owner's last
--   waiting job, which only a serialized insert sees.

alter table public.job_kinds
  add column max_active_per_user integer check (max_active_per_user > 0);
comment on column public.job_kinds.max_active_per_user is
  'at most this many of one user''s jobs of this kind may be pending or processing at once '
  '(create_job refuses one more: CJ008, HTTP 429); null = no limit';

-- A user's non-terminal jobs per kind: the limit count reads only these entries.
create index jobs_user_active on public.jobs (user_id, kind)
  where status in ('pending', 'processing');

---------------------------------------------------------------------------------------------------
-- create_job: limit, late account lock, replay by ON CONFLICT
---------------------------------------------------------------------------------------------------

-- The answer to a repeated request: the user's job under p_key, or null when there is none yet;
-- CJ006 when the key was used for another request. Takes no lock.
create function credit_jobs_internal.replayed_job(
  p_user_id uuid,
  p_key text,
  p_request_hash text,
  p_pipeline text
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  select * into v_job from public.jobs where user_id = p_user_id and idempotency_key = p_key;
  if not found then
    return null;
  end if;
  if v_job.request_hash <> p_request_hash then
    perform credit_jobs_internal.raise_error('CJ006',
      'this Idempotency-Key was already used for a different request');
  end if;
  return jsonb_build_object(
    'job', credit_jobs_internal.job_json(v_job),
    'balance', (select a.balance from public.credit_accounts a where a.user_id = p_user_id),
    'replayed', true,
    'pipeline', case when v_job.pushed then p_pipeline else 'queue' end);
end;
$$;

-- 20261201110000's create_job with the limit, replays answered without the account lock, and
-- the lock taken after the project insert.
create or replace function public.create_job(
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
  v_replay jsonb;
  v_job public.jobs;
  v_balance bigint;
  v_active bigint;
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
  -- before the project insert, whose foreign key would refuse an unknown user less clearly
  if not exists (select from public.credit_accounts where user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;

  -- replay: a retry of a committed request gets its job back, with no lock and no write
  if p_idempotency_key is not null then
    v_request_hash := md5(jsonb_build_array(p_kind, v_params, p_project_id, p_step_number)::text);
    v_replay := credit_jobs_internal.replayed_job(
      p_user_id, p_idempotency_key, v_request_hash, v_pipeline);
    if v_replay is not null then
      return v_replay;
    end if;
  end if;

  if v_project_id is null then
    insert into public.projects (user_id, title)
    values (p_user_id, format('%s %s', initcap(replace(p_kind, '_', ' ')), to_char(now(), 'YYYY-MM-DD HH24:MI')))
    returning id into v_project_id;
  elsif not exists (select from public.projects where id = v_project_id and user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('project %s not found', v_project_id));
  end if;

  -- lock order: the account, then this job row (new, so nobody else can wait for it), then the
  -- account's grants
  perform from public.credit_accounts where user_id = p_user_id for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;

  -- write: the job and its charge commit together or not at all; a pushed job's first attempt
  -- starts now (the caller dispatches it), a queue job's when a worker claims it. A key already
  -- taken means a request with it committed since the replay check above: answer as a replay.
  loop
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
    on conflict (user_id, idempotency_key) where idempotency_key is not null do nothing
    returning * into v_job;
    exit when found;
    v_replay := credit_jobs_internal.replayed_job(
      p_user_id, p_idempotency_key, v_request_hash, v_pipeline);
    if v_replay is not null then
      if p_project_id is null then
        delete from public.projects where id = v_project_id;  -- made for this request only
      end if;
      return v_replay;
    end if;
    -- that job is gone already (its project was deleted): insert again
  end loop;

  -- the limit: every create of this user counts here under the same lock, so the count is exact
  if v_kind.max_active_per_user is not null then
    select count(*) into v_active from public.jobs
    where user_id = p_user_id and kind = p_kind and status in ('pending', 'processing');
    if v_active > v_kind.max_active_per_user then  -- this job is one of them
      perform credit_jobs_internal.raise_error('CJ008', format(
        'you already have %s active %s %s (the limit); try again when one finishes',
        v_kind.max_active_per_user, p_kind,
        case when v_kind.max_active_per_user = 1 then 'job' else 'jobs' end));
    end if;
  end if;

  if v_kind.cost > 0 then
    v_balance := credit_jobs_internal.post_entry(
      p_user_id, v_job.id, 'charge', -v_kind.cost, format('job %s (%s)', v_job.id, p_kind));
  else
    select balance into v_balance from public.credit_accounts where user_id = p_user_id;
  end if;

  return jsonb_build_object(
    'job', credit_jobs_internal.job_json(v_job), 'balance', v_balance, 'replayed', false,
    'pipeline', v_pipeline);
end;
$$;

---------------------------------------------------------------------------------------------------
-- list_job_kinds: the price list says how many jobs of a kind one user may have running
---------------------------------------------------------------------------------------------------

create or replace function public.list_job_kinds() returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('items', coalesce(
    jsonb_agg(jsonb_build_object(
      'kind', k.kind,
      'cost', k.cost,
      'description', k.description,
      'paused', k.paused,
      'max_attempts', k.max_attempts,
      'max_active_per_user', k.max_active_per_user
    ) order by k.kind),
    '[]'::jsonb))
  from public.job_kinds k
$$;

revoke all on all functions in schema credit_jobs_internal from public, anon, authenticated, service_role;
