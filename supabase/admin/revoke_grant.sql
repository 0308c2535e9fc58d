-- Take back what is left of one grant (a chargeback handled by hand, a grant made by mistake).
--
-- When: Stripe refunds and disputes are revoked by the payments function; use this for anything
-- else. The balance never goes below zero: credits already spent are reported as `shortfall`.
-- How: replace the grant id (find it in the first query, or with audit_user.sql), then Run.
-- Result: {"grant": {...}, "revoked": <credits taken>, "shortfall": <already spent>,
-- "balance": ..., "outcome": "applied"}; running it again answers "duplicate".

select id, user_id, category, amount, remaining, expired, revoked, expires_at, source,
       external_id, reason, revoked_at
from public.credit_grants
where id = '00000000-0000-0000-0000-000000000000';

select public.revoke_grant(
  p_grant_id => '00000000-0000-0000-0000-000000000000',
  p_reason   => 'support ticket #0000: granted by mistake'
);
