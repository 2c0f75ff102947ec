-- Processing: the state transitions of one event, and the built-in effects of messages and statuses.
-- The worker claims an event (visible as 'processing'), then in one transaction applies the built-in effect,
-- runs the user's handler and marks it done; on failure wahook.job_failed (050_jobs.sql) records the outcome.

-- Conversation order: an inbound message waits while an earlier message of its conversation (same phone number
-- and customer, lower event id) is unfinished. Returns when to look again (the earliest next attempt among those
-- blockers, else in 5 seconds), or null when nothing blocks it. Dead-lettered and discarded messages do not block:
-- a failing message holds its conversation only within its retry budget.
create or replace function wahook.conversation_blocker(p_id bigint, p_at timestamptz)
returns timestamptz
language sql stable
as $$
  select case when pg_catalog.count(b.id) > 0
              then greatest(coalesce(min(b.next_attempt_at), pg_catalog.now() + interval '5 seconds'),
                            pg_catalog.now() + interval '100 milliseconds')
         end
    from wahook.wa_events as e
    join wahook.wa_events as b
      on b.kind = 'message'
     and b.phone_number_id is not distinct from e.phone_number_id
     and b.wa_id = e.wa_id
     and b.id < e.id
     and b.received_at >= e.received_at - interval '31 days'
     and b.state in ('pending', 'processing', 'retrying')
   where e.id = p_id and e.received_at = p_at and e.kind = 'message'
$$;


-- Claim an event for an attempt: 'processing', attempts + 1 (a done or discarded event returns no row, so a
-- redelivered job is harmless). wait_until is set when an earlier message of the same conversation is unfinished:
-- the attempt must then wait (wahook.job_failed with class 'wait' gives the attempt back). One round trip.
create or replace function wahook.claim_event(p_id bigint, p_at timestamptz)
returns table (
  id bigint, received_at timestamptz, kind text, field text, waba_id text, phone_number_id text, wa_id text,
  wamid text, meta_ts timestamptz, payload jsonb, contact jsonb, attempts integer, wait_until timestamptz
)
language sql volatile
as $$
  with claimed as (
    update wahook.wa_events as e
       set state = 'processing', attempts = e.attempts + 1, updated_at = pg_catalog.now()
     where e.id = p_id and e.received_at = p_at and e.state not in ('done', 'discarded')
    returning e.*
  )
  select c.id, c.received_at, c.kind, c.field, c.waba_id, c.phone_number_id, c.wa_id, c.wamid, c.meta_ts,
         c.payload, c.contact, c.attempts, wahook.conversation_blocker(c.id, c.received_at)
    from claimed as c
$$;

create or replace function wahook.complete_event(p_id bigint, p_at timestamptz)
returns boolean
language sql volatile
as $$
  with done as (
    update wahook.wa_events
       set state = 'done', processed_at = pg_catalog.now(), updated_at = pg_catalog.now(), last_error = null,
           next_attempt_at = null
     where id = p_id and received_at = p_at
    returning 1
  )
  select exists (select from done)
$$;

-- Delivery states of an outbound message only move forward: queued < accepted (the Graph API took it) < sent <
-- delivered < read. 'failed' is terminal and
-- replaces any state short of 'read' (a read message was delivered, whatever arrives late). Unknown statuses
-- never replace a known one.
create or replace function wahook.status_rank(p_status text) returns integer
language sql immutable parallel safe
as $$
  select case p_status
    when 'queued' then 0 when 'accepted' then 1
    when 'sent' then 2 when 'delivered' then 3 when 'read' then 4
    else -1
  end
$$;

create or replace function wahook.status_supersedes(p_current text, p_new text) returns boolean
language sql immutable parallel safe
as $$
  select case
    when p_current is null then true
    when p_current = 'failed' then false
    when p_new = 'failed' then p_current is distinct from 'read'
    else wahook.status_rank(p_new) > wahook.status_rank(p_current)
  end
$$;

-- Apply one status notification to its message, creating the row when wahook has not seen the message
-- (sent by another system, or the status overtook the send). Returns the message's state afterwards.
create or replace function wahook.apply_status(
  p_wamid text, p_status text, p_at timestamptz, p_phone_number_id text, p_wa_id text, p_errors jsonb,
  p_event_id bigint default null
) returns text
language sql volatile
as $$
  insert into wahook.whatsapp_messages as m
    (direction, wamid, phone_number_id, wa_id, status, status_at,
     sent_at, delivered_at, read_at, failed_at, errors, event_id)
  values
    ('outbound', p_wamid, p_phone_number_id, p_wa_id, p_status, p_at,
     case when p_status = 'sent' then p_at end,
     case when p_status = 'delivered' then p_at end,
     case when p_status = 'read' then p_at end,
     case when p_status = 'failed' then p_at end,
     p_errors, p_event_id)
  on conflict (wamid) do update set
    status = case when wahook.status_supersedes(m.status, excluded.status) then excluded.status else m.status end,
    status_at = case when wahook.status_supersedes(m.status, excluded.status) then excluded.status_at else m.status_at end,
    sent_at = coalesce(m.sent_at, excluded.sent_at),
    delivered_at = coalesce(m.delivered_at, excluded.delivered_at),
    read_at = coalesce(m.read_at, excluded.read_at),
    failed_at = coalesce(m.failed_at, excluded.failed_at),
    errors = coalesce(excluded.errors, m.errors),
    phone_number_id = coalesce(m.phone_number_id, excluded.phone_number_id),
    wa_id = coalesce(m.wa_id, excluded.wa_id),
    updated_at = pg_catalog.now()
  returning m.status
$$;

-- The built-in effect of an event, run in the processing transaction before the user's handler:
-- an inbound message is recorded in whatsapp_messages; a status moves its message's delivery state.
create or replace function wahook.apply_event(p_id bigint, p_at timestamptz)
returns text
language plpgsql volatile
as $$
declare
  v_event wahook.wa_events;
  v_result text;
begin
  select * into v_event from wahook.wa_events where id = p_id and received_at = p_at;
  if not found then
    raise exception using errcode = 'WH002', message = pg_catalog.format('wahook.apply_event: no event %s at %s', p_id, p_at);
  end if;

  if v_event.kind = 'message' and v_event.wamid is not null then
    insert into wahook.whatsapp_messages
      (direction, wamid, phone_number_id, wa_id, type, content, status, status_at, meta_ts, event_id)
    values
      ('inbound', v_event.wamid, v_event.phone_number_id, v_event.wa_id, v_event.payload ->> 'type',
       v_event.payload, 'received', v_event.meta_ts, v_event.meta_ts, v_event.id)
    on conflict (wamid) do nothing;
    v_result := 'received';
  elsif v_event.kind = 'status' and v_event.wamid is not null then
    -- Our own sends carry their outbox id: link the wamid even if the send's answer was never recorded.
    perform wahook.link_wamid(m.id, v_event.wamid)
       from wahook.whatsapp_messages as m
      where m.id = wahook.outbox_id(v_event.payload ->> 'biz_opaque_callback_data')
        and m.direction = 'outbound' and (m.wamid is null or m.wamid = v_event.wamid);
    if v_event.payload ->> 'status' = 'failed' then
      perform wahook.apply_failed_status(v_event.phone_number_id, v_event.wa_id, v_event.payload -> 'errors');
    end if;
    v_result := wahook.apply_status(
      v_event.wamid, v_event.payload ->> 'status', v_event.meta_ts, v_event.phone_number_id, v_event.wa_id,
      v_event.payload -> 'errors', v_event.id);
  end if;
  return v_result;
end;
$$;
