-- Find stuck jobs.
--
-- When: users report jobs that never finish, or an alert says jobs are piling up.
-- How: nothing to replace; highlight one query and Run it (the SQL editor shows only the last
-- statement's result when you run the whole file). Widen the 10 minutes as needed.
-- What to do next:
--   * Query 1 lists processing jobs whose worker stopped heartbeating. The reaper retries them
--     (or fails and refunds them when no attempts are left): run  select public.reap_stalled_jobs();
--     If rows keep showing up here, the scheduled reaper (pg_cron or the `maintenance`
--     function's scheduler) is not running.
--   * Query 2 lists pending jobs that could have started long ago: no worker is claiming that kind,
--     the kind is paused, or a pushed job's pipeline never answered. To give the user their
--     credits back now, use refund_job.sql on the job.

-- 1. Processing jobs past their lease (heartbeat deadline), most overdue first.
select id, user_id, kind, attempt, max_attempts, worker_id, lease_expires_at, overdue,
       started_at, progress
from public.stalled_jobs
order by overdue desc
limit 200;

-- 2. Pending jobs that have been claimable (or handed to a pipeline) for over 10 minutes.
select j.id, j.user_id, j.kind, k.paused as kind_paused, j.attempt, j.error_message,
       j.created_at, j.available_at, j.dispatched_at, j.lease_expires_at,
       now() - greatest(j.available_at, j.dispatched_at) as waiting
from public.jobs j
join public.job_kinds k on k.kind = j.kind
where j.status = 'pending'
  and greatest(j.available_at, j.dispatched_at) < now() - interval '10 minutes'
order by waiting desc
limit 200;
