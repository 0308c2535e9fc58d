-- What expires in the next 7 days: grants with credits left, and the total per user.
--
-- When: before a promo ends, to remind users (or extend a grant with a new one), or to see how
-- many credits the expiry sweep will take. Nothing to replace; highlight a query and Run.
-- Expired grants are never spent: every money function expires a user's due grants first, and
-- maintenance / pg_cron sweep idle accounts (expire_credits).

select * from public.expiring_grants;

select g.user_id, u.email, sum(g.remaining) as credits_expiring, min(g.expires_at) as first_at
from public.expiring_grants g
left join auth.users u on u.id = g.user_id
group by g.user_id, u.email
order by first_at;
