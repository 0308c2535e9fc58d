-- Stuck workers: who stopped heartbeating, and which jobs they left behind.
--
-- A queue worker heartbeats every third of its kind's lease_seconds. A worker listed here has
-- jobs whose lease passed: it crashed, is frozen, or lost the database. Nothing is lost: the
-- reaper retries those jobs (or fails and refunds them when no attempts are left), and fencing
-- rejects anything the worker still reports for them. The reaper runs every minute through
-- pg_cron where it is installed, otherwise through the `maintenance` function's scheduler.

-- 1. Stalled jobs per worker (worker_id defaults to host:pid of the worker process).
select worker_id,
       count(*) as stalled_jobs,
       array_agg(distinct kind) as kinds,
       min(lease_expires_at) as first_lease_expired,
       max(overdue) as longest_overdue,
       array_agg(id order by lease_expires_at) as job_ids
from public.stalled_jobs
group by worker_id
order by longest_overdue desc;

-- 2. For comparison, the workers that are alive: jobs with a lease still running.
select worker_id, count(*) as running_jobs, min(started_at) as oldest_started,
       max(lease_expires_at) as latest_lease
from public.jobs
where status = 'processing' and lease_expires_at >= now()
group by worker_id
order by running_jobs desc;

-- 3. Push mode: dispatched jobs their pipeline never answered. Maintenance dispatches the same
--    attempt again; past the kind's dispatch_timeout_seconds it fails and refunds them.
select j.id, j.user_id, j.kind, j.attempt, j.dispatched_at, j.lease_expires_at,
       j.dispatched_at + make_interval(secs => k.dispatch_timeout_seconds) as refunded_after
from public.jobs j
join public.job_kinds k on k.kind = j.kind
where j.status = 'pending' and j.pushed and j.lease_expires_at < now()
order by j.dispatched_at;

-- 4. Reap now instead of waiting for the next run: returns {reaped, retried}, at most 100 jobs
--    a call (short account locks); run it again while reaped is 100.
-- select public.reap_stalled_jobs();

-- 5. Is the pg_cron reaper running? (Only where pg_cron is installed.)
-- select status, return_message, start_time
-- from cron.job_run_details
-- where jobid = (select jobid from cron.job where jobname = 'credit-jobs-reap-stalled')
-- order by start_time desc
-- limit 10;
