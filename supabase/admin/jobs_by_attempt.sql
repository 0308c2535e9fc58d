-- Jobs by attempt count: how often each kind needs retries, and what is on its last attempt.
-- Each start of work (a claim, or a push dispatch) is one attempt; a kind allows max_attempts.

-- 1. Last 7 days, per kind and attempt: where jobs ended up.
select j.kind, j.attempt, k.max_attempts,
       count(*) as jobs,
       count(*) filter (where j.status = 'completed') as completed,
       count(*) filter (where j.status = 'failed') as failed,
       count(*) filter (where j.status = 'cancelled') as cancelled,
       count(*) filter (where j.status in ('pending', 'processing')) as in_flight
from public.jobs j
join public.job_kinds k on k.kind = j.kind
where j.created_at > now() - interval '7 days'
group by j.kind, j.attempt, k.max_attempts
order by j.kind, j.attempt;

-- 2. Retry rate per kind over the same window (share of finished jobs that needed > 1 attempt).
select kind,
       count(*) filter (where attempt > 1) as retried_jobs,
       count(*) as finished_jobs,
       round(100.0 * count(*) filter (where attempt > 1) / count(*), 1) as retried_percent
from public.jobs
where created_at > now() - interval '7 days' and finished_at is not null
group by kind
order by retried_percent desc;

-- 3. In flight on their last attempt: one more failure and they are refunded.
select j.id, j.user_id, j.kind, j.status, j.attempt, k.max_attempts, j.error_message,
       j.worker_id, j.updated_at
from public.jobs j
join public.job_kinds k on k.kind = j.kind
where j.status in ('pending', 'processing') and j.attempt >= k.max_attempts
order by j.updated_at;

-- 4. The most recent jobs that needed more than one attempt, with the last error seen.
select id, user_id, kind, status, attempt, error_message, created_at, finished_at
from public.jobs
where attempt > 1
order by created_at desc
limit 50;
