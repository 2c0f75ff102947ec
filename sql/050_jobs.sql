-- Job outcomes: retries with backoff and jitter, waits that spend no attempt, and moves to the DLQ.
--
-- wahook decides what happens after a failed attempt, not graphile-worker: a failing task calls
-- wahook.job_failed() in one transaction that replaces the job (retry at a chosen time, or wait) or removes it and
-- writes its DLQ row. The task then returns normally, and graphile-worker's own completion finds nothing left to
-- do. This touches graphile-worker's private tables (_private_jobs, _private_job_queues) of the version wahook
-- pins (0.17); the tests cover every path, so an upgrade that changes them fails loudly.

-- Error classes (what a task or handler throws; see docs/RETRIES.md):
--   transient  retry with backoff until the attempt budget is spent, then DLQ
--   permanent  DLQ at once, no retries
--   wait       run again later without spending an attempt (rate limits, an open circuit breaker, ordering)
--   crashed    the worker died during the attempt (found by wahook.sweep); counts as a transient failure

create or replace function wahook.max_attempts(p_task text) returns integer
language sql stable parallel safe
as $$
  select greatest(1, (wahook.setting(p_task || '.max_attempts', '10') #>> '{}')::integer)
$$;

-- Delay before the next attempt after p_attempts attempts: base * 2^(attempts - 1), capped, then "equal jitter"
-- (a uniformly random 50-100 % of it) so that jobs failing together do not retry together.
create or replace function wahook.retry_delay(p_attempts integer) returns interval
language sql volatile parallel safe
as $$
  select least(
           wahook.setting_interval('retry.max_delay', interval '1 hour'),
           wahook.setting_interval('retry.base_delay', interval '2 seconds')
             * power(2, least(greatest(p_attempts, 1) - 1, 30))
         ) * (0.5 + pg_catalog.random() * 0.5)
$$;

-- The session advisory lock a running task holds on its job (see src/worker/jobs.ts). The sweeper takes it to
-- learn whether the worker that locked the job is still alive.
create or replace function wahook.job_lock_key(p_job_id bigint) returns integer
language sql immutable parallel safe
as $$
  select (p_job_id % 2147483647)::integer
$$;

create or replace function wahook.job_lock_class() returns integer
language sql immutable parallel safe
as $$
  select 1463895883  -- 'WAHK'
$$;

-- Start an attempt of job p_job_id on this connection: take the job's session advisory lock (held until
-- wahook.end_attempt; the sweeper reads a free lock on a locked job as a dead worker), then check the job is
-- still there: the sweeper may have moved it while this waited for the lock (a new statement, a new snapshot).
create or replace function wahook.begin_attempt(p_job_id bigint) returns boolean
language plpgsql volatile
as $$
begin
  perform pg_catalog.pg_advisory_lock(wahook.job_lock_class(), wahook.job_lock_key(p_job_id));
  return exists (select from graphile_worker._private_jobs as j where j.id = p_job_id);
end;
$$;

create or replace function wahook.end_attempt(p_job_id bigint) returns boolean
language sql volatile
as $$
  select pg_catalog.pg_advisory_unlock(wahook.job_lock_class(), wahook.job_lock_key(p_job_id))
$$;

-- Put a job back in the queue to run at p_run_at with p_attempts attempts spent: delete the row, free its named
-- queue, add a new row with the same task, payload, queue and budget. Returns the new job's id.
drop function if exists wahook.requeue_job(bigint, timestamptz, integer, text);
create or replace function wahook.requeue_job(
  p_job_id bigint, p_run_at timestamptz, p_attempts integer, p_error text, p_payload json default null
) returns bigint
language plpgsql volatile
as $$
declare
  v_job record;
  v_new bigint;
begin
  delete from graphile_worker._private_jobs as j
   where j.id = p_job_id
  returning j.*, (select t.identifier from graphile_worker._private_tasks as t where t.id = j.task_id) as task,
            (select q.queue_name from graphile_worker._private_job_queues as q where q.id = j.job_queue_id) as queue_name
  into v_job;
  if not found then
    return null;
  end if;
  if v_job.job_queue_id is not null then
    update graphile_worker._private_job_queues set locked_by = null, locked_at = null where id = v_job.job_queue_id;
  end if;
  select j.id into v_new
    from graphile_worker.add_jobs(array[
      row(v_job.task, coalesce(p_payload, v_job.payload), v_job.queue_name, p_run_at, v_job.max_attempts, null, v_job.priority, null)::graphile_worker.job_spec
    ]) as j;
  update graphile_worker._private_jobs
     set attempts = greatest(p_attempts, 0), last_error = left(p_error, 4000)
   where id = v_new;
  return v_new;
end;
$$;

-- Remove a job for good (it moved to the DLQ), freeing its named queue.
create or replace function wahook.remove_job(p_job_id bigint) returns boolean
language plpgsql volatile
as $$
declare
  v_queue integer;
begin
  delete from graphile_worker._private_jobs where id = p_job_id returning job_queue_id into v_queue;
  if not found then
    return false;
  end if;
  if v_queue is not null then
    update graphile_worker._private_job_queues set locked_by = null, locked_at = null where id = v_queue;
  end if;
  return true;
end;
$$;

-- Record a failed attempt of job p_job_id and decide what happens next. One transaction: the job is requeued,
-- or removed and dead-lettered; the event (for process_wa_event) shows the outcome.
-- Returns: outcome ('retry' | 'wait' | 'dead_lettered' | 'dlq_retry_failed' | 'dlq_exhausted' | 'gone' |
-- 'finished'), when it runs next (null when it does not), and the DLQ entry's id when there is one.
-- 'finished': a crashed job whose work had already committed (the worker died, or could not reach the database,
-- between the attempt's commit and graphile-worker deleting the job row). It is removed, not run again.
create or replace function wahook.job_failed(
  p_job_id bigint,
  p_class text,
  p_error text,
  p_code text default null,
  p_delay interval default null,
  p_now timestamptz default pg_catalog.now()
) returns table (outcome text, next_run_at timestamptz, dlq_id bigint)
language plpgsql volatile
as $$
declare
  v_job record;
  v_event wahook.wa_events;
  v_has_event boolean := false;
  v_dlq_id bigint;
  v_next timestamptz;
  v_schedule jsonb := wahook.setting('dlq.schedule', '["5 minutes", "15 minutes", "1 hour", "4 hours", "12 hours"]');
  v_entry wahook.webhook_dlq;
  v_first timestamptz;
  v_payload json;
  v_outcome text;
  v_error text := left(p_error, 4000);
  v_error_class text := case when p_class in ('crashed', 'permanent') then p_class else 'transient' end;
begin
  if p_class not in ('transient', 'permanent', 'wait', 'crashed') then
    raise exception using errcode = 'WH003',
      message = pg_catalog.format('wahook.job_failed: unknown error class %L (transient, permanent, wait, crashed)', p_class);
  end if;

  select j.*, t.identifier as task, q.queue_name
    into v_job
    from graphile_worker._private_jobs as j
    join graphile_worker._private_tasks as t on t.id = j.task_id
    left join graphile_worker._private_job_queues as q on q.id = j.job_queue_id
   where j.id = p_job_id
     for update of j;
  if not found then
    return query select 'gone'::text, null::timestamptz, null::bigint;
    return;
  end if;

  -- When this job first failed travels in its payload across requeues; the DLQ keeps the original payload.
  v_first := coalesce((v_job.payload ->> 'first_failed_at')::timestamptz, p_now);
  v_payload := (v_job.payload::jsonb || pg_catalog.jsonb_build_object('first_failed_at', v_first))::json;

  if v_job.task = 'process_wa_event' then
    select * into v_event from wahook.wa_events
     where id = (v_job.payload ->> 'id')::bigint and received_at = (v_job.payload ->> 'at')::timestamptz;
    v_has_event := found;
  end if;

  -- A crashed attempt whose work committed (the event is finished, the message was accepted by the Graph API):
  -- nothing to retry, and a DLQ retry's entry was already resolved in that transaction.
  if p_class = 'crashed' and (
       (v_has_event and v_event.state in ('done', 'discarded'))
       or (v_job.task = 'send_whatsapp_message' and exists (
             select from wahook.whatsapp_messages as m
              where m.id = (v_job.payload ->> 'id')::bigint and m.wamid is not null))) then
    perform wahook.remove_job(p_job_id);
    return query select 'finished'::text, null::timestamptz, null::bigint;
    return;
  end if;

  -- Wait: run again later; the attempt does not count (nor, for a DLQ retry, its DLQ attempt).
  if p_class = 'wait' then
    v_next := p_now + coalesce(p_delay, interval '30 seconds');
    perform wahook.requeue_job(p_job_id, v_next, v_job.attempts - 1, p_error);
    if v_has_event then
      update wahook.wa_events
         set state = case when state = 'dead' then 'dead' when attempts <= 1 then 'pending' else 'retrying' end,
             attempts = greatest(attempts - 1, 0), next_attempt_at = v_next, updated_at = p_now
       where id = v_event.id and received_at = v_event.received_at;
    end if;
    return query select 'wait'::text, v_next, null::bigint;
    return;
  end if;

  -- Transient with attempts left (never for a DLQ retry: its budget is one): retry after the backoff.
  if p_class <> 'permanent' and v_job.attempts < v_job.max_attempts and not v_job.payload::jsonb ? 'dlq_id' then
    v_next := p_now + coalesce(p_delay, wahook.retry_delay(v_job.attempts));
    perform wahook.requeue_job(p_job_id, v_next, v_job.attempts, p_error, v_payload);
    if v_has_event then
      update wahook.wa_events
         set state = 'retrying', last_error = v_error, next_attempt_at = v_next, updated_at = p_now
       where id = v_event.id and received_at = v_event.received_at;
    end if;
    return query select 'retry'::text, v_next, null::bigint;
    return;
  end if;

  -- Otherwise the job leaves the queue for the DLQ, in this transaction.
  perform wahook.remove_job(p_job_id);
  if v_job.payload::jsonb ? 'dlq_id' then
    -- An automatic DLQ retry failed: back to its entry, with the next time on the schedule or exhausted.
    v_dlq_id := (v_job.payload ->> 'dlq_id')::bigint;
    select * into v_entry from wahook.webhook_dlq where id = v_dlq_id for update;
    v_next := case
      when p_class = 'permanent' or v_entry.dlq_attempts >= pg_catalog.jsonb_array_length(v_schedule) then null
      else p_now + (v_schedule ->> v_entry.dlq_attempts)::interval
    end;
    update wahook.webhook_dlq
       set status = case when v_next is null then 'exhausted' else 'pending' end,
           next_retry_at = v_next, error_class = v_error_class, error_code = p_code, last_error = v_error,
           last_failed_at = p_now, updated_at = p_now
     where id = v_dlq_id;
    insert into wahook.dlq_processing_log (kind, dlq_id, started_at, finished_at, outcome, error, details)
    values ('entry', v_dlq_id, p_now, pg_catalog.clock_timestamp(),
            case when v_next is null then 'exhausted' else 'failed' end, v_error,
            pg_catalog.jsonb_build_object('dlq_attempt', v_entry.dlq_attempts, 'error_code', p_code, 'next_retry_at', v_next));
    v_outcome := case when v_next is null then 'dlq_exhausted' else 'dlq_retry_failed' end;
  else
    -- Permanent, or out of attempts: a new entry.
    v_next := case
      when p_class <> 'permanent' and (wahook.setting('dlq.auto_retry', 'true'))::boolean
      then p_now + (v_schedule ->> 0)::interval
    end;
    insert into wahook.webhook_dlq
      (task, payload, queue_name, event_id, event_received_at, kind, phone_number_id, wa_id, attempts,
       error_class, error_code, last_error, first_failed_at, last_failed_at, dead_lettered_at, next_retry_at,
       overtaken_by, replay_of)
    values
      (v_job.task, v_job.payload::jsonb - '{replay_of,first_failed_at,dlq_id}'::text[], v_job.queue_name, v_event.id,
       v_event.received_at, v_event.kind, v_event.phone_number_id, v_event.wa_id, v_job.attempts,
       v_error_class, p_code, v_error, v_first, p_now, p_now, v_next,
       case when v_has_event and v_event.kind = 'message' then (
         select pg_catalog.count(*)::integer from wahook.wa_events as later
          where later.kind = 'message' and later.phone_number_id is not distinct from v_event.phone_number_id
            and later.wa_id = v_event.wa_id and later.id > v_event.id
            and later.received_at >= v_event.received_at
            and later.state in ('pending', 'processing', 'retrying', 'done'))
       else 0 end,
       (v_job.payload ->> 'replay_of')::bigint)
    returning id into v_dlq_id;
    v_outcome := 'dead_lettered';
  end if;
  if v_has_event then
    update wahook.wa_events set state = 'dead', last_error = v_error, next_attempt_at = null, updated_at = p_now
     where id = v_event.id and received_at = v_event.received_at;
  end if;
  if v_next is not null then
    perform wahook.schedule_dlq_retry(v_dlq_id, v_next);
  end if;
  return query select v_outcome, v_next, v_dlq_id;
end;
$$;

-- Jobs a crash left behind, moved on: a wahook job locked longer than the grace period whose worker no longer
-- holds its advisory lock (the worker died mid-attempt) counts as a failed attempt ('crashed': retried, or
-- dead-lettered on its last attempt); a job graphile-worker itself gave up on (attempts = max_attempts, unlocked)
-- goes to the DLQ. p_now is only the clock the lock ages are read against (tests move it forward to skip the
-- grace period); what the sweeper schedules is in real time. Returns one row per job it moved.
create or replace function wahook.sweep(p_now timestamptz default pg_catalog.now())
returns table (job_id bigint, task text, outcome text, dlq_id bigint)
language plpgsql volatile
as $$
declare
  v_job record;
  v_grace interval := wahook.setting_interval('sweeper.grace', interval '30 seconds');
  v_result record;
begin
  for v_job in
    select j.id, t.identifier as task, j.locked_at, j.attempts, j.max_attempts, j.last_error
      from graphile_worker._private_jobs as j
      join graphile_worker._private_tasks as t on t.id = j.task_id
     where t.identifier in ('process_wa_event', 'send_whatsapp_message')
       and ((j.locked_at is not null and j.locked_at < p_now - v_grace)
            or (j.locked_at is null and j.attempts >= j.max_attempts))
     order by j.id
     for update of j skip locked
  loop
    if v_job.locked_at is not null then
      -- Still running if its worker holds the lock. Taken until commit: a task that starts meanwhile waits for it,
      -- then finds its job gone and does nothing (src/worker/jobs.ts).
      if not pg_catalog.pg_try_advisory_xact_lock(wahook.job_lock_class(), wahook.job_lock_key(v_job.id)) then
        continue;
      end if;
      select * into v_result from wahook.job_failed(v_job.id, 'crashed', 'the worker stopped during this attempt (found by the sweeper)', 'WORKER_LOST');
    else
      select * into v_result from wahook.job_failed(v_job.id, 'transient',
        coalesce('graphile-worker gave up: ' || v_job.last_error, 'graphile-worker gave up'), 'ATTEMPTS_EXHAUSTED');
    end if;
    job_id := v_job.id;
    task := v_job.task;
    outcome := v_result.outcome;
    dlq_id := v_result.dlq_id;
    return next;
  end loop;
end;
$$;
