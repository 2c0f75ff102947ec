-- Ingest: one call stores a batch of signed POST bodies, fans them out into events, drops duplicates and
-- queues the jobs, all in the caller's transaction. The receiver commits several concurrent POSTs this way
-- (group commit) and answers each only after the commit.

-- Every notification inside one webhook document, in document order.
--   message: value.messages[]  dedupe key m:<wamid>
--   status:  value.statuses[]  dedupe key s:<wamid>:<status>
--   error:   value.errors[]    dedupe key e:<hash of the change>:<position>
--   other:   any other field, or a messages change carrying none of the above; dedupe key o:<hash of the change>
-- The hash is over jsonb's normalised text, so Meta's escaping (\uXXXX, \/) does not change it.
create or replace function wahook.webhook_notifications(p_doc jsonb)
returns table (
  pos integer,
  kind text,
  field text,
  waba_id text,
  phone_number_id text,
  wa_id text,
  wamid text,
  meta_ts timestamptz,
  payload jsonb,
  contact jsonb,
  dedupe_key text
)
language sql stable parallel safe
rows 20
as $$
  with changes as (
    select
      e.ord as entry_ord,
      c.ord as change_ord,
      e.item ->> 'id' as waba_id,
      wahook.epoch_to_timestamptz(e.item ->> 'time') as entry_ts,
      coalesce(c.item ->> 'field', '') as field,
      c.item -> 'value' as value,
      c.item as change,
      wahook.sha256_hex(pg_catalog.jsonb_build_array(e.item -> 'id', c.item)::text) as change_hash
    from pg_catalog.jsonb_array_elements(wahook.jsonb_array(p_doc -> 'entry')) with ordinality as e(item, ord)
    cross join lateral pg_catalog.jsonb_array_elements(wahook.jsonb_array(e.item -> 'changes')) with ordinality as c(item, ord)
  ),
  items as (
    select ch.entry_ord, ch.change_ord, 1 as kind_ord, m.ord as item_ord,
           'message' as kind, ch.field, ch.waba_id,
           ch.value -> 'metadata' ->> 'phone_number_id' as phone_number_id,
           m.item ->> 'from' as wa_id,
           m.item ->> 'id' as wamid,
           wahook.epoch_to_timestamptz(m.item ->> 'timestamp') as meta_ts,
           m.item as payload,
           (select ct.item
              from pg_catalog.jsonb_array_elements(wahook.jsonb_array(ch.value -> 'contacts')) as ct(item)
             where ct.item ->> 'wa_id' = m.item ->> 'from'
             limit 1) as contact,
           coalesce('m:' || (m.item ->> 'id'), 'm#' || ch.change_hash || ':' || m.ord) as dedupe_key
      from changes as ch
      cross join lateral pg_catalog.jsonb_array_elements(wahook.jsonb_array(ch.value -> 'messages')) with ordinality as m(item, ord)
     where ch.field = 'messages'
    union all
    select ch.entry_ord, ch.change_ord, 2, s.ord,
           'status', ch.field, ch.waba_id,
           ch.value -> 'metadata' ->> 'phone_number_id',
           s.item ->> 'recipient_id',
           s.item ->> 'id',
           wahook.epoch_to_timestamptz(s.item ->> 'timestamp'),
           s.item,
           null::jsonb,
           coalesce('s:' || (s.item ->> 'id') || ':' || (s.item ->> 'status'), 's#' || ch.change_hash || ':' || s.ord)
      from changes as ch
      cross join lateral pg_catalog.jsonb_array_elements(wahook.jsonb_array(ch.value -> 'statuses')) with ordinality as s(item, ord)
     where ch.field = 'messages'
    union all
    select ch.entry_ord, ch.change_ord, 3, er.ord,
           'error', ch.field, ch.waba_id,
           ch.value -> 'metadata' ->> 'phone_number_id',
           null, null,
           ch.entry_ts,
           er.item,
           null::jsonb,
           'e:' || ch.change_hash || ':' || er.ord
      from changes as ch
      cross join lateral pg_catalog.jsonb_array_elements(wahook.jsonb_array(ch.value -> 'errors')) with ordinality as er(item, ord)
     where ch.field = 'messages'
    union all
    select ch.entry_ord, ch.change_ord, 4, 1,
           'other', ch.field, ch.waba_id,
           ch.value -> 'metadata' ->> 'phone_number_id',
           null, null,
           ch.entry_ts,
           ch.change,
           null::jsonb,
           'o:' || ch.change_hash
      from changes as ch
     where ch.field <> 'messages'
        or pg_catalog.jsonb_array_length(wahook.jsonb_array(ch.value -> 'messages'))
         + pg_catalog.jsonb_array_length(wahook.jsonb_array(ch.value -> 'statuses'))
         + pg_catalog.jsonb_array_length(wahook.jsonb_array(ch.value -> 'errors')) = 0
  )
  select (pg_catalog.row_number() over (order by i.entry_ord, i.change_ord, i.kind_ord, i.item_ord))::integer,
         i.kind, i.field, i.waba_id, i.phone_number_id, i.wa_id, i.wamid, i.meta_ts, i.payload, i.contact, i.dedupe_key
    from items as i
   order by 1
$$;

-- The graphile-worker queue that serialises one conversation's inbound messages. Statuses, errors and
-- other fields get no queue: they run in parallel and never wait behind messages.
create or replace function wahook.conversation_queue(p_kind text, p_phone_number_id text, p_wa_id text) returns text
language sql immutable parallel safe
as $$
  select case when p_kind = 'message' and p_wa_id is not null
              then 'wahook:conv:' || coalesce(p_phone_number_id, '') || ':' || p_wa_id end
$$;

-- Store a batch of verified bodies in one statement.
--   p_bodies          raw POST bodies, exactly as received
--   p_signature_keys  for each body, the position of the secret that verified it
--   p_fingerprints    for each body, a short fingerprint of that secret (never the secret)
-- Returns one row per body, in input order: the log row's id, how it parsed, how many notifications it held
-- and how many of them were duplicates of notifications already stored.
create or replace function wahook.ingest(p_bodies bytea[], p_signature_keys smallint[], p_fingerprints text[])
returns table (idx integer, log_id bigint, parse_status text, notifications integer, duplicates integer)
language plpgsql volatile
as $$
declare
  v_max_attempts integer := wahook.max_attempts('process_wa_event');
begin
  if p_bodies is null
     or pg_catalog.cardinality(p_bodies) is distinct from pg_catalog.cardinality(p_signature_keys)
     or pg_catalog.cardinality(p_bodies) is distinct from pg_catalog.cardinality(p_fingerprints) then
    raise exception using
      errcode = 'WH001',
      message = 'wahook.ingest: p_bodies, p_signature_keys and p_fingerprints must be arrays of the same length';
  end if;

  return query
  with input as materialized (
    select i.ord::integer as idx,
           i.body,
           p_signature_keys[i.ord] as signature_key,
           p_fingerprints[i.ord] as fingerprint,
           pg_catalog.nextval('wahook.webhook_logs_id_seq'::regclass) as log_id,
           p.doc,
           p.error
      from pg_catalog.unnest(p_bodies) with ordinality as i(body, ord)
      cross join lateral wahook.parse_json(i.body) as p
  ),
  notes as materialized (
    select input.idx, input.log_id, n.*
      from input
      cross join lateral wahook.webhook_notifications(input.doc) as n
     where input.doc is not null
  ),
  -- The same notification twice in one batch (Meta redelivering while the first is in flight): keep the first.
  firsts as materialized (
    select distinct on (notes.dedupe_key) notes.*
      from notes
     order by notes.dedupe_key, notes.idx, notes.pos
  ),
  -- Event ids follow Meta's timestamps within a batch, so id order is conversation order (the worker holds a
  -- conversation's later messages while an earlier one is unfinished, comparing ids).
  numbered as materialized (
    select f.*, pg_catalog.nextval('wahook.wa_events_id_seq'::regclass) as event_id
      from (select * from firsts order by firsts.meta_ts nulls last, firsts.idx, firsts.pos) as f
  ),
  -- Keys are inserted in key order, so two concurrent batches sharing keys cannot deadlock.
  fresh as (
    insert into wahook.dedupe_keys (key, event_id, event_received_at)
    select n.dedupe_key, n.event_id, pg_catalog.now()
      from numbered as n
     order by n.dedupe_key
    on conflict (key) do nothing
    returning key
  ),
  events as (
    insert into wahook.wa_events
      (id, received_at, log_id, kind, field, waba_id, phone_number_id, wa_id, wamid, meta_ts, dedupe_key, payload, contact)
    select n.event_id, pg_catalog.now(), n.log_id, n.kind, n.field, n.waba_id, n.phone_number_id, n.wa_id, n.wamid,
           n.meta_ts, n.dedupe_key, n.payload, n.contact
      from numbered as n
      join fresh on fresh.key = n.dedupe_key
    returning wa_events.id, wa_events.received_at, wa_events.log_id, wa_events.kind,
              wa_events.phone_number_id, wa_events.wa_id, wa_events.meta_ts
  ),
  -- One job per new event. Inbound messages of a conversation share a named queue, in event id order.
  jobs as (
    select pg_catalog.count(*)::integer as added
      from graphile_worker.add_jobs(array(
        select row(
                 'process_wa_event',
                 pg_catalog.json_build_object('id', e.id, 'at', e.received_at),
                 wahook.conversation_queue(e.kind, e.phone_number_id, e.wa_id),
                 null, v_max_attempts, null, 0, null
               )::graphile_worker.job_spec
          from events as e
         order by e.id
      ))
  ),
  logs as (
    insert into wahook.webhook_logs
      (id, received_at, body, signature_key, secret_fingerprint, parse_status, parse_error,
       notification_count, duplicate_count)
    select input.log_id, pg_catalog.now(), input.body, input.signature_key, input.fingerprint,
           case
             when input.doc is null then 'invalid_json'
             when pg_catalog.jsonb_typeof(input.doc -> 'entry') is distinct from 'array' then 'unexpected_shape'
             else 'ok'
           end,
           input.error,
           c.notifications,
           c.notifications - c.stored
      from input
      cross join lateral (
        select (select pg_catalog.count(*) from notes where notes.log_id = input.log_id)::integer as notifications,
               (select pg_catalog.count(*) from events where events.log_id = input.log_id)::integer as stored
      ) as c
    returning webhook_logs.id, webhook_logs.parse_status, webhook_logs.notification_count, webhook_logs.duplicate_count
  )
  select input.idx, logs.id, logs.parse_status, logs.notification_count, logs.duplicate_count
    from input
    join logs on logs.id = input.log_id
   cross join jobs
   order by input.idx;
end;
$$;

comment on function wahook.ingest(bytea[], smallint[], text[]) is
  'Stores verified webhook bodies: one webhook_logs row per body, one wa_events row and one process_wa_event job per new notification. Duplicates (same dedupe key within the retention window) add nothing.';
