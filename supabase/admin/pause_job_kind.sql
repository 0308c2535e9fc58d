-- Pause a job kind (e.g. its model provider is down), then resume it.
-- While paused: create_job refuses the kind (unknown_kind, HTTP 400: "job kind 'x' is paused"),
-- workers claim none of its jobs and maintenance dispatches none of its attempts. Jobs already
-- running finish, or are reaped as usual. Pushed jobs waiting for their pipeline are still failed
-- and refunded at their dispatch deadline; queue jobs simply wait.
-- Replace 'story' with the kind.

-- 1. Pause (same as: update public.job_kinds set paused = true where kind = 'story').
select public.pause_job_kind(p_kind => 'story', p_paused => true);

-- 2. What is waiting or running for the kind.
select status, count(*) as jobs, min(created_at) as oldest
from public.jobs
where kind = 'story' and status in ('pending', 'processing')
group by status;

-- 3. Resume: waiting jobs are claimed or dispatched again within a minute.
-- select public.pause_job_kind(p_kind => 'story', p_paused => false);

-- 4. Or give up on what waits: fail and refund every pending job of the kind, each exactly once.
-- select j.id, public.refund_job_atomic(j.id, 'job kind story withdrawn by admin') ->> 'outcome'
-- from public.jobs j
-- where j.kind = 'story' and j.status = 'pending';

-- Every kind and whether it is paused.
select kind, cost, paused, max_attempts, lease_seconds, retry_delay_seconds,
       dispatch_timeout_seconds, max_active_per_user
from public.job_kinds
order by kind;
