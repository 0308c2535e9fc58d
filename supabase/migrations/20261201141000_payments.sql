-- Purchases (docs/credits.md#purchases): Stripe events, verified by the `payments` function, are
-- applied here exactly once. Every event is stored with what became of it; an event that cannot
-- be applied yet (unknown package or user, a refund that arrived before its purchase) is `held`
-- and applied when it is delivered again or replayed (supabase/admin/replay_payment.sql).

---------------------------------------------------------------------------------------------------
-- Tables admins edit in the dashboard
---------------------------------------------------------------------------------------------------

-- What a Checkout Session's metadata.credit_package buys.
create table public.credit_packages (
  id text primary key check (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  credits bigint not null check (credits > 0),
  category text not null default 'paid' check (category in ('paid', 'promo', 'subscription')),
  priority integer not null default 50 check (priority between 0 and 100),
  -- null: purchased credits never expire
  expires_after_days integer check (expires_after_days between 1 and 3650),
  active boolean not null default true,
  description text not null default '',
  created_at timestamptz not null default now()
);

-- What a paid subscription invoice grants per period, by its Stripe price.
create table public.credit_plans (
  stripe_price_id text primary key check (char_length(stripe_price_id) between 1 and 255),
  credits bigint not null check (credits > 0),
  priority integer not null default 40 check (priority between 0 and 100),
  description text not null default '',
  created_at timestamptz not null default now()
);

-- Which user a Stripe customer is: learned from Checkout Sessions (client_reference_id).
create table public.stripe_customers (
  customer_id text primary key check (char_length(customer_id) between 1 and 255),
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz not null default now()
);

-- Every event received, once (Stripe's event id), and what became of it.
create table public.payment_events (
  id text primary key check (char_length(id) between 1 and 255),
  type text not null,
  payload jsonb not null,
  outcome text not null check (outcome in ('applied', 'duplicate', 'ignored', 'held')),
  detail text not null default '',
  -- for a held refund or dispute: the payment whose grant it revokes once that grant exists
  payment_intent text,
  grant_id uuid,
  received_at timestamptz not null default now(),
  processed_at timestamptz not null default now()
);
create index payment_events_held on public.payment_events (payment_intent)
  where outcome = 'held' and payment_intent is not null;

---------------------------------------------------------------------------------------------------
-- Internal helpers
---------------------------------------------------------------------------------------------------

-- Revokes every live grant of a payment (the account lock taken per grant's user).
-- Returns {revoked, shortfall, grants}; grants = 0 when the payment has none yet.
create function credit_jobs_internal.revoke_payment(p_payment_intent text, p_reason text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_grant_id uuid;
  v_result jsonb;
  v_revoked bigint := 0;
  v_shortfall bigint := 0;
  v_grants integer := 0;
begin
  for v_grant_id in
    select id from public.credit_grants where payment_intent = p_payment_intent order by id
  loop
    v_result := public.revoke_grant(v_grant_id, p_reason);
    v_revoked := v_revoked + (v_result->>'revoked')::bigint;
    v_shortfall := v_shortfall + (v_result->>'shortfall')::bigint;
    v_grants := v_grants + 1;
  end loop;
  return jsonb_build_object('revoked', v_revoked, 'shortfall', v_shortfall, 'grants', v_grants);
end;
$$;

-- Grants a purchase once, then applies any refund or dispute of it that arrived first.
create function credit_jobs_internal.grant_purchase(
  p_user_id uuid,
  p_credits bigint,
  p_category text,
  p_priority integer,
  p_expires_at timestamptz,
  p_external_id text,
  p_payment_intent text,
  p_reason text
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_granted jsonb;
  v_held public.payment_events;
begin
  v_granted := public.grant_credits(
    p_user_id => p_user_id, p_amount => p_credits, p_reason => p_reason,
    p_category => p_category, p_expires_at => p_expires_at, p_priority => p_priority,
    p_source => 'stripe', p_external_id => p_external_id, p_payment_intent => p_payment_intent);
  if p_payment_intent is not null then
    for v_held in
      select * from public.payment_events
      where outcome = 'held' and payment_intent = p_payment_intent
      for update
    loop
      perform credit_jobs_internal.revoke_payment(p_payment_intent, v_held.type);
      update public.payment_events
      set outcome = 'applied', detail = 'revoked when its purchase arrived', processed_at = now()
      where id = v_held.id;
    end loop;
  end if;
  return v_granted;
end;
$$;

---------------------------------------------------------------------------------------------------
-- apply_payment_event
---------------------------------------------------------------------------------------------------

-- One verified Stripe event -> {outcome, event_id, type, detail, grant?, revoked?, shortfall?}.
--   checkout.session.completed / .async_payment_succeeded, payment_status 'paid' and a
--     metadata.credit_package: the package's credits to client_reference_id (external_id = the
--     session id, so both events of one session grant once).
--   invoice.paid with a line whose price is a credit plan: the plan's credits to the customer's
--     user, expiring at the line's period end (external_id = the invoice id).
--   charge.refunded, charge.dispute.created: the payment's grants are revoked (what is left).
-- The same event again is `duplicate`; other types are `ignored`; one that cannot be applied
-- yet is `held` with the reason in `detail`, and is applied when delivered again.
create function public.apply_payment_event(p_event jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id text := p_event->>'id';
  v_type text := p_event->>'type';
  v_object jsonb := p_event->'data'->'object';
  v_event public.payment_events;
  v_package public.credit_packages;
  v_plan public.credit_plans;
  v_line jsonb;
  v_user_id uuid;
  v_user_text text;
  v_payment text;
  v_outcome text := 'applied';
  v_detail text := '';
  v_result jsonb := '{}'::jsonb;
begin
  -- validate
  if v_id is null or char_length(v_id) not between 1 and 255 or v_type is null
     or jsonb_typeof(v_object) is distinct from 'object' then
    perform credit_jobs_internal.raise_error('CJ007', 'not a Stripe event: id, type and data.object are required');
  end if;
  -- lock: the event's row (concurrent deliveries of one event wait here, then see it)
  insert into public.payment_events (id, type, payload, outcome)
  values (v_id, v_type, p_event, 'held')
  on conflict (id) do nothing;
  if not found then
    select * into v_event from public.payment_events where id = v_id for update;
    if v_event.outcome <> 'held' then
      return jsonb_build_object('outcome', 'duplicate', 'event_id', v_id, 'type', v_type,
        'detail', format('already %s', v_event.outcome));
    end if;
  end if;

  -- write
  case
    when v_type in ('checkout.session.completed', 'checkout.session.async_payment_succeeded') then
      if v_object->>'payment_status' is distinct from 'paid' then
        v_outcome := 'ignored';
        v_detail := format('payment_status is %s', coalesce(v_object->>'payment_status', 'missing'));
      elsif v_object->'metadata'->>'credit_package' is null then
        v_outcome := 'ignored';
        v_detail := 'no metadata.credit_package: not a credit purchase';
      else
        select * into v_package from public.credit_packages
        where id = v_object->'metadata'->>'credit_package' and active;
        v_user_text := v_object->>'client_reference_id';
        if v_package.id is null then
          v_outcome := 'held';
          v_detail := format('unknown or inactive credit package %L', v_object->'metadata'->>'credit_package');
        elsif v_user_text is null
           or v_user_text !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
           or not exists (select from public.credit_accounts where user_id = v_user_text::uuid) then
          v_outcome := 'held';
          v_detail := format('client_reference_id %L is not a known user', v_user_text);
        else
          v_user_id := v_user_text::uuid;
          if v_object->>'customer' is not null then
            insert into public.stripe_customers (customer_id, user_id)
            values (v_object->>'customer', v_user_id)
            on conflict (customer_id) do nothing;
          end if;
          v_result := credit_jobs_internal.grant_purchase(
            v_user_id, v_package.credits, v_package.category, v_package.priority,
            now() + make_interval(days => v_package.expires_after_days),
            v_object->>'id', v_object->>'payment_intent',
            format('Stripe checkout %s: %s', v_object->>'id', v_package.id));
          v_outcome := v_result->>'outcome';
        end if;
      end if;
    when v_type = 'invoice.paid' then
      select l into v_line
      from jsonb_array_elements(coalesce(v_object->'lines'->'data', '[]'::jsonb)) l
      join public.credit_plans p on p.stripe_price_id = coalesce(
        l->'price'->>'id', l->'pricing'->'price_details'->>'price')
      limit 1;
      if v_line is null then
        v_outcome := 'ignored';
        v_detail := 'no line of this invoice is a credit plan';
      else
        select * into v_plan from public.credit_plans where stripe_price_id = coalesce(
          v_line->'price'->>'id', v_line->'pricing'->'price_details'->>'price');
        select user_id into v_user_id from public.stripe_customers
        where customer_id = v_object->>'customer';
        if v_user_id is null then
          v_outcome := 'held';
          v_detail := format('customer %L is not linked to a user yet', v_object->>'customer');
        elsif to_timestamp((v_line->'period'->>'end')::double precision) <= now() then
          v_outcome := 'ignored';
          v_detail := 'the invoice''s period is already over';
        else
          v_result := credit_jobs_internal.grant_purchase(
            v_user_id, v_plan.credits, 'subscription', v_plan.priority,
            to_timestamp((v_line->'period'->>'end')::double precision),
            v_object->>'id', coalesce(v_object->>'payment_intent', v_object->>'charge'),
            format('Stripe invoice %s: plan %s', v_object->>'id', v_plan.stripe_price_id));
          v_outcome := v_result->>'outcome';
        end if;
      end if;
    when v_type in ('charge.refunded', 'charge.dispute.created') then
      v_payment := v_object->>'payment_intent';
      if v_payment is null then
        v_outcome := 'ignored';
        v_detail := 'no payment_intent';
      else
        v_result := credit_jobs_internal.revoke_payment(v_payment, v_type);
        if (v_result->>'grants')::integer = 0 then
          -- its purchase has not arrived yet: grant_purchase revokes it then
          v_outcome := 'held';
          v_detail := format('no grant for payment %s yet', v_payment);
        end if;
      end if;
    else
      v_outcome := 'ignored';
      v_detail := 'not an event credit-jobs handles';
  end case;

  update public.payment_events
  set outcome = v_outcome, detail = v_detail, payment_intent = v_payment,
      grant_id = (v_result->'grant'->>'id')::uuid, processed_at = now()
  where id = v_id;
  return v_result || jsonb_build_object(
    'outcome', v_outcome, 'event_id', v_id, 'type', v_type, 'detail', v_detail);
end;
$$;

---------------------------------------------------------------------------------------------------
-- Security: RLS, grants
---------------------------------------------------------------------------------------------------

alter table public.credit_packages enable row level security;
alter table public.credit_plans enable row level security;
alter table public.stripe_customers enable row level security;
alter table public.payment_events enable row level security;
revoke all on public.credit_packages, public.credit_plans, public.stripe_customers,
  public.payment_events from anon, authenticated;
grant select on public.credit_packages, public.credit_plans, public.stripe_customers,
  public.payment_events to service_role;

revoke all on all functions in schema credit_jobs_internal from public, anon, authenticated, service_role;
revoke execute on function public.apply_payment_event(jsonb) from public, anon, authenticated;
grant execute on function public.apply_payment_event(jsonb) to service_role;
