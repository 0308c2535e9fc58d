-- grant_credits: the replay check runs under the account lock, which serialises one user's
-- deliveries; the same external payment granted at the same moment to two accounts met the
-- unique index instead (a unique violation, HTTP 500). Now the second one is a duplicate.

create or replace function public.grant_credits(
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
  -- write; the same payment granted at this moment to another account (its own lock) waits
  -- here on the unique index and then answers duplicate, never a unique violation
  insert into public.credit_grants (user_id, amount, remaining, category, priority, expires_at,
    source, external_id, payment_intent, reason)
  values (p_user_id, p_amount, p_amount, p_category, p_priority, p_expires_at, p_source,
    p_external_id, p_payment_intent, btrim(p_reason))
  on conflict (source, external_id) where external_id is not null do nothing
  returning * into v_grant;
  if v_grant.id is null then
    select * into v_grant from public.credit_grants
    where source = p_source and external_id = p_external_id;
    return jsonb_build_object('grant', credit_jobs_internal.grant_json(v_grant),
      'balance', v_balance, 'outcome', 'duplicate');
  end if;
  v_balance := credit_jobs_internal.write_entry(
    p_user_id, null, 'grant', p_amount, btrim(p_reason), v_grant.id);
  return jsonb_build_object('grant', credit_jobs_internal.grant_json(v_grant),
    'balance', v_balance, 'outcome', 'applied');
end;
$$;
