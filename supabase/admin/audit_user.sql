-- Audit one user's credits: ledger, jobs and whether the balance agrees with the ledger.
--
-- When: a user disputes their balance, or check_discrepancies.sql names this user.
-- How: replace the user id (all three queries), highlight one query and Run it (the SQL editor
-- shows only the last statement's result when you run the whole file).
-- Reading it: every balance change is one ledger row; balance_after is the balance right after
-- that row and must equal running_total. Charges are negative; a job's refund follows its charge.

-- 1. Ledger, newest first, with the running total recomputed from the amounts.
select l.id, l.created_at, l.entry_type, l.amount, l.balance_after,
       sum(l.amount) over (order by l.id) as running_total,
       l.job_id, l.reason
from public.credit_ledger l
where l.user_id = '00000000-0000-0000-0000-000000000000'
order by l.id desc
limit 500;

-- 2. Jobs by status and kind: how much was charged, refunded and kept.
select status, kind, count(*) as jobs, sum(cost) as charged, sum(refunded) as refunded,
       sum(cost - refunded) as kept, max(created_at) as latest
from public.jobs
where user_id = '00000000-0000-0000-0000-000000000000'
group by status, kind
order by status, kind;

-- 3. Balance against the ledger: `difference` must be 0 (no row in credit_discrepancies).
select a.user_id, u.email, a.balance,
       coalesce((select sum(amount) from public.credit_ledger l where l.user_id = a.user_id), 0)
         as ledger_sum,
       exists (select from public.credit_discrepancies d where d.user_id = a.user_id)
         as in_credit_discrepancies
from public.credit_accounts a
left join auth.users u on u.id = a.user_id
where a.user_id = '00000000-0000-0000-0000-000000000000';
