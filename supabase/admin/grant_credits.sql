-- Grant credits to one user, or take some back.
--
-- When: goodwill credit for a support ticket, compensation for a completed job that went wrong
-- (refund_job_atomic refuses completed jobs on purpose), or correcting a mistaken grant.
-- How: replace the user id, the amount and the reason, then Run.
--   * user id: find it with  select id, email from auth.users where email ilike '%someone%';
--   * amount: positive grants, negative takes back; the balance never goes below zero (a larger
--     deduction fails with CJ001 insufficient_credits and changes nothing).
--   * reason: required; it is stored in the ledger for the audit trail (name the ticket).
-- Result: {"user_id": ..., "balance": <new balance>, "outcome": "applied"}. Check the entry with
-- audit_user.sql.

select public.admin_grant_credits(
  p_user_id => '00000000-0000-0000-0000-000000000000',
  p_amount  => 100,
  p_reason  => 'support ticket #0000: goodwill credit'
);
