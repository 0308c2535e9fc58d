-- The HTTP functions' side of the database: reads (jobs, projects, steps, credits), project
-- creation, and one entry point for pipeline callbacks. Same conventions as the money core:
-- security definer, empty search_path, jsonb results, CJ0xx errors, service_role only.
--
-- Pagination is keyset (newest first). A cursor is opaque to clients: today it is the id of the
-- last item of the previous page; a cursor that is not one of the caller's items is CJ007.

---------------------------------------------------------------------------------------------------
-- Internal helpers
---------------------------------------------------------------------------------------------------

create function credit_jobs_internal.project_json(p_project public.projects) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'id', p_project.id,
    'title', p_project.title,
    'created_at', p_project.created_at,
    'updated_at', p_project.updated_at
  )
$$;

create function credit_jobs_internal.check_page_size(p_limit integer) returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_limit is null or p_limit not between 1 and 100 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 100');
  end if;
end;
$$;

create function credit_jobs_internal.cursor_uuid(p_cursor text) returns uuid
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_cursor !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    perform credit_jobs_internal.raise_error('CJ007', 'invalid cursor');
  end if;
  return p_cursor::uuid;
end;
$$;

---------------------------------------------------------------------------------------------------
-- Jobs
---------------------------------------------------------------------------------------------------

create function public.get_job(p_user_id uuid, p_job_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  -- another user's job is reported as missing, never as forbidden
  select * into v_job from public.jobs where id = p_job_id and user_id = p_user_id;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('job %s not found', p_job_id));
  end if;
  return jsonb_build_object('job', credit_jobs_internal.job_json(v_job));
end;
$$;

create function public.list_jobs(
  p_user_id uuid,
  p_limit integer default 20,
  p_cursor text default null,
  p_status text default null
) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  -- the keyset bound always applies (first page: above every row), so even a cached generic plan
  -- starts its index scan at the cursor instead of filtering row by row
  v_after_created timestamptz := 'infinity';
  v_after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff';
  v_rows public.jobs[];
begin
  -- validate
  perform credit_jobs_internal.check_page_size(p_limit);
  if p_status is not null
     and p_status not in ('pending', 'processing', 'completed', 'failed', 'cancelled') then
    perform credit_jobs_internal.raise_error('CJ007', format('unknown status %L', p_status));
  end if;
  if p_cursor is not null then
    select created_at, id into v_after_created, v_after_id
    from public.jobs
    where id = credit_jobs_internal.cursor_uuid(p_cursor) and user_id = p_user_id;
    if not found then
      perform credit_jobs_internal.raise_error('CJ007', 'invalid cursor');
    end if;
  end if;
  -- read: one row more than asked tells whether there is a next page; one query per index
  if p_status is null then
    v_rows := array(
      select j from public.jobs j  -- jobs_user_history
      where j.user_id = p_user_id
        and (j.created_at, j.id) < (v_after_created, v_after_id)
      order by j.created_at desc, j.id desc
      limit p_limit + 1);
  else
    v_rows := array(
      select j from public.jobs j  -- jobs_user_status_history
      where j.user_id = p_user_id and j.status = p_status
        and (j.created_at, j.id) < (v_after_created, v_after_id)
      order by j.created_at desc, j.id desc
      limit p_limit + 1);
  end if;
  return jsonb_build_object(
    'items', coalesce(
      (select jsonb_agg(credit_jobs_internal.job_json(v_rows[i]) order by i)
       from generate_series(1, least(cardinality(v_rows), p_limit)) i),
      '[]'::jsonb),
    'next_cursor', case when cardinality(v_rows) > p_limit then (v_rows[p_limit]).id::text end);
end;
$$;

---------------------------------------------------------------------------------------------------
-- Projects and steps
---------------------------------------------------------------------------------------------------

create function public.create_project(p_user_id uuid, p_title text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_project public.projects;
  v_title text := btrim(p_title);
begin
  -- validate
  if v_title is null or char_length(v_title) not between 1 and 200 then
    perform credit_jobs_internal.raise_error('CJ007', 'title must be 1 to 200 characters');
  end if;
  if not exists (select from public.credit_accounts where user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('user %s not found', p_user_id));
  end if;
  -- write
  insert into public.projects (user_id, title) values (p_user_id, v_title)
  returning * into v_project;
  return jsonb_build_object('project', credit_jobs_internal.project_json(v_project));
end;
$$;

create function public.get_project(p_user_id uuid, p_project_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_project public.projects;
begin
  select * into v_project from public.projects where id = p_project_id and user_id = p_user_id;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('project %s not found', p_project_id));
  end if;
  return jsonb_build_object('project', credit_jobs_internal.project_json(v_project) || jsonb_build_object(
    'steps', coalesce(
      (select jsonb_agg(credit_jobs_internal.step_json(s) order by s.step_number)
       from public.project_steps s where s.project_id = p_project_id),
      '[]'::jsonb),
    'jobs_count', (select count(*) from public.jobs j where j.project_id = p_project_id)));
end;
$$;

create function public.list_projects(
  p_user_id uuid,
  p_limit integer default 20,
  p_cursor text default null
) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  -- the keyset bound always applies (first page: above every row), so even a cached generic plan
  -- starts its index scan at the cursor instead of filtering row by row
  v_after_created timestamptz := 'infinity';
  v_after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff';
  v_rows public.projects[];
begin
  -- validate
  perform credit_jobs_internal.check_page_size(p_limit);
  if p_cursor is not null then
    select created_at, id into v_after_created, v_after_id
    from public.projects
    where id = credit_jobs_internal.cursor_uuid(p_cursor) and user_id = p_user_id;
    if not found then
      perform credit_jobs_internal.raise_error('CJ007', 'invalid cursor');
    end if;
  end if;
  -- read (projects_user_history)
  v_rows := array(
    select p from public.projects p
    where p.user_id = p_user_id
      and (p.created_at, p.id) < (v_after_created, v_after_id)
    order by p.created_at desc, p.id desc
    limit p_limit + 1);
  return jsonb_build_object(
    'items', coalesce(
      (select jsonb_agg(credit_jobs_internal.project_json(v_rows[i]) order by i)
       from generate_series(1, least(cardinality(v_rows), p_limit)) i),
      '[]'::jsonb),
    'next_cursor', case when cardinality(v_rows) > p_limit then (v_rows[p_limit]).id::text end);
end;
$$;

create function public.list_project_steps(p_user_id uuid, p_project_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if not exists (select from public.projects where id = p_project_id and user_id = p_user_id) then
    perform credit_jobs_internal.raise_error('CJ003', format('project %s not found', p_project_id));
  end if;
  return jsonb_build_object('steps', coalesce(
    (select jsonb_agg(credit_jobs_internal.step_json(s) order by s.step_number)
     from public.project_steps s where s.project_id = p_project_id),
    '[]'::jsonb));
end;
$$;

---------------------------------------------------------------------------------------------------
-- Credits
---------------------------------------------------------------------------------------------------

create function public.get_credits(
  p_user_id uuid,
  p_limit integer default 20,
  p_cursor text default null
) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
  v_before_id bigint := 9223372036854775807;  -- first page: below no id
  v_rows public.credit_ledger[];
begin
  -- validate
  perform credit_jobs_internal.check_page_size(p_limit);
  if p_cursor is not null then
    if p_cursor !~ '^[1-9][0-9]{0,17}$' then
      perform credit_jobs_internal.raise_error('CJ007', 'invalid cursor');
    end if;
    v_before_id := p_cursor::bigint;
  end if;
  select balance into v_balance from public.credit_accounts where user_id = p_user_id;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;
  -- read (credit_ledger_user_history)
  v_rows := array(
    select l from public.credit_ledger l
    where l.user_id = p_user_id and l.id < v_before_id
    order by l.id desc
    limit p_limit + 1);
  return jsonb_build_object(
    'balance', v_balance,
    'entries', coalesce(
      (select jsonb_agg(jsonb_build_object(
         'id', (v_rows[i]).id, 'job_id', (v_rows[i]).job_id,
         'entry_type', (v_rows[i]).entry_type, 'amount', (v_rows[i]).amount,
         'balance_after', (v_rows[i]).balance_after, 'reason', (v_rows[i]).reason,
         'created_at', (v_rows[i]).created_at)
         order by i)
       from generate_series(1, least(cardinality(v_rows), p_limit)) i),
      '[]'::jsonb),
    'next_cursor', case when cardinality(v_rows) > p_limit then (v_rows[p_limit]).id::text end);
end;
$$;

---------------------------------------------------------------------------------------------------
-- Pipeline callbacks
---------------------------------------------------------------------------------------------------

-- One signed callback (docs/pipelines.md) -> heartbeat_job / complete_job / fail_job, in one transaction.
-- The outcome is the API's (docs/http-api.md): `applied` (the report changed the job: the job's status tells whether
-- a failure was retried or refunded) or `duplicate` (nothing left to do: a replay, or progress
-- arriving after the end). A report for an attempt that is over is `stale_attempt`.
create function public.apply_pipeline_report(
  p_job_id uuid,
  p_attempt integer,
  p_status text,
  p_progress double precision default null,
  p_result jsonb default null,
  p_error text default null,
  p_credits_used integer default null,
  p_retryable boolean default false
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_report jsonb;
begin
  -- validate
  if p_status is null or p_status not in ('processing', 'completed', 'failed') then
    perform credit_jobs_internal.raise_error('CJ007',
      'status must be processing, completed or failed');
  end if;
  -- lock + fence (the functions below take the same lock again, harmlessly, and end attempts
  -- that are over)
  v_job := credit_jobs_internal.lock_job_for_report(p_job_id, p_attempt);
  -- progress that arrives after this attempt's own end changes nothing
  if p_status = 'processing' and v_job.status in ('completed', 'failed') then
    return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'duplicate');
  end if;
  -- write
  v_report := case p_status
    when 'processing' then public.heartbeat_job(p_job_id, p_attempt, p_progress)
    when 'completed' then public.complete_job(p_job_id, p_attempt, p_result, p_credits_used)
    else public.fail_job(p_job_id, p_attempt, p_error, coalesce(p_retryable, false))
  end;
  return jsonb_build_object(
    'job', v_report -> 'job',
    'outcome', case when v_report ->> 'outcome' = 'duplicate' then 'duplicate' else 'applied' end);
end;
$$;

---------------------------------------------------------------------------------------------------
-- Security: the server (service_role) only
---------------------------------------------------------------------------------------------------

revoke all on function
  credit_jobs_internal.project_json(public.projects),
  credit_jobs_internal.check_page_size(integer),
  credit_jobs_internal.cursor_uuid(text)
  from public, anon, authenticated, service_role;

revoke execute on function
  public.get_job(uuid, uuid),
  public.list_jobs(uuid, integer, text, text),
  public.create_project(uuid, text),
  public.get_project(uuid, uuid),
  public.list_projects(uuid, integer, text),
  public.list_project_steps(uuid, uuid),
  public.get_credits(uuid, integer, text),
  public.apply_pipeline_report(uuid, integer, text, double precision, jsonb, text, integer, boolean)
  from public, anon, authenticated;
grant execute on function
  public.get_job(uuid, uuid),
  public.list_jobs(uuid, integer, text, text),
  public.create_project(uuid, text),
  public.get_project(uuid, uuid),
  public.list_projects(uuid, integer, text),
  public.list_project_steps(uuid, uuid),
  public.get_credits(uuid, integer, text),
  public.apply_pipeline_report(uuid, integer, text, double precision, jsonb, text, integer, boolean)
  to service_role;
