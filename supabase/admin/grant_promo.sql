-- Give a user promotional credits that expire, spent before their other credits.
--
-- When: a launch promo, a referral bonus, a trial allowance.
-- How: replace the user id, the amount, the expiry and the reason, then Run.
--   * priority 0 spends these first (purchases default to 50); see docs/credits.md for the order.
--   * p_source/p_external_id (optional) make it once-only: running it again with the same pair
--     answers outcome "duplicate" and grants nothing (e.g. p_source => 'promo',
--     p_external_id => 'launch-2026:<user id>').
-- Result: {"grant": {...}, "balance": <new balance>, "outcome": "applied"}.

select public.grant_credits(
  p_user_id    => '00000000-0000-0000-0000-000000000000',
  p_amount     => 50,
  p_reason     => 'launch promo',
  p_category   => 'promo',
  p_priority   => 0,
  p_expires_at => now() + interval '30 days'
);
