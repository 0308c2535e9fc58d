-- Self-healing push mode and operations: re-dispatch of pushed jobs nobody answered, pausing a
-- kind, and pg_cron for the reaper. (Which jobs are pushed: see jobs.pushed in the core.)

create index jobs_to_dispatch on public.jobs (available_at)
  where status = 'pending' and pushed;

---------------------------------------------------------------------------------------------------
-- take_jobs_to_dispatch: push mode heals itself
---------------------------------------------------------------------------------------------------

-- For maintenance: returns the pushed jobs to dispatch now and fails the hopeless ones.
--   (a) retried (dispatched_at null, available again): a new attempt starts; dispatch it.
--   (b) dispatched, pipeline silent past the lease (e.g. the function instance died between
--       create_job's commit and the dispatch): the same attempt again, so the Prefect
--       idempotency key "<job_id>:<attempt>" is unchanged; dispatched_at is kept.
--   (c) still pending past dispatched_at + dispatch_timeout_seconds: failed and refunded.
-- Paused kinds get no (a) or (b); (c) still ends their dispatched jobs. Jobs a pipeline has
-- reported on are `processing` and belong to reap_stalled_jobs().
create function public.take_jobs_to_dispatch(p_limit integer default 100) returns jsonb
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
          (c.dispatched_at is null and c.available_at <= now() and not k.paused)
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
    v_jobs := v_jobs || jsonb_build_array(credit_jobs_internal.job_json(v_job));
  end loop;
  return jsonb_build_object('jobs', v_jobs, 'failed', v_failed);
end;
$$;

---------------------------------------------------------------------------------------------------
-- pause_job_kind: stop new jobs and new attempts of one kind
---------------------------------------------------------------------------------------------------

-- create_job refuses a paused kind (CJ002), claim_jobs and take_jobs_to_dispatch start no
-- attempts of it; jobs already running finish or are reaped as usual.
create function public.pause_job_kind(p_kind text, p_paused boolean default true) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_kind public.job_kinds;
begin
  -- validate
  if p_paused is null then
    perform credit_jobs_internal.raise_error('CJ007', 'paused must be true or false');
  end if;
  -- lock + write
  update public.job_kinds set paused = p_paused where kind = p_kind returning * into v_kind;
  if not found then
    perform credit_jobs_internal.raise_error('CJ002', format('unknown job kind %L', p_kind));
  end if;
  return jsonb_build_object('kind', v_kind.kind, 'paused', v_kind.paused, 'outcome', 'applied');
end;
$$;

revoke execute on function
  public.take_jobs_to_dispatch(integer),
  public.pause_job_kind(text, boolean)
  from public, anon, authenticated;
grant execute on function
  public.take_jobs_to_dispatch(integer),
  public.pause_job_kind(text, boolean)
  to service_role;

---------------------------------------------------------------------------------------------------
-- pg_cron: reap stalled jobs every minute inside the database, where the extension exists
---------------------------------------------------------------------------------------------------

-- Supabase ships pg_cron; plain Postgres may not have it, or may only allow it in the database
-- named by cron.database_name (and only with pg_cron in shared_preload_libraries). Whatever the
-- reason it cannot be used here, this step is skipped with a NOTICE so the migration applies
-- everywhere; the `maintenance` function (e.g. Cloud Scheduler) reaps in that case.
do $$
begin
  if not exists (select from pg_available_extensions where name = 'pg_cron') then
    raise notice 'pg_cron is not installed: reap_stalled_jobs() is not scheduled in the database; '
      'call the maintenance function from a scheduler instead';
    return;
  end if;
  begin
    create extension if not exists pg_cron with schema pg_catalog;
  exception when others then
    raise notice 'pg_cron cannot be created in this database (%): reap_stalled_jobs() is not '
      'scheduled in the database; call the maintenance function from a scheduler instead', sqlerrm;
    return;
  end;
  -- Scheduling by name replaces an earlier job of that name: re-running this is harmless.
  perform cron.schedule(
    'credit-jobs-reap-stalled', '* * * * *', 'select public.reap_stalled_jobs(1000)');
end
$$;
