-- Credits live in grants (docs/credits.md): each has an amount, what is left of it, a category,
-- a priority and an optional expiry. post_entry stays the one place credits move; it now draws a
-- charge from the user's grants in burn-down order (recording allocations per job), gives
-- refunds back to the grants they came from, and expires what is due before anything else.
-- Lock order everywhere: job row, then the account, then that account's grants.

---------------------------------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------------------------------

-- Deployment settings admins edit in the dashboard (one row).
create table public.credit_settings (
  id boolean primary key default true check (id),
  -- credits refunded after their grant expired come back in a new grant that lasts this long
  refund_grace interval not null default interval '7 days' check (refund_grace >= interval '0')
);
insert into public.credit_settings default values;

create table public.credit_grants (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.credit_accounts (user_id) on delete cascade,
  amount bigint not null check (amount > 0),
  remaining bigint not null check (remaining >= 0),
  -- what left the grant other than by charges: expiry sweeps, revocations (chargebacks, admins)
  expired bigint not null default 0 check (expired >= 0),
  revoked bigint not null default 0 check (revoked >= 0),
  category text not null
    check (category in ('paid', 'subscription', 'promo', 'refund', 'adjustment')),
  -- burn-down order: lower priority first (0-100), see credit_jobs_internal.spendable_grants
  priority integer not null default 50 check (priority between 0 and 100),
  expires_at timestamptz,
  source text check (char_length(source) between 1 and 100),
  external_id text check (char_length(external_id) between 1 and 255),
  -- the payment behind a purchased grant, so a refund or dispute of it finds the grant
  payment_intent text check (char_length(payment_intent) between 1 and 255),
  -- a grant made of credits refunded after their own grant expired
  refund_of_job uuid,
  reason text not null check (char_length(reason) between 1 and 1000),
  revoked_at timestamptz,
  created_at timestamptz not null default now(),
  check (external_id is null or source is not null)
);
-- An external payment is granted at most once, whatever its webhooks do.
create unique index credit_grants_one_per_external_id on public.credit_grants (source, external_id)
  where external_id is not null;
create index credit_grants_spendable on public.credit_grants (user_id, priority, expires_at)
  where remaining > 0;
create index credit_grants_due on public.credit_grants (expires_at)
  where remaining > 0 and expires_at is not null;
create index credit_grants_payment on public.credit_grants (payment_intent)
  where payment_intent is not null;

-- Which grants paid for a job, in the order they were drawn (seq), and how much came back.
create table public.credit_allocations (
  job_id uuid not null,
  grant_id uuid not null references public.credit_grants (id) on delete cascade,
  seq integer not null check (seq >= 1),
  amount bigint not null check (amount > 0),
  returned bigint not null default 0 check (returned between 0 and amount),
  primary key (job_id, seq)
);
create index credit_allocations_grant on public.credit_allocations (grant_id);

-- The ledger says which grant an entry concerns (grant, expiry and revocation entries).
alter table public.credit_ledger add column grant_id uuid;
alter table public.credit_ledger drop constraint credit_ledger_entry_type_check;
alter table public.credit_ledger add constraint credit_ledger_entry_type_check
  check (entry_type in ('grant', 'charge', 'refund', 'adjustment', 'expiry'));
alter table public.credit_ledger add constraint credit_ledger_expiry_check
  check (entry_type <> 'expiry' or (amount < 0 and grant_id is not null));

-- Balances from before grants become one never-expiring adjustment grant each (the ledger
-- already has their entries).
insert into public.credit_grants (user_id, amount, remaining, category, reason)
select user_id, balance, balance, 'adjustment', 'balance before credit grants'
from public.credit_accounts
where balance > 0;

---------------------------------------------------------------------------------------------------
-- Internal helpers
---------------------------------------------------------------------------------------------------

create function credit_jobs_internal.grant_json(p_grant public.credit_grants) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'id', p_grant.id,
    'amount', p_grant.amount,
    'remaining', p_grant.remaining,
    'category', p_grant.category,
    'priority', p_grant.priority,
    'expires_at', p_grant.expires_at,
    'source', p_grant.source,
    'external_id', p_grant.external_id,
    'payment_intent', p_grant.payment_intent,
    'reason', p_grant.reason,
    'revoked_at', p_grant.revoked_at,
    'created_at', p_grant.created_at
  )
$$;

-- THE burn-down order: priority, then earliest expiry (never-expiring last), then oldest.
-- Only unexpired, unrevoked grants with credits left; locked, the account lock already held.
create function credit_jobs_internal.spendable_grants(p_user_id uuid)
returns setof public.credit_grants
language sql
set search_path = ''
as $$
  select * from public.credit_grants
  where user_id = p_user_id and remaining > 0 and revoked_at is null
    and (expires_at is null or expires_at > now())
  order by priority, expires_at nulls last, created_at, id
  for update
$$;

-- Writes one ledger entry and the balance; the caller holds the account lock.
create function credit_jobs_internal.write_entry(
  p_user_id uuid,
  p_job_id uuid,
  p_entry_type text,
  p_amount bigint,
  p_reason text,
  p_grant_id uuid default null
) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_balance bigint;
begin
  update public.credit_accounts
  set balance = balance + p_amount, updated_at = now()
  where user_id = p_user_id
  returning balance into v_balance;
  insert into public.credit_ledger
    (user_id, job_id, entry_type, amount, balance_after, reason, grant_id)
  values (p_user_id, p_job_id, p_entry_type, p_amount, v_balance, p_reason, p_grant_id);
  return v_balance;
end;
$$;

-- Locks the account and expires its due grants first, so the balance it returns is exactly the
-- sum of unexpired grants' remaining: an expired grant is never spent, even between sweeps.
create function credit_jobs_internal.lock_account(p_user_id uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_balance bigint;
  v_grant public.credit_grants;
begin
  select balance into v_balance from public.credit_accounts where user_id = p_user_id for update;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
  end if;
  for v_grant in
    select * from public.credit_grants
    where user_id = p_user_id and remaining > 0 and expires_at <= now()
    order by expires_at, id
    for update
  loop
    update public.credit_grants
    set expired = expired + remaining, remaining = 0
    where id = v_grant.id;
    v_balance := credit_jobs_internal.write_entry(
      p_user_id, null, 'expiry', -v_grant.remaining,
      format('%s grant expired at %s', v_grant.category, v_grant.expires_at), v_grant.id);
  end loop;
  return v_balance;
end;
$$;

-- Takes p_amount from the spendable grants in burn-down order. With a job the draws are
-- recorded as its allocations (to give back later); without one they are revocations.
create function credit_jobs_internal.draw(p_user_id uuid, p_job_id uuid, p_amount bigint)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_grant public.credit_grants;
  v_left bigint := p_amount;
  v_take bigint;
  v_seq integer := 0;
begin
  for v_grant in select * from credit_jobs_internal.spendable_grants(p_user_id) loop
    exit when v_left = 0;
    v_take := least(v_left, v_grant.remaining);
    if p_job_id is null then
      update public.credit_grants
      set remaining = remaining - v_take, revoked = revoked + v_take
      where id = v_grant.id;
    else
      update public.credit_grants set remaining = remaining - v_take where id = v_grant.id;
      v_seq := v_seq + 1;
      insert into public.credit_allocations (job_id, grant_id, seq, amount)
      values (p_job_id, v_grant.id, v_seq, v_take);
    end if;
    v_left := v_left - v_take;
  end loop;
  if v_left > 0 then
    -- the balance said there was enough: only a grant table edited by hand gets here
    perform credit_jobs_internal.raise_error('CJ001',
      format('insufficient credits: grants of user %s hold %s less than needed', p_user_id, v_left));
  end if;
end;
$$;

-- Gives p_amount of a job's charge back, latest-drawn first (so a partial capture keeps the
-- credits drawn first). To a grant that is live again; as a new `refund` grant lasting
-- credit_settings.refund_grace when the grant expired meanwhile; and to a revoked grant only
-- to be revoked at once (its payment went back to the payer). Returns what was revoked.
create function credit_jobs_internal.give_back(p_user_id uuid, p_job_id uuid, p_amount bigint)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_alloc public.credit_allocations;
  v_grant public.credit_grants;
  v_left bigint := p_amount;
  v_take bigint;
  v_expired bigint := 0;
  v_revoked bigint := 0;
  v_priority integer := 50;
begin
  for v_alloc in
    select * from public.credit_allocations
    where job_id = p_job_id and returned < amount
    order by seq desc
    for update
  loop
    exit when v_left = 0;
    v_take := least(v_left, v_alloc.amount - v_alloc.returned);
    update public.credit_allocations set returned = returned + v_take
    where job_id = v_alloc.job_id and seq = v_alloc.seq;
    select * into v_grant from public.credit_grants where id = v_alloc.grant_id for update;
    if v_grant.revoked_at is not null then
      update public.credit_grants set revoked = revoked + v_take where id = v_grant.id;
      v_revoked := v_revoked + v_take;
    elsif v_grant.expires_at <= now() then
      v_expired := v_expired + v_take;
      v_priority := v_grant.priority;
    else
      update public.credit_grants set remaining = remaining + v_take where id = v_grant.id;
    end if;
    v_left := v_left - v_take;
  end loop;
  -- jobs charged before grants existed have no allocations: their refund is a new grant too
  v_expired := v_expired + v_left;
  if v_expired > 0 then
    insert into public.credit_grants
      (user_id, amount, remaining, category, priority, expires_at, refund_of_job, reason)
    select p_user_id, v_expired, v_expired, 'refund', v_priority,
           case when v_left = v_expired then null else now() + s.refund_grace end,
           p_job_id, format('refund of job %s, whose credits had expired', p_job_id)
    from public.credit_settings s;
  end if;
  return v_revoked;
end;
$$;

-- Moves credits on one account and writes the matching ledger entry, keeping balance_after;
-- the caller holds the job lock (when there is a job). charge: drawn from grants; refund: given
-- back to them; grant (admins): a new never-expiring adjustment grant; adjustment < 0 (admins):
-- revoked from grants in burn-down order. Never below zero (CJ001).
create or replace function credit_jobs_internal.post_entry(
  p_user_id uuid,
  p_job_id uuid,
  p_entry_type text,
  p_amount bigint,
  p_reason text
) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_balance bigint;
  v_grant_id uuid;
  v_revoked bigint;
begin
  -- lock: the account (expiring what is due), then its grants
  v_balance := credit_jobs_internal.lock_account(p_user_id);
  if v_balance + p_amount < 0 then
    perform credit_jobs_internal.raise_error('CJ001',
      format('insufficient credits: balance %s, needs %s', v_balance, -p_amount));
  end if;
  -- write
  if p_amount < 0 then
    perform credit_jobs_internal.draw(
      p_user_id, case when p_entry_type = 'charge' then p_job_id end, -p_amount);
  elsif p_entry_type = 'refund' then
    v_revoked := credit_jobs_internal.give_back(p_user_id, p_job_id, p_amount);
  else
    insert into public.credit_grants (user_id, amount, remaining, category, reason)
    values (p_user_id, p_amount, p_amount, 'adjustment', p_reason)
    returning id into v_grant_id;
  end if;
  v_balance := credit_jobs_internal.write_entry(
    p_user_id, p_job_id, p_entry_type, p_amount, p_reason, v_grant_id);
  if v_revoked > 0 then
    v_balance := credit_jobs_internal.write_entry(
      p_user_id, p_job_id, 'adjustment', -v_revoked,
      format('refund of job %s went back to a revoked grant', p_job_id));
  end if;
  return v_balance;
end;
$$;

-- Takes what is left of a locked grant (the account lock held); returns the credits taken.
create function credit_jobs_internal.revoke_locked_grant(p_grant public.credit_grants, p_reason text)
returns bigint
language plpgsql
set search_path = ''
as $$
begin
  update public.credit_grants
  set revoked = revoked + remaining, remaining = 0, revoked_at = now()
  where id = p_grant.id;
  if p_grant.remaining > 0 then
    perform credit_jobs_internal.write_entry(
      p_grant.user_id, null, 'adjustment', -p_grant.remaining,
      format('grant revoked: %s', p_reason), p_grant.id);
  end if;
  return p_grant.remaining;
end;
$$;

---------------------------------------------------------------------------------------------------
-- Public functions
---------------------------------------------------------------------------------------------------

create function public.grant_credits(
  p_user_id uuid,
  p_amount bigint,
  p_reason text,
  p_category text default 'adjustment',
  p_expires_at timestamptz default null,
  p_priority integer default 50,
  p_source text default null,
  p_external_id text default null,
  p_payment_intent text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_grant public.credit_grants;
  v_balance bigint;
begin
  -- validate
  if p_user_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'user_id is required');
  end if;
  if p_amount is null or p_amount <= 0 then
    perform credit_jobs_internal.raise_error('CJ007', 'amount must be a positive integer');
  end if;
  if p_reason is null or char_length(btrim(p_reason)) not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'a reason (1 to 1000 characters) is required');
  end if;
  if p_category is null or p_category not in ('paid', 'subscription', 'promo', 'refund', 'adjustment') then
    perform credit_jobs_internal.raise_error('CJ007',
      'category must be one of paid, subscription, promo, refund, adjustment');
  end if;
  if p_priority is null or p_priority not between 0 and 100 then
    perform credit_jobs_internal.raise_error('CJ007', 'priority must be between 0 and 100');
  end if;
  if p_expires_at is not null and p_expires_at <= now() then
    perform credit_jobs_internal.raise_error('CJ007', 'expires_at must be in the future');
  end if;
  if p_external_id is not null and p_source is null then
    perform credit_jobs_internal.raise_error('CJ007', 'an external_id needs its source');
  end if;
  -- lock: the account (expiring what is due), so a replay check and the grant are one step
  v_balance := credit_jobs_internal.lock_account(p_user_id);
  -- replay: the same external payment returns its first grant
  if p_external_id is not null then
    select * into v_grant from public.credit_grants
    where source = p_source and external_id = p_external_id;
    if found then
      return jsonb_build_object('grant', credit_jobs_internal.grant_json(v_grant),
        'balance', v_balance, 'outcome', 'duplicate');
    end if;
  end if;
  -- write
  insert into public.credit_grants (user_id, amount, remaining, category, priority, expires_at,
    source, external_id, payment_intent, reason)
  values (p_user_id, p_amount, p_amount, p_category, p_priority, p_expires_at, p_source,
    p_external_id, p_payment_intent, btrim(p_reason))
  returning * into v_grant;
  v_balance := credit_jobs_internal.write_entry(
    p_user_id, null, 'grant', p_amount, btrim(p_reason), v_grant.id);
  return jsonb_build_object('grant', credit_jobs_internal.grant_json(v_grant),
    'balance', v_balance, 'outcome', 'applied');
end;
$$;

create function public.revoke_grant(p_grant_id uuid, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user_id uuid;
  v_grant public.credit_grants;
  v_balance bigint;
  v_revoked bigint := 0;
begin
  -- validate
  if p_reason is null or char_length(btrim(p_reason)) not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'a reason (1 to 1000 characters) is required');
  end if;
  select user_id into v_user_id from public.credit_grants where id = p_grant_id;
  if not found then
    perform credit_jobs_internal.raise_error('CJ003', format('grant %s not found', p_grant_id));
  end if;
  -- lock: the account (expiring what is due), then the grant
  v_balance := credit_jobs_internal.lock_account(v_user_id);
  select * into v_grant from public.credit_grants where id = p_grant_id for update;
  -- write: at most what is left; what was already spent is the shortfall
  if v_grant.revoked_at is null then
    v_revoked := credit_jobs_internal.revoke_locked_grant(v_grant, btrim(p_reason));
    select * into v_grant from public.credit_grants where id = p_grant_id;
    select balance into v_balance from public.credit_accounts where user_id = v_user_id;
  end if;
  return jsonb_build_object(
    'grant', credit_jobs_internal.grant_json(v_grant),
    'revoked', v_revoked,
    'shortfall', v_grant.amount - v_grant.expired - v_grant.revoked,
    'balance', v_balance,
    'outcome', case when v_revoked > 0 or v_grant.revoked_at = now() then 'applied' else 'duplicate' end);
end;
$$;

-- Sweeps due grants in batches: accounts nobody holds (SKIP LOCKED), in user order.
-- Returns {expired_grants, credits}. Money functions expire a user's due grants themselves, so
-- this only keeps balances of idle accounts current.
create function public.expire_credits(p_limit integer default 100) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user_id uuid;
  v_before bigint;
  v_after bigint;
  v_grants integer := 0;
  v_credits bigint := 0;
  v_count integer;
begin
  -- validate
  if p_limit is null or p_limit not between 1 and 10000 then
    perform credit_jobs_internal.raise_error('CJ007', 'limit must be between 1 and 10000');
  end if;
  -- lock: accounts with due grants that no one else holds, in user order
  for v_user_id in
    select a.user_id from public.credit_accounts a
    where a.user_id in (
      select g.user_id from public.credit_grants g
      where g.remaining > 0 and g.expires_at <= now()
      order by g.expires_at
      limit p_limit)
    order by a.user_id
    for update of a skip locked
  loop
    select count(*) into v_count from public.credit_grants
    where user_id = v_user_id and remaining > 0 and expires_at <= now();
    select balance into v_before from public.credit_accounts where user_id = v_user_id;
    -- write
    v_after := credit_jobs_internal.lock_account(v_user_id);
    v_grants := v_grants + v_count;
    v_credits := v_credits + v_before - v_after;
  end loop;
  return jsonb_build_object('expired_grants', v_grants, 'credits', v_credits);
end;
$$;

-- A positive amount adds a never-expiring adjustment grant; a negative one revokes from the
-- grants in burn-down order (never below zero). Same signature and answer as before.
create or replace function public.admin_grant_credits(
  p_user_id uuid,
  p_amount bigint,
  p_reason text
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
begin
  -- validate
  if p_user_id is null then
    perform credit_jobs_internal.raise_error('CJ007', 'user_id is required');
  end if;
  if p_amount is null or p_amount = 0 then
    perform credit_jobs_internal.raise_error('CJ007', 'amount must be a non-zero integer');
  end if;
  if p_reason is null or char_length(btrim(p_reason)) not between 1 and 1000 then
    perform credit_jobs_internal.raise_error('CJ007', 'a reason is required for the audit trail');
  end if;
  -- lock + write (post_entry refuses to go below zero)
  v_balance := credit_jobs_internal.post_entry(
    p_user_id, null, case when p_amount > 0 then 'grant' else 'adjustment' end, p_amount,
    btrim(p_reason));
  return jsonb_build_object('user_id', p_user_id, 'balance', v_balance, 'outcome', 'applied');
end;
$$;

-- GET /credits: the balance (after expiring what is due), the unexpired grants, what expires
-- next, and a page of the ledger. Writes only when one of the user's grants is due.
drop function public.get_credits(uuid, integer, text);
create function public.get_credits(
  p_user_id uuid,
  p_limit integer default 20,
  p_cursor text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
  v_before_id bigint := 9223372036854775807;  -- first page: below no id
  v_rows public.credit_ledger[];
begin
  -- validate
  perform credit_jobs_internal.check_page_size(p_limit);
  if p_cursor is not null then
    if p_cursor !~ '^[1-9][0-9]{0,17}$' then
      perform credit_jobs_internal.raise_error('CJ007', 'invalid cursor');
    end if;
    v_before_id := p_cursor::bigint;
  end if;
  if exists (select from public.credit_grants
             where user_id = p_user_id and remaining > 0 and expires_at <= now()) then
    v_balance := credit_jobs_internal.lock_account(p_user_id);
  else
    select balance into v_balance from public.credit_accounts where user_id = p_user_id;
    if not found then
      perform credit_jobs_internal.raise_error('CJ003', format('no credit account for user %s', p_user_id));
    end if;
  end if;
  -- read (credit_ledger_user_history, credit_grants_spendable)
  v_rows := array(
    select l from public.credit_ledger l
    where l.user_id = p_user_id and l.id < v_before_id
    order by l.id desc
    limit p_limit + 1);
  return jsonb_build_object(
    'balance', v_balance,
    'grants', coalesce(
      (select jsonb_agg(credit_jobs_internal.grant_json(g)
                        order by g.priority, g.expires_at nulls last, g.created_at, g.id)
       from public.credit_grants g
       where g.user_id = p_user_id and g.remaining > 0),
      '[]'::jsonb),
    'next_expiry', (
      select jsonb_build_object('expires_at', g.expires_at, 'credits', sum(g.remaining))
      from public.credit_grants g
      where g.user_id = p_user_id and g.remaining > 0 and g.expires_at is not null
      group by g.expires_at
      order by g.expires_at
      limit 1),
    'entries', coalesce(
      (select jsonb_agg(jsonb_build_object(
         'id', (v_rows[i]).id, 'job_id', (v_rows[i]).job_id,
         'entry_type', (v_rows[i]).entry_type, 'amount', (v_rows[i]).amount,
         'balance_after', (v_rows[i]).balance_after, 'reason', (v_rows[i]).reason,
         'created_at', (v_rows[i]).created_at)
         order by i)
       from generate_series(1, least(cardinality(v_rows), p_limit)) i),
      '[]'::jsonb),
    'next_cursor', case when cardinality(v_rows) > p_limit then (v_rows[p_limit]).id::text end);
end;
$$;

---------------------------------------------------------------------------------------------------
-- Views for admins
---------------------------------------------------------------------------------------------------

-- Accounts whose balance disagrees with the ledger or with their grants (always empty). Grants
-- that are due but not swept yet still count: the next money function or sweep expires them.
create or replace view public.credit_discrepancies with (security_invoker = true) as
select a.user_id, a.balance, coalesce(l.ledger_sum, 0) as ledger_sum,
       a.balance - coalesce(l.ledger_sum, 0) as difference,
       coalesce(g.grants_remaining, 0) as grants_remaining
from public.credit_accounts a
left join (
  select user_id, sum(amount) as ledger_sum from public.credit_ledger group by user_id
) l on l.user_id = a.user_id
left join (
  select user_id, sum(remaining) as grants_remaining from public.credit_grants group by user_id
) g on g.user_id = a.user_id
where a.balance <> coalesce(l.ledger_sum, 0) or a.balance <> coalesce(g.grants_remaining, 0);

-- Grants that expire in the next 7 days, for admins ("what expires this week").
create view public.expiring_grants with (security_invoker = true) as
select g.id, g.user_id, g.category, g.remaining, g.expires_at, g.source, g.external_id, g.reason
from public.credit_grants g
where g.remaining > 0 and g.expires_at between now() and now() + interval '7 days'
order by g.expires_at;

---------------------------------------------------------------------------------------------------
-- Security: RLS, grants
---------------------------------------------------------------------------------------------------

alter table public.credit_settings enable row level security;
alter table public.credit_grants enable row level security;
alter table public.credit_allocations enable row level security;
create policy "users read their own grants" on public.credit_grants
  for select to authenticated using (user_id = (select auth.uid()));
revoke all on public.credit_settings, public.credit_grants, public.credit_allocations,
  public.expiring_grants from anon, authenticated;
grant select on public.credit_grants to authenticated;
grant select on public.credit_settings, public.credit_grants, public.credit_allocations,
  public.expiring_grants to service_role;
grant update (refund_grace) on public.credit_settings to service_role;

revoke all on all functions in schema credit_jobs_internal from public, anon, authenticated, service_role;
revoke execute on function
  public.grant_credits(uuid, bigint, text, text, timestamptz, integer, text, text, text),
  public.revoke_grant(uuid, text),
  public.expire_credits(integer),
  public.get_credits(uuid, integer, text)
  from public, anon, authenticated;
grant execute on function
  public.grant_credits(uuid, bigint, text, text, timestamptz, integer, text, text, text),
  public.revoke_grant(uuid, text),
  public.expire_credits(integer),
  public.get_credits(uuid, integer, text)
  to service_role;

-- pg_cron, where 20261122120000 could create it, sweeps due grants every minute as well.
do $$
begin
  if exists (select from pg_extension where extname = 'pg_cron') then
    perform cron.schedule(
      'credit-jobs-expire-credits', '* * * * *', 'select public.expire_credits()');
  end if;
end
$$;
