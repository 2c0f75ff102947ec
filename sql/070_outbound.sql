-- Outbound messages: the transactional outbox, Graph API error classes, the shared circuit breaker, pauses and
-- pacing. The send task (tasks/send_whatsapp_message.ts) asks wahook.prepare_send whether and when it may call
-- the Graph API, and reports the result to wahook.record_send_success / wahook.record_send_failure.

insert into wahook.settings (key, value, description) values
  ('send_whatsapp_message.max_attempts', '10', 'Attempts for one outbound message before it goes to the DLQ.'),
  ('send.rate_per_second', '80', 'Most messages per second per sending phone number (Meta''s default is 80).'),
  ('send.breaker_threshold', '5', 'Consecutive transient failures of one phone number that open its circuit breaker.'),
  ('send.breaker_open_for', '"30 seconds"', 'How long an open breaker waits before letting one probe through (half-open).'),
  ('send.account_breaker_open_for', '"10 minutes"', 'How long the breaker stays open after an account or token error.'),
  ('send.rate_limit_pause', '"60 seconds"', 'Pause of a phone number after a rate limit without Retry-After.'),
  ('send.reconcile_window', '"60 seconds"', 'After an attempt whose outcome is unknown (a crash after the call), wait this long for a status webhook carrying the outbox id before sending again.')
on conflict (key) do nothing;

-- What to do about a Graph API error code (see docs/OUTBOUND.md for the table).
--   rate_limit        pause the phone number, honour Retry-After, no attempt spent
--   pair_rate_limit   pause that recipient only (4^n s), no attempt spent, not the breaker
--   spam              pause the phone number for an hour and alert
--   maintenance       short pause, then retry
--   account           open the breaker for the number and alert; no attempt spent
--   permanent         the DLQ at once
--   transient         retry with backoff; counts toward the breaker
create or replace function wahook.graph_error_class(p_code integer, p_http_status integer default null) returns text
language sql immutable parallel safe
as $$
  select case
    when p_code in (4, 80007, 130429) then 'rate_limit'
    when p_code = 131056 then 'pair_rate_limit'
    when p_code = 131048 then 'spam'
    when p_code = 131049 then 'permanent'
    when p_code = 131057 then 'maintenance'
    when p_code in (0, 190, 10, 368, 131031, 131042) or p_code between 200 and 299 then 'account'
    when p_code in (100, 131008, 131009, 131021, 131026, 131047, 131050, 131051, 131053, 130403)
      or p_code between 132000 and 132016 then 'permanent'
    when p_code in (1, 2, 131000, 131016, 133004) then 'transient'
    when p_http_status = 429 then 'rate_limit'
    when p_http_status in (401, 403) then 'account'
    else 'transient'
  end
$$;

-- An outbox row's reference in biz_opaque_callback_data: 'wahook:<id>'. Meta echoes it in the message's status
-- webhooks; wahook.outbox_id reads it back (null for anything else, such as another application's data).
create or replace function wahook.outbox_ref(p_id bigint) returns text
language sql immutable parallel safe
as $$
  select 'wahook:' || p_id
$$;

create or replace function wahook.outbox_id(p_ref text) returns bigint
language plpgsql immutable parallel safe
as $$
begin
  if p_ref ~ '^wahook:[0-9]{1,18}$' then
    return pg_catalog.substr(p_ref, 8)::bigint;
  end if;
  return null;
end;
$$;

-- Queue a message for sending, in the caller's transaction: a handler's reply commits with its event.
--   p_message: the Graph API message without messaging_product and to, e.g.
--     {"type": "text", "text": {"body": "Hello"}}
--     {"type": "template", "template": {"name": "order_update", "language": {"code": "en_US"}}}
--     {"type": "interactive", "interactive": {"type": "button", ...}}
-- Returns the outbox id (wahook.whatsapp_messages.id). biz_opaque_callback_data carries it ('wahook:<id>') so
-- status webhooks find the row even when the send's answer was lost.
create or replace function wahook.enqueue_message(
  p_phone_number_id text,
  p_to text,
  p_message jsonb,
  p_reply_to_event_id bigint default null,
  p_run_at timestamptz default null
) returns bigint
language plpgsql volatile
as $$
declare
  v_type text := p_message ->> 'type';
  v_id bigint;
begin
  if p_phone_number_id is null or p_phone_number_id !~ '^[0-9]{1,30}$' then
    raise exception using errcode = 'WH020', message = pg_catalog.format('wahook.enqueue_message: phone_number_id must be the sender''s numeric id, got %L', p_phone_number_id);
  end if;
  if p_to is null or p_to !~ '^\+?[0-9]{6,20}$' then
    raise exception using errcode = 'WH020', message = pg_catalog.format('wahook.enqueue_message: to must be a phone number or wa_id (digits), got %L', p_to);
  end if;
  if pg_catalog.jsonb_typeof(p_message) is distinct from 'object'
     or v_type is null
     or v_type not in ('text', 'template', 'interactive', 'image', 'document', 'audio', 'video', 'sticker', 'location', 'reaction', 'contacts')
     or pg_catalog.jsonb_typeof(p_message -> v_type) is distinct from (case when v_type = 'contacts' then 'array' else 'object' end) then
    raise exception using errcode = 'WH021', message = pg_catalog.format(
      'wahook.enqueue_message: message must be {"type": T, T: {...}} with T one of text, template, interactive, image, document, audio, video, sticker, location, reaction, contacts; got %s',
      left(coalesce(p_message::text, 'null'), 200));
  end if;
  if v_type = 'text' and pg_catalog.jsonb_typeof(p_message #> '{text,body}') is distinct from 'string' then
    raise exception using errcode = 'WH021', message = 'wahook.enqueue_message: a text message needs text.body (a string)';
  end if;

  insert into wahook.whatsapp_messages (direction, phone_number_id, wa_id, type, content, status, status_at, reply_to_event_id)
  values ('outbound', p_phone_number_id, pg_catalog.ltrim(p_to, '+'), v_type, p_message, 'queued', pg_catalog.now(), p_reply_to_event_id)
  returning id into v_id;
  update wahook.whatsapp_messages
     set request = pg_catalog.jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual', 'to', pg_catalog.ltrim(p_to, '+'))
                   || (p_message - 'messaging_product' - 'to')
                   || pg_catalog.jsonb_build_object('biz_opaque_callback_data', wahook.outbox_ref(v_id))
   where id = v_id;
  -- One queue per recipient: messages to one customer go out in order.
  perform graphile_worker.add_job(
    'send_whatsapp_message',
    pg_catalog.json_build_object('id', v_id),
    queue_name => 'wahook:send:' || p_phone_number_id || ':' || pg_catalog.ltrim(p_to, '+'),
    run_at => p_run_at,
    max_attempts => wahook.max_attempts('send_whatsapp_message')
  );
  return v_id;
end;
$$;

-- Should the send job for outbox row p_id call the Graph API now? Decisions:
--   send         yes (request and slot_at given; the attempt is recorded before the call)
--   probe        yes, as the one half-open probe of this number's breaker
--   done         no: already accepted (a retry after success, or reconciled through a status webhook)
--   wait         no: call again at wait_until without spending an attempt (breaker open, paused, pacing,
--                reconciliation of an attempt whose outcome is unknown); reason says which
--   gone         no: no such outbound row
create or replace function wahook.prepare_send(p_id bigint, p_probe_by text, p_now timestamptz default pg_catalog.now())
returns table (decision text, wait_until timestamptz, reason text, request jsonb, phone_number_id text, slot_at timestamptz)
language plpgsql volatile
as $$
declare
  v_msg wahook.whatsapp_messages;
  v_breaker wahook.send_breakers;
  v_pause timestamptz;
  v_rate numeric;
  v_slot timestamptz;
  v_probe boolean := false;
  v_wamid text;
begin
  select * into v_msg from wahook.whatsapp_messages as m where m.id = p_id and m.direction = 'outbound' for update;
  if not found then
    return query select 'gone'::text, null::timestamptz, 'no such outbound message'::text, null::jsonb, null::text, null::timestamptz;
    return;
  end if;
  if v_msg.wamid is not null or v_msg.status <> 'queued' then
    return query select 'done'::text, null::timestamptz, 'already accepted by the Graph API'::text, null::jsonb, v_msg.phone_number_id, null::timestamptz;
    return;
  end if;
  -- The last attempt started a call and never recorded its outcome. A status webhook carrying this row's id
  -- proves the Graph API accepted it: one may be stored and not yet processed (the status events and this retry
  -- run in any order), so look for it before anything else.
  if v_msg.send_started_at is not null then
    select e.wamid into v_wamid
      from wahook.wa_events as e
     where e.state in ('pending', 'processing', 'retrying') and e.kind = 'status'
       and e.received_at >= v_msg.send_started_at - interval '1 minute'
       and e.payload ->> 'biz_opaque_callback_data' = wahook.outbox_ref(p_id)
       and e.wamid is not null
     limit 1;
    if v_wamid is not null then
      perform wahook.link_wamid(p_id, v_wamid);
      return query select 'done'::text, null::timestamptz, 'accepted: reconciled through a stored status webhook'::text,
                          null::jsonb, v_msg.phone_number_id, null::timestamptz;
      return;
    end if;
  end if;
  -- Otherwise give its status webhook time to arrive.
  if v_msg.send_started_at is not null
     and v_msg.send_started_at > p_now - wahook.setting_interval('send.reconcile_window', interval '60 seconds') then
    return query select 'wait'::text, v_msg.send_started_at + wahook.setting_interval('send.reconcile_window', interval '60 seconds'),
                        'reconciling an attempt whose outcome is unknown'::text, null::jsonb, v_msg.phone_number_id, null::timestamptz;
    return;
  end if;

  select max(p.until) into v_pause
    from wahook.send_pauses as p
   where ((p.scope = 'phone' and p.key = v_msg.phone_number_id)
       or (p.scope = 'recipient' and p.key = v_msg.phone_number_id || ':' || v_msg.wa_id))
     and p.until > p_now;
  if v_pause is not null then
    return query select 'wait'::text, v_pause, 'paused'::text, null::jsonb, v_msg.phone_number_id, null::timestamptz;
    return;
  end if;

  insert into wahook.send_breakers (phone_number_id) values (v_msg.phone_number_id) on conflict do nothing;
  select * into v_breaker from wahook.send_breakers as b where b.phone_number_id = v_msg.phone_number_id for update;
  if v_breaker.state = 'open' and v_breaker.retry_at > p_now then
    return query select 'wait'::text, v_breaker.retry_at, 'circuit breaker open'::text, null::jsonb, v_msg.phone_number_id, null::timestamptz;
    return;
  elsif v_breaker.state = 'open' or (v_breaker.state = 'half_open' and v_breaker.updated_at < p_now - interval '2 minutes') then
    -- Half-open: this job is the one probe (a probe that vanished for 2 minutes is replaced).
    update wahook.send_breakers as b set state = 'half_open', probe_by = p_probe_by, updated_at = p_now
     where b.phone_number_id = v_msg.phone_number_id;
    v_probe := true;
  elsif v_breaker.state = 'half_open' and v_breaker.probe_by is distinct from p_probe_by then
    return query select 'wait'::text, p_now + interval '1 second', 'circuit breaker half-open: another job is probing'::text,
                        null::jsonb, v_msg.phone_number_id, null::timestamptz;
    return;
  elsif v_breaker.state = 'half_open' then
    v_probe := true;
  end if;

  -- Pacing: take the next send slot of this number (never more than the rate, across all workers).
  v_rate := greatest(0.001, coalesce(
    (wahook.setting('send.rate_per_second.' || v_msg.phone_number_id, 'null') #>> '{}')::numeric,
    (wahook.setting('send.rate_per_second', '80') #>> '{}')::numeric));
  insert into wahook.send_pacing (phone_number_id, next_slot_at) values (v_msg.phone_number_id, p_now) on conflict do nothing;
  update wahook.send_pacing as sp
     set next_slot_at = greatest(sp.next_slot_at, p_now) + pg_catalog.make_interval(secs => 1.0 / v_rate::double precision)
   where sp.phone_number_id = v_msg.phone_number_id
  returning sp.next_slot_at - pg_catalog.make_interval(secs => 1.0 / v_rate::double precision) into v_slot;
  if v_slot > p_now + interval '2 seconds' and not v_probe then
    return query select 'wait'::text, v_slot, 'pacing: rate limit of this phone number'::text, null::jsonb, v_msg.phone_number_id, null::timestamptz;
    return;
  end if;

  update wahook.whatsapp_messages as m
     set send_attempts = m.send_attempts + 1, send_started_at = p_now, updated_at = p_now
   where m.id = p_id;
  return query select case when v_probe then 'probe' else 'send' end, null::timestamptz, null::text, v_msg.request,
                      v_msg.phone_number_id, v_slot;
end;
$$;

-- Link a wamid to an outbox row. A status webhook may have made a row of its own for that wamid before the send's
-- answer was recorded (the status overtook it): that row is folded in by replaying its statuses through
-- wahook.apply_status, the one rule for delivery states. Returns the row's status afterwards.
create or replace function wahook.link_wamid(p_id bigint, p_wamid text) returns text
language plpgsql volatile
as $$
declare
  v_other wahook.whatsapp_messages;
  v_status text;
begin
  delete from wahook.whatsapp_messages as m where m.wamid = p_wamid and m.id <> p_id returning * into v_other;
  update wahook.whatsapp_messages as m
     set wamid = coalesce(m.wamid, p_wamid),
         status = case when m.status = 'queued' then 'accepted' else m.status end,
         updated_at = pg_catalog.now()
   where m.id = p_id
  returning m.status into v_status;
  if v_other.id is not null then
    perform wahook.apply_status(p_wamid, x.status, x.at, null, null, case when x.status = 'failed' then v_other.errors end)
       from (values ('sent', v_other.sent_at), ('delivered', v_other.delivered_at), ('read', v_other.read_at),
                    ('failed', v_other.failed_at)) as x(status, at)
      where x.at is not null;
    select m.status into v_status from wahook.whatsapp_messages as m where m.id = p_id;
  end if;
  return v_status;
end;
$$;

-- The Graph API accepted the message: store its wamid (statuses will find the row) and close the breaker.
create or replace function wahook.record_send_success(p_id bigint, p_wamid text, p_now timestamptz default pg_catalog.now())
returns text
language plpgsql volatile
as $$
declare
  v_status text;
  v_phone text;
begin
  v_status := wahook.link_wamid(p_id, p_wamid);
  update wahook.whatsapp_messages as m
     set accepted_at = coalesce(m.accepted_at, p_now), last_send_error = null, last_send_error_code = null
   where m.id = p_id
  returning m.phone_number_id into v_phone;
  update wahook.send_breakers as b
     set state = 'closed', failures = 0, opened_at = null, retry_at = null, probe_by = null, reason = null, updated_at = p_now
   where b.phone_number_id = v_phone and (b.state <> 'closed' or b.failures <> 0);
  return v_status;
end;
$$;

-- Open (or re-open) a number's breaker until p_until.
create or replace function wahook.open_breaker(p_phone_number_id text, p_until timestamptz, p_reason text)
returns void
language sql volatile
as $$
  insert into wahook.send_breakers as b (phone_number_id, state, opened_at, retry_at, reason, updated_at)
  values (p_phone_number_id, 'open', pg_catalog.now(), p_until, p_reason, pg_catalog.now())
  on conflict (phone_number_id) do update
    set state = 'open', opened_at = coalesce(case when b.state = 'open' then b.opened_at end, pg_catalog.now()),
        retry_at = greatest(excluded.retry_at, case when b.state = 'open' then b.retry_at end),
        probe_by = null, reason = excluded.reason, updated_at = pg_catalog.now()
$$;

create or replace function wahook.pause_sending(p_scope text, p_key text, p_until timestamptz, p_reason text)
returns timestamptz
language sql volatile
as $$
  insert into wahook.send_pauses as p (scope, key, until, reason)
  values (p_scope, p_key, p_until, p_reason)
  on conflict (scope, key) do update
    set until = greatest(p.until, excluded.until), reason = excluded.reason,
        strikes = case when p.until > pg_catalog.now() - interval '1 hour' then p.strikes + 1 else 1 end,
        updated_at = pg_catalog.now()
  returning until
$$;

-- The Graph API refused or failed. Classifies the error, applies its effect on the number (breaker, pause) and
-- on the message, and says how the job should fail: error_class 'transient' | 'permanent' | 'wait' with
-- wait_until for waits. alert is true for errors a human must look at (account, token, spam).
create or replace function wahook.record_send_failure(
  p_id bigint,
  p_http_status integer,
  p_code integer,
  p_message text,
  p_retry_after_seconds integer default null,
  p_probe boolean default false,
  p_now timestamptz default pg_catalog.now()
) returns table (graph_class text, error_class text, wait_until timestamptz, alert boolean)
language plpgsql volatile
as $$
declare
  v_msg wahook.whatsapp_messages;
  v_class text := wahook.graph_error_class(p_code, p_http_status);
  v_until timestamptz;
  v_strikes integer;
  v_breaker wahook.send_breakers;
begin
  select * into v_msg from wahook.whatsapp_messages as m where m.id = p_id for update;
  update wahook.whatsapp_messages as m
     set send_started_at = null, last_send_error = left(p_message, 2000), last_send_error_code = p_code::text,
         updated_at = p_now
   where m.id = p_id;

  if v_class = 'rate_limit' then
    v_until := wahook.pause_sending('phone', v_msg.phone_number_id,
      p_now + coalesce(pg_catalog.make_interval(secs => p_retry_after_seconds), wahook.setting_interval('send.rate_limit_pause', interval '60 seconds')),
      pg_catalog.format('rate limit (code %s)', p_code));
    return query select v_class, 'wait'::text, v_until, false;
  elsif v_class = 'pair_rate_limit' then
    select p.strikes into v_strikes from wahook.send_pauses as p
     where p.scope = 'recipient' and p.key = v_msg.phone_number_id || ':' || v_msg.wa_id and p.until > p_now - interval '1 hour';
    v_until := wahook.pause_sending('recipient', v_msg.phone_number_id || ':' || v_msg.wa_id,
      p_now + pg_catalog.make_interval(secs => least(power(4, coalesce(v_strikes, 0) + 1), 3600)), 'pair rate limit (131056)');
    return query select v_class, 'wait'::text, v_until, false;
  elsif v_class = 'spam' then
    v_until := wahook.pause_sending('phone', v_msg.phone_number_id, p_now + interval '1 hour', 'spam rate limit (131048)');
    return query select v_class, 'wait'::text, v_until, true;
  elsif v_class = 'maintenance' then
    v_until := wahook.pause_sending('phone', v_msg.phone_number_id, p_now + interval '60 seconds', 'account in maintenance (131057)');
    return query select v_class, 'wait'::text, v_until, false;
  elsif v_class = 'account' then
    v_until := p_now + wahook.setting_interval('send.account_breaker_open_for', interval '10 minutes');
    perform wahook.open_breaker(v_msg.phone_number_id, v_until, pg_catalog.format('account cannot send (code %s): %s', p_code, left(p_message, 200)));
    return query select v_class, 'wait'::text, v_until, true;
  elsif v_class = 'permanent' then
    update wahook.whatsapp_messages as m
       set status = 'failed', failed_at = p_now, status_at = p_now,
           errors = pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('code', p_code, 'message', p_message))
     where m.id = p_id;
    if p_probe then
      -- the probe reached the API and got a real answer: the number works
      update wahook.send_breakers as b set state = 'closed', failures = 0, retry_at = null, probe_by = null, updated_at = p_now
       where b.phone_number_id = v_msg.phone_number_id;
    end if;
    return query select v_class, 'permanent'::text, null::timestamptz, false;
  else
    -- transient: counts toward the breaker; a failed probe re-opens it
    insert into wahook.send_breakers (phone_number_id) values (v_msg.phone_number_id) on conflict do nothing;
    update wahook.send_breakers as b set failures = b.failures + 1, updated_at = p_now
     where b.phone_number_id = v_msg.phone_number_id
    returning * into v_breaker;
    if p_probe or v_breaker.state <> 'closed'
       or v_breaker.failures >= (wahook.setting('send.breaker_threshold', '5') #>> '{}')::integer then
      v_until := p_now + wahook.setting_interval('send.breaker_open_for', interval '30 seconds');
      perform wahook.open_breaker(v_msg.phone_number_id, v_until,
        pg_catalog.format('%s consecutive transient failures; last: %s', v_breaker.failures, left(p_message, 200)));
      -- The number is down, not this message: a failure that opens (or re-opens) the breaker spends no attempt,
      -- so a long outage probed every few seconds never exhausts a message's budget.
      return query select v_class, 'wait'::text, v_until, false;
      return;
    end if;
    return query select v_class, 'transient'::text, null::timestamptz, false;
  end if;
end;
$$;

-- A 'failed' status that arrives later by webhook gets the same classes: the breaker opens for account errors,
-- the number or the recipient is paused for rate limits; the message stays failed (Meta does not retry it).
create or replace function wahook.apply_failed_status(p_phone_number_id text, p_wa_id text, p_errors jsonb)
returns text
language plpgsql volatile
as $$
declare
  v_code integer := case when (p_errors -> 0 ->> 'code') ~ '^[0-9]{1,9}$' then (p_errors -> 0 ->> 'code')::integer end;
  v_class text := wahook.graph_error_class(v_code);
begin
  if p_phone_number_id is null or v_code is null then
    return null;
  end if;
  if v_class = 'account' then
    perform wahook.open_breaker(p_phone_number_id,
      pg_catalog.now() + wahook.setting_interval('send.account_breaker_open_for', interval '10 minutes'),
      pg_catalog.format('failed status: account cannot send (code %s)', v_code));
  elsif v_class in ('rate_limit', 'spam') then
    perform wahook.pause_sending('phone', p_phone_number_id,
      pg_catalog.now() + case when v_class = 'spam' then interval '1 hour' else wahook.setting_interval('send.rate_limit_pause', interval '60 seconds') end,
      pg_catalog.format('failed status: %s (code %s)', v_class, v_code));
  elsif v_class = 'pair_rate_limit' and p_wa_id is not null then
    perform wahook.pause_sending('recipient', p_phone_number_id || ':' || p_wa_id, pg_catalog.now() + interval '16 seconds',
      'failed status: pair rate limit (131056)');
  end if;
  return v_class;
end;
$$;

-- prepare_send recorded an attempt but no call was made (the local breaker refused): undo it.
create or replace function wahook.send_not_attempted(p_id bigint) returns void
language sql volatile
as $$
  update wahook.whatsapp_messages as m
     set send_started_at = null, send_attempts = greatest(m.send_attempts - 1, 0), updated_at = pg_catalog.now()
   where m.id = p_id
$$;
