-- Small pure helpers used by ingest and processing. Idempotent: re-applied after every migrate.

-- A JSON array, or an empty one when the value is missing or not an array: fan-out never fails on
-- an unexpected shape, it just finds nothing there.
create or replace function wahook.jsonb_array(p_value jsonb) returns jsonb
language sql immutable parallel safe
as $$
  select case when pg_catalog.jsonb_typeof(p_value) = 'array' then p_value else '[]'::jsonb end
$$;

-- Meta sends Unix seconds as strings ("1767225600"); anything else becomes null rather than an error.
create or replace function wahook.epoch_to_timestamptz(p_value text) returns timestamptz
language sql immutable parallel safe
as $$
  select case when p_value ~ '^[0-9]{1,12}$' then pg_catalog.to_timestamp(p_value::double precision) end
$$;

create or replace function wahook.sha256_hex(p_value text) returns text
language sql immutable parallel safe
as $$
  select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_value, 'UTF8')), 'hex')
$$;

-- Parse a raw body. Invalid UTF-8 or invalid JSON gives (null, the error) instead of raising, so one bad
-- body never fails the transaction that stores it (and the others committed with it).
create or replace function wahook.parse_json(p_body bytea, out doc jsonb, out error text)
language plpgsql immutable parallel safe
as $$
begin
  doc := pg_catalog.convert_from(p_body, 'UTF8')::jsonb;
exception when others then
  doc := null;
  error := sqlstate || ': ' || sqlerrm;
end;
$$;

-- Delete the rows of a plain (not partitioned) table whose p_column is before p_cutoff, p_batch rows per statement
-- (short locks, bounded WAL bursts), and return how many went. Used for every time-based purge; partitioned tables
-- drop whole partitions instead (ctid is only unique within one table).
create or replace function wahook.delete_older_than(
  p_table regclass, p_column text, p_cutoff timestamptz, p_batch integer default 10000
) returns bigint
language plpgsql volatile
as $$
declare
  v_total bigint := 0;
  v_n bigint;
begin
  if (select c.relkind from pg_catalog.pg_class as c where c.oid = p_table) <> 'r' then
    raise exception using errcode = 'WH013',
      message = pg_catalog.format('wahook.delete_older_than: %s is not a plain table', p_table);
  end if;
  loop
    execute pg_catalog.format(
      'delete from %s where ctid = any (array(select ctid from %s where %I < $1 limit $2))', p_table, p_table, p_column)
      using p_cutoff, p_batch;
    get diagnostics v_n = row_count;
    v_total := v_total + v_n;
    exit when v_n < p_batch;
  end loop;
  return v_total;
end;
$$;

-- Run-time settings (wahook.settings), with the built-in default when a key is absent.
create or replace function wahook.setting(p_key text, p_default jsonb) returns jsonb
language sql stable parallel safe
as $$
  select coalesce((select s.value from wahook.settings as s where s.key = p_key), p_default)
$$;

create or replace function wahook.setting_interval(p_key text, p_default interval) returns interval
language sql stable parallel safe
as $$
  select coalesce((select (s.value #>> '{}')::interval from wahook.settings as s where s.key = p_key), p_default)
$$;

insert into wahook.settings (key, value, description) values
  ('process_wa_event.max_attempts', '10',
   'Attempts for one event before it goes to the DLQ (exponential backoff with jitter between them). Each task has a <task>.max_attempts key; absent means 10.'),
  ('retry.base_delay', '"2 seconds"',
   'Delay before the second attempt; it doubles with each attempt (with jitter: 50-100 % of the doubled value).'),
  ('retry.max_delay', '"1 hour"',
   'Longest delay between two attempts.'),
  ('dlq.auto_retry', 'true',
   'Retry DLQ entries automatically on the DLQ schedule. false: entries wait for an operator (replay or discard).'),
  ('dlq.schedule', '["5 minutes", "15 minutes", "1 hour", "4 hours", "12 hours"]',
   'Delays of the automatic DLQ retries: the first after the entry is created, each next after the previous retry failed. After the last, the entry is exhausted.'),
  ('sweeper.grace', '"30 seconds"',
   'A job locked longer than this whose worker connection is gone is treated as a crashed attempt.'),
  ('dedupe.retention', '"8 days"',
   'How long dedupe keys are kept. Meta retries for up to 7 days; keep at least that.')
on conflict (key) do nothing;
