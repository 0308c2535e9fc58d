-- The pg_cron reaper now takes reap_stalled_jobs' default batch of 100, as the maintenance
-- function does: a batch holds the account locks of every job it refunds until it commits, and
-- batches of 1000 held users' requests up ~7x longer than batches of 100 (BENCHMARKS.md).
-- Only where 20261122120000 could create pg_cron; scheduling by name replaces its job.
do $$
begin
  if exists (select from pg_extension where extname = 'pg_cron') then
    perform cron.schedule(
      'credit-jobs-reap-stalled', '* * * * *', 'select public.reap_stalled_jobs()');
  end if;
end
$$;
