-- Events the operator's backend never received, and sending them again.
--
-- When: maintenance logged event_delivery_failed at ERROR (an event gave up after its last
-- attempt, about 20 hours of retries), or undelivered_events is not empty. Every money event
-- (job finished, refund, grant, low, depleted, expired) stays in public.credit_events whether or
-- not it was delivered; nothing is lost, only late.
-- How: run query 1 and read last_error (the receiver's HTTP status, or why it was unreachable);
-- fix the receiver or EVENTS_URL / EVENTS_WEBHOOK_SECRET; then run query 2. The next maintenance
-- run delivers them, each under its own webhook-id, so a receiver that already has one drops it.
-- To send particular events again (delivered or not), name them instead:
-- public.replay_events(p_event_ids => array['<event id>', ...]::uuid[]).
--
-- Query 2 answers {"replayed": <number of events due again>}.

-- 1. What is failing: `retrying` events are retried by themselves; `gave_up` ones wait for query 2.
select id, type, user_id, state, attempts, last_attempt_at, last_error, created_at
from public.undelivered_events
order by created_at;

-- 2. Replay every event that gave up, with a fresh count of attempts.
select public.replay_events();
