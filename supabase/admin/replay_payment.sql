-- Stripe events that could not be applied yet (`held`), and replaying one after fixing why.
--
-- When: the payments function logged payment_event outcome=held (e.g. an unknown package, a
-- client_reference_id that is not a user, a subscription invoice of a customer not linked yet).
-- How: run the first query; fix what `detail` says (add the package to credit_packages, link the
-- customer in stripe_customers, ...); replace the event id in the second query and Run it.
-- Replaying is safe: an event is applied once; a replay of an applied one answers "duplicate".
-- A refund held because its purchase had not arrived is applied by that purchase by itself.

select id, type, detail, received_at, payload->'data'->'object'->>'id' as object_id
from public.payment_events
where outcome = 'held'
order by received_at;

select public.apply_payment_event(payload)
from public.payment_events
where id = 'evt_00000000-0000-0000-0000-000000000000';
