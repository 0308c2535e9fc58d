-- Retry a failed job by hand — or only make sure its user got the credits back.
-- Replace 00000000-0000-0000-0000-000000000000 with the job's id.
--
-- A job that ends `failed` was refunded in the same transaction (check with step 1), so there are
-- two honest ways to help its user:
--   A. Refund only: nothing to do for a failed job beyond checking the refund; for a job still
--      stuck pending/processing, end it now with refund_job_atomic (failed + refunded once).
--   B. Run it again as a NEW job: create_job with the same kind, params, project and step. It is
--      charged like any job (the old one stays failed and refunded, so the user pays once in
--      total). To make it free, grant the price first (step B0).

-- 1. The job and its money: expect one charge and, for failed/cancelled, one refund.
select j.id, j.user_id, j.kind, j.status, j.attempt, j.cost, j.refunded, j.error_message,
       (select jsonb_agg(jsonb_build_object('type', l.entry_type, 'amount', l.amount,
                                            'at', l.created_at) order by l.id)
        from public.credit_ledger l where l.job_id = j.id) as ledger
from public.jobs j
where j.id = '00000000-0000-0000-0000-000000000000';

-- A. Refund only, for a job that is not finished yet (a failed or cancelled job answers
--    `already_refunded`; a completed one is refused — use admin_grant_credits for goodwill).
-- select public.refund_job_atomic(
--   p_job_id => '00000000-0000-0000-0000-000000000000',
--   p_reason => 'ended by admin: <ticket or reason>');

-- B0. Optional: pay for the retry on the user's behalf.
-- select public.admin_grant_credits(j.user_id, j.cost, 'free retry of job ' || j.id)
-- from public.jobs j where j.id = '00000000-0000-0000-0000-000000000000' and j.status = 'failed';

-- B. The new job. The idempotency key makes running this twice create one job (the second run
--    answers replayed = true). p_pipeline is the deployment's PIPELINE, as `generate` passes it
--    (the kind's own job_kinds.pipeline wins):
--    'queue': queue workers claim it;
--    'webhook' / 'prefect': a pushed job; the next maintenance run dispatches it once its lease
--           has expired — run the UPDATE below to make that the next minute.
-- select public.create_job(
--   p_user_id => j.user_id,
--   p_kind => j.kind,
--   p_params => j.params,
--   p_project_id => j.project_id,
--   p_step_number => j.step_number,
--   p_idempotency_key => 'admin-retry:' || j.id,
--   p_pipeline => 'queue')
-- from public.jobs j
-- where j.id = '00000000-0000-0000-0000-000000000000' and j.status = 'failed';

-- B, push mode only: let the next maintenance run dispatch the new job right away.
-- update public.jobs set lease_expires_at = now()
-- where idempotency_key = 'admin-retry:00000000-0000-0000-0000-000000000000'
--   and status = 'pending' and pushed;
