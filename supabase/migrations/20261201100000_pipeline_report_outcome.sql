-- apply_pipeline_report says what a report did once: `refunded` when it ended the job failed and
-- refunded it, where it said `applied` and left the caller to read that from the job's status.
-- `applied` (any other change) and `duplicate` are as before (docs/http-api.md). The body is
-- 20261122110000_api_reads.sql's but for the outcome; create or replace keeps its grants.
create or replace function public.apply_pipeline_report(
  p_job_id uuid,
  p_attempt integer,
  p_status text,
  p_progress double precision default null,
  p_result jsonb default null,
  p_error text default null,
  p_credits_used integer default null,
  p_retryable boolean default false
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_report jsonb;
begin
  -- validate
  if p_status is null or p_status not in ('processing', 'completed', 'failed') then
    perform credit_jobs_internal.raise_error('CJ007',
      'status must be processing, completed or failed');
  end if;
  -- lock + fence (the functions below take the same lock again, harmlessly, and end attempts
  -- that are over)
  v_job := credit_jobs_internal.lock_job_for_report(p_job_id, p_attempt);
  -- progress that arrives after this attempt's own end changes nothing
  if p_status = 'processing' and v_job.status in ('completed', 'failed') then
    return jsonb_build_object('job', credit_jobs_internal.job_json(v_job), 'outcome', 'duplicate');
  end if;
  -- write
  v_report := case p_status
    when 'processing' then public.heartbeat_job(p_job_id, p_attempt, p_progress)
    when 'completed' then public.complete_job(p_job_id, p_attempt, p_result, p_credits_used)
    else public.fail_job(p_job_id, p_attempt, p_error, coalesce(p_retryable, false))
  end;
  -- fail_job's `retried` stays `applied`: the job is pending again, as its status says
  return jsonb_build_object(
    'job', v_report -> 'job',
    'outcome', case when v_report ->> 'outcome' in ('duplicate', 'refunded')
                    then v_report ->> 'outcome' else 'applied' end);
end;
$$;
