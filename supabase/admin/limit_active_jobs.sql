-- Limit how many jobs of one kind each user may have running (pending or processing) at once,
-- e.g. to keep one user from filling a slow model's queue. Past the limit, generate answers 429
-- too_many_active_jobs (Retry-After: 30) and charges nothing; a finished job frees its slot.
-- Lowering the limit stops nothing that runs: new jobs are refused until the user is below it.
-- The dashboard's Table Editor (job_kinds, column max_active_per_user) does the same as step 1.
-- Replace 'story' with the kind and 3 with the limit.

-- 1. Set the limit (null: no limit).
update public.job_kinds set max_active_per_user = 3 where kind = 'story';

-- 2. Who is at or above it now (they are refused until one of their jobs finishes).
select j.user_id, count(*) as active, k.max_active_per_user
from public.jobs j
join public.job_kinds k on k.kind = j.kind
where j.kind = 'story' and j.status in ('pending', 'processing')
group by j.user_id, k.max_active_per_user
having count(*) >= k.max_active_per_user
order by active desc;

-- 3. Remove the limit again.
-- update public.job_kinds set max_active_per_user = null where kind = 'story';

-- Every kind and its limit.
select kind, cost, max_active_per_user, paused
from public.job_kinds
order by kind;
