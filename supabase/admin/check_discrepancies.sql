-- Check that every balance equals the sum of its ledger entries.
--
-- When: daily, after any manual change, or whenever a balance looks wrong.
-- How: nothing to replace; Run. No rows is the only healthy answer.
-- If rows appear: someone changed credit_accounts.balance directly (the money functions never
-- do; they write the balance and its ledger entry in one transaction). The ledger is the source
-- of truth, and admin_grant_credits moves balance and ledger together, so it cannot close the gap.
--   1. Audit the user with audit_user.sql and find out who edited the balance and why.
--   2. Put the balance back to the ledger sum:
--        update public.credit_accounts set balance = <ledger_sum> where user_id = '<user id>';
--   3. If the user really is owed the difference, grant it with grant_credits.sql so it is on
--      the record. Run this file again: it must return no rows.

select d.user_id, u.email, d.balance, d.ledger_sum, d.difference
from public.credit_discrepancies d
left join auth.users u on u.id = d.user_id
order by abs(d.difference) desc;
