-- Refund one job by hand: it becomes `failed` and its whole price goes back to the user.
--
-- When: a job is stuck or went wrong and the user should get their credits back now.
-- Safe to run twice: a job is refunded at most once (the database enforces it); a second run
-- answers "already_refunded" and moves no credit. A `completed` job is refused (CJ004): give
-- credits back with grant_credits.sql instead. A worker still running it can no longer complete it.
-- How: replace the job id and the reason, run query 1, then query 2 to check.
--
-- Query 1 answers {"job": {...}, "outcome": "refunded" | "already_refunded"}.

-- 1. Refund (p_attempt => null: acting as an admin on whatever attempt is current).
select public.refund_job_atomic(
  p_job_id  => '00000000-0000-0000-0000-000000000000',
  p_reason  => 'support ticket #0000: refunded by hand',
  p_attempt => null
);

-- 2. Check: the job is failed with refunded = cost, and its ledger has one charge and one refund.
select j.id, j.status, j.cost, j.refunded, j.error_message, j.finished_at,
       l.entry_type, l.amount, l.balance_after, l.reason, l.created_at
from public.jobs j
left join public.credit_ledger l on l.job_id = j.id
where j.id = '00000000-0000-0000-0000-000000000000'
order by l.id;
