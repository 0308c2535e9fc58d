-- What clients can see without asking for it row by row:
--   Realtime: jobs and credit_accounts join the supabase_realtime publication, so a web client
--   subscribed with supabase-js sees its own job move and its balance change. Realtime checks
--   each change against the same RLS policies as the Data API (users read only their own rows);
--   nothing else here changes. Supabase creates the publication with every project, and
--   supabase/bootstrap.sql on plain PostgreSQL; a plain database bootstrapped before that has
--   none, and there (no Realtime server anyway) this step skips with a NOTICE.
--   list_job_kinds: the public price list behind GET /kinds.
--   health_check: the one cheap read behind GET /health.

do $$
declare
  v_table text;
begin
  if not exists (select from pg_catalog.pg_publication where pubname = 'supabase_realtime') then
    raise notice 'no publication supabase_realtime: jobs and credit_accounts not added to it';
    return;
  end if;
  foreach v_table in array array['jobs', 'credit_accounts'] loop
    -- already there when someone added it from the dashboard, or the publication is FOR ALL TABLES
    if not exists (
      select from pg_catalog.pg_publication_tables
      where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = v_table
    ) then
      execute format('alter publication supabase_realtime add table public.%I', v_table);
    end if;
  end loop;
end
$$;

---------------------------------------------------------------------------------------------------
-- list_job_kinds: the price list
---------------------------------------------------------------------------------------------------

-- Every kind, paused ones included with `paused: true` (a client shows them as unavailable
-- rather than letting them vanish; generate refuses them), ordered by kind.
create function public.list_job_kinds() returns jsonb
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
      'max_attempts', k.max_attempts
    ) order by k.kind),
    '[]'::jsonb))
  from public.job_kinds k
$$;

---------------------------------------------------------------------------------------------------
-- health_check: is the database there, and does it have the schema the code expects?
---------------------------------------------------------------------------------------------------

-- p_migration: the newest migration version the calling code was written for. Returns
-- {migration_applied, latest_migration} from the migration history that `supabase db push` and
-- `python -m shared.migrate` both keep.
create function public.health_check(p_migration text) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_latest text;
  v_applied boolean;
begin
  select max(version), coalesce(bool_or(version = p_migration), false)
  into v_latest, v_applied
  from supabase_migrations.schema_migrations;
  return jsonb_build_object('migration_applied', v_applied, 'latest_migration', v_latest);
end;
$$;

revoke execute on function public.list_job_kinds(), public.health_check(text)
  from public, anon, authenticated;
grant execute on function public.list_job_kinds(), public.health_check(text) to service_role;
