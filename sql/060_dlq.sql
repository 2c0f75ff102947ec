-- The dead-letter queue: automatic retries on the DLQ schedule, replay, discard, the processor run by the
-- crontab, the accounting that proves nothing was lost, and the audit trail.
--
-- Entry status:  pending   waiting for its next automatic retry (next_retry_at), or for an operator when null
--                retrying  a retry job is queued or running
--                exhausted the automatic retries are used up; an operator replays or discards it
--                resolved  a retry succeeded
--                replayed  an operator put it back into the normal pipeline (a new failure makes a new entry)
--                discarded an operator gave up on it, with a reason

-- Schedule the exact-time retry of a DLQ entry (the 5-minute processor catches any that slip).
create or replace function wahook.schedule_dlq_retry(p_dlq_id bigint, p_run_at timestamptz) returns void
language sql volatile
as $$
  select graphile_worker.add_job(
    'wahook_dlq_retry',
    pg_catalog.json_build_object('dlq_id', p_dlq_id),
    run_at => p_run_at,
    job_key => 'wahook_dlq_retry:' || p_dlq_id,
    max_attempts => 3
  );
$$;

-- Queue a DLQ entry's task again, in its own queue (so its conversation's order holds), with its payload marked
-- (p_mark: dlq_id for an automatic retry, replay_of for a replay). Returns the job id.
create or replace function wahook.requeue_entry(p_entry wahook.webhook_dlq, p_mark jsonb, p_max_attempts integer)
returns bigint
language sql volatile
as $$
  select j.id
    from graphile_worker.add_jobs(array[
      row(p_entry.task, (p_entry.payload || p_mark)::json, p_entry.queue_name, null, p_max_attempts, null, 0, null)
        ::graphile_worker.job_spec
    ]) as j
$$;

-- Queue one attempt of a DLQ entry's task (payload marked with dlq_id: a failure returns to the entry), to run
-- now. p_now only decides what is due (tests travel in time with it). Returns the job id, or null when the entry
-- is not pending and due.
create or replace function wahook.dlq_enqueue_retry(p_dlq_id bigint, p_now timestamptz default pg_catalog.now())
returns bigint
language plpgsql volatile
as $$
declare
  v_entry wahook.webhook_dlq;
begin
  select * into v_entry from wahook.webhook_dlq
   where id = p_dlq_id and status = 'pending' and next_retry_at <= p_now
     for update skip locked;
  if not found then
    return null;
  end if;
  update wahook.webhook_dlq
     set status = 'retrying', dlq_attempts = dlq_attempts + 1, next_retry_at = null, updated_at = p_now
   where id = p_dlq_id;
  return wahook.requeue_entry(v_entry, pg_catalog.jsonb_build_object('dlq_id', v_entry.id), 1);
end;
$$;

-- A retry of a DLQ entry succeeded.
create or replace function wahook.dlq_resolve(p_dlq_id bigint, p_duration_ms numeric default null) returns void
language sql volatile
as $$
  update wahook.webhook_dlq set status = 'resolved', resolved_at = pg_catalog.now(), next_retry_at = null,
         updated_at = pg_catalog.now()
   where id = p_dlq_id;
  insert into wahook.dlq_processing_log (kind, dlq_id, started_at, finished_at, outcome, duration_ms)
  values ('entry', p_dlq_id, pg_catalog.now() - pg_catalog.make_interval(secs => coalesce(p_duration_ms, 0) / 1000),
          pg_catalog.clock_timestamp(), 'succeeded', p_duration_ms);
$$;

-- The processor (crontab, every 5 minutes): sweep jobs crashes left behind, then queue every entry due at
-- p_now (tests travel in time with it). One run at a time (a second concurrent run returns at once), recorded in
-- dlq_processing_log.
create or replace function wahook.dlq_process(p_now timestamptz default pg_catalog.now(), p_limit integer default 1000)
returns table (run_id bigint, outcome text, swept integer, enqueued integer)
language plpgsql volatile
as $$
declare
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_swept integer := 0;
  v_enqueued integer := 0;
  v_id bigint;
  v_outcome text := 'ok';
begin
  if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('wahook.dlq_process')) then
    v_outcome := 'skipped_concurrent_run';
  else
    -- The sweep looks at lock ages in real time, whatever p_now says.
    select pg_catalog.count(*)::integer into v_swept from wahook.sweep();
    if not (wahook.setting('dlq.auto_retry', 'true'))::boolean then
      v_outcome := 'auto_retry_disabled';
    else
      for v_id in
        select d.id from wahook.webhook_dlq as d
         where d.status = 'pending' and d.next_retry_at <= p_now
         order by d.event_id nulls last, d.id
         limit p_limit
      loop
        if wahook.dlq_enqueue_retry(v_id, p_now) is not null then
          v_enqueued := v_enqueued + 1;
        end if;
      end loop;
    end if;
  end if;
  insert into wahook.dlq_processing_log (kind, started_at, finished_at, outcome, duration_ms, details)
  values ('run', v_started, pg_catalog.clock_timestamp(), v_outcome,
          extract(epoch from pg_catalog.clock_timestamp() - v_started) * 1000,
          pg_catalog.jsonb_build_object('swept', v_swept, 'enqueued', v_enqueued, 'as_of', p_now))
  returning id into run_id;
  outcome := v_outcome;
  swept := v_swept;
  enqueued := v_enqueued;
  return next;
end;
$$;

-- Replay entries: back into the normal pipeline with a fresh attempt budget, in event order so each
-- conversation keeps its order. Only pending and exhausted entries replay. p_dry_run: report, change nothing.
create or replace function wahook.dlq_replay(p_ids bigint[], p_actor text, p_dry_run boolean default false)
returns table (dlq_id bigint, task text, event_id bigint, status text, job_id bigint)
language plpgsql volatile
as $$
declare
  v_entry wahook.webhook_dlq;
  v_job bigint;
begin
  if p_actor is null or pg_catalog.btrim(p_actor) = '' then
    raise exception using errcode = 'WH004', message = 'wahook.dlq_replay: say who is replaying (p_actor)';
  end if;
  for v_entry in
    select * from wahook.webhook_dlq as d
     where d.id = any(p_ids)
     order by d.event_id nulls last, d.id
       for update
  loop
    dlq_id := v_entry.id;
    task := v_entry.task;
    event_id := v_entry.event_id;
    job_id := null;
    if v_entry.status not in ('pending', 'exhausted') then
      status := 'skipped: ' || v_entry.status;
    elsif p_dry_run then
      status := 'would replay';
    else
      perform pg_catalog.set_config('wahook.actor', p_actor, true);
      v_job := wahook.requeue_entry(v_entry, pg_catalog.jsonb_build_object('replay_of', v_entry.id),
                                    wahook.max_attempts(v_entry.task));
      update wahook.webhook_dlq as d
         set status = 'replayed', replayed_at = pg_catalog.now(), replayed_by = p_actor, next_retry_at = null,
             updated_at = pg_catalog.now()
       where d.id = v_entry.id;
      if v_entry.event_id is not null then
        update wahook.wa_events as e
           set state = 'pending', attempts = 0, next_attempt_at = null, updated_at = pg_catalog.now()
         where e.id = v_entry.event_id and e.received_at = v_entry.event_received_at;
      end if;
      perform wahook.audit_write(session_user::text, 'dlq.replay', 'wahook.webhook_dlq', v_entry.id::text, null, null,
              pg_catalog.jsonb_build_object('job_id', v_job, 'task', v_entry.task, 'event_id', v_entry.event_id));
      status := 'replayed';
      job_id := v_job;
    end if;
    return next;
  end loop;
end;
$$;

-- The entries a filter selects (all filters optional; null means any).
create or replace function wahook.dlq_select(
  p_task text default null,
  p_error_code text default null,
  p_older_than interval default null,
  p_phone_number_id text default null,
  p_status text[] default array['pending', 'exhausted'],
  p_newer_than interval default null
) returns setof bigint
language sql stable
as $$
  select d.id from wahook.webhook_dlq as d
   where (p_task is null or d.task = p_task)
     and (p_error_code is null or d.error_code = p_error_code)
     and (p_older_than is null or d.dead_lettered_at < pg_catalog.now() - p_older_than)
     and (p_newer_than is null or d.dead_lettered_at >= pg_catalog.now() - p_newer_than)
     and (p_phone_number_id is null or d.phone_number_id = p_phone_number_id)
     and (p_status is null or d.status = any(p_status))
   order by d.event_id nulls last, d.id
$$;

create or replace function wahook.dlq_replay_where(
  p_actor text,
  p_task text default null,
  p_error_code text default null,
  p_older_than interval default null,
  p_phone_number_id text default null,
  p_dry_run boolean default false
) returns table (dlq_id bigint, task text, event_id bigint, status text, job_id bigint)
language sql volatile
as $$
  select * from wahook.dlq_replay(
    array(select wahook.dlq_select(p_task, p_error_code, p_older_than, p_phone_number_id)), p_actor, p_dry_run)
$$;

-- Give up on entries, with a reason. Their events show 'discarded'.
create or replace function wahook.dlq_discard(p_ids bigint[], p_reason text, p_actor text)
returns table (dlq_id bigint, status text)
language plpgsql volatile
as $$
declare
  v_entry wahook.webhook_dlq;
begin
  if p_reason is null or pg_catalog.btrim(p_reason) = '' then
    raise exception using errcode = 'WH005', message = 'wahook.dlq_discard: a reason is required';
  end if;
  if p_actor is null or pg_catalog.btrim(p_actor) = '' then
    raise exception using errcode = 'WH004', message = 'wahook.dlq_discard: say who is discarding (p_actor)';
  end if;
  perform pg_catalog.set_config('wahook.actor', p_actor, true);
  for v_entry in select * from wahook.webhook_dlq as d where d.id = any(p_ids) order by d.id for update loop
    dlq_id := v_entry.id;
    if v_entry.status not in ('pending', 'exhausted') then
      status := 'skipped: ' || v_entry.status;
    else
      update wahook.webhook_dlq as d
         set status = 'discarded', discarded_at = pg_catalog.now(), discarded_by = p_actor, discard_reason = p_reason,
             next_retry_at = null, updated_at = pg_catalog.now()
       where d.id = v_entry.id;
      if v_entry.event_id is not null then
        update wahook.wa_events as e set state = 'discarded', updated_at = pg_catalog.now()
         where e.id = v_entry.event_id and e.received_at = v_entry.event_received_at;
      end if;
      perform wahook.audit_write(session_user::text, 'dlq.discard', 'wahook.webhook_dlq', v_entry.id::text, null, null,
              pg_catalog.jsonb_build_object('reason', p_reason));
      status := 'discarded';
    end if;
    return next;
  end loop;
end;
$$;

-- Accounting for notifications received in [p_from, p_to): what the POSTs held (from webhook_logs) against
-- where each event is now. lost = accepted - (done + pending + processing + retrying + in_dlq + discarded)
-- must be 0; dead_without_dlq (an event marked dead with no open DLQ entry) must be 0 too.
create or replace function wahook.accounting(p_from timestamptz default '-infinity', p_to timestamptz default 'infinity')
returns table (
  accepted bigint, done bigint, pending bigint, processing bigint, retrying bigint, in_dlq bigint, discarded bigint,
  lost bigint, dead_without_dlq bigint
)
language sql stable
as $$
  with logs as (
    select coalesce(sum(l.notification_count - l.duplicate_count), 0)::bigint as accepted
      from wahook.webhook_logs as l
     where l.received_at >= p_from and l.received_at < p_to
  ),
  events as (
    select
      pg_catalog.count(*) filter (where e.state = 'done') as done,
      pg_catalog.count(*) filter (where e.state = 'pending') as pending,
      pg_catalog.count(*) filter (where e.state = 'processing') as processing,
      pg_catalog.count(*) filter (where e.state = 'retrying') as retrying,
      pg_catalog.count(*) filter (where e.state = 'dead') as in_dlq,
      pg_catalog.count(*) filter (where e.state = 'discarded') as discarded,
      pg_catalog.count(*) filter (where e.state = 'dead' and not exists (
        select from wahook.webhook_dlq as d
         where d.event_id = e.id and d.status in ('pending', 'retrying', 'exhausted'))) as dead_without_dlq
      from wahook.wa_events as e
     where e.received_at >= p_from and e.received_at < p_to
  )
  select logs.accepted, events.done, events.pending, events.processing, events.retrying, events.in_dlq, events.discarded,
         logs.accepted - (events.done + events.pending + events.processing + events.retrying + events.in_dlq + events.discarded),
         events.dead_without_dlq
    from logs, events
$$;

-- Audit: every insert, update and delete on the DLQ and the settings, with the acting role (current_user when the
-- change happens: an operator's own role for a direct change, the owner inside wahook's functions), the actor
-- named by the wahook.actor setting (the CLI and the DLQ functions set it; else the login role), and the row
-- before and after. The trigger runs as the invoker, to see who acts; wahook.audit_write (security definer,
-- sql/090_security.sql) does the insert, so no role needs to be able to write audit rows itself.
create or replace function wahook.audit_write(
  p_db_role text, p_action text, p_table text, p_row_id text, p_before jsonb, p_after jsonb, p_details jsonb default null
) returns void
language sql volatile
as $$
  insert into wahook.audit_log (actor, db_role, action, table_name, row_id, before, after, details)
  values (coalesce(nullif(pg_catalog.current_setting('wahook.actor', true), ''), session_user::text),
          p_db_role, p_action, p_table, p_row_id, p_before, p_after,
          coalesce(p_details, '{}'::jsonb) || pg_catalog.jsonb_build_object('session_user', session_user::text))
$$;

create or replace function wahook.audit_row_change() returns trigger
language plpgsql
as $$
begin
  perform wahook.audit_write(
    current_user::text,
    pg_catalog.lower(tg_op),
    tg_table_schema || '.' || tg_table_name,
    case when tg_op = 'DELETE' then pg_catalog.to_jsonb(old) ->> (tg_argv[0]) else pg_catalog.to_jsonb(new) ->> (tg_argv[0]) end,
    case when tg_op in ('UPDATE', 'DELETE') then pg_catalog.to_jsonb(old) end,
    case when tg_op in ('INSERT', 'UPDATE') then pg_catalog.to_jsonb(new) end
  );
  return null;
end;
$$;

drop trigger if exists audit on wahook.webhook_dlq;
create trigger audit after insert or update or delete on wahook.webhook_dlq
  for each row execute function wahook.audit_row_change('id');
drop trigger if exists audit on wahook.settings;
create trigger audit after insert or update or delete on wahook.settings
  for each row execute function wahook.audit_row_change('key');
