-- Partition maintenance, retention and autovacuum tuning. Idempotent: re-applied after every migrate.
--
-- Tables listed in wahook.partition_config are range-partitioned by month (UTC) on one timestamptz column.
-- Partitions are named <table>_pYYYYMM and cover [first of the month 00:00 UTC, first of the next month).
-- wahook.maintain_partitions() (daily crontab task, `wahook migrate`, `wahook partitions maintain`) makes them
-- ahead of time, moves rows out of the default partition, drops partitions past the retention, keeps each
-- partition's autovacuum settings as configured, and purges old dedupe keys. docs/DATABASE.md explains the values.
-- Dynamic DDL is built only with pg_catalog.format() and %I / %L.

-- Storage parameters wahook may set from configuration. Anything else is refused (WH010): a typo must not pass
-- silently, and configuration must not reach options such as user_catalog_table.
create or replace function wahook.storage_parameter_names() returns text[]
language sql immutable parallel safe
as $$
  select array[
    'fillfactor',
    'autovacuum_enabled',
    'autovacuum_vacuum_threshold',
    'autovacuum_vacuum_scale_factor',
    'autovacuum_vacuum_insert_threshold',
    'autovacuum_vacuum_insert_scale_factor',
    'autovacuum_analyze_threshold',
    'autovacuum_analyze_scale_factor',
    'autovacuum_vacuum_cost_delay',
    'autovacuum_vacuum_cost_limit',
    'autovacuum_freeze_min_age',
    'autovacuum_freeze_max_age',
    'autovacuum_freeze_table_age',
    'autovacuum_multixact_freeze_min_age',
    'autovacuum_multixact_freeze_max_age',
    'autovacuum_multixact_freeze_table_age'
  ]::text[]
$$;

-- Refuse storage parameters that are not a JSON object of allowed names with scalar values (WH010).
-- PostgreSQL itself checks each value's range when the parameters are applied.
create or replace function wahook.check_storage_parameters(p_params jsonb) returns void
language plpgsql immutable
as $$
declare
  v_key text;
  v_value jsonb;
begin
  if p_params is null or pg_catalog.jsonb_typeof(p_params) <> 'object' then
    raise exception using errcode = 'WH010',
      message = pg_catalog.format('storage parameters must be a JSON object, got %s', coalesce(p_params::text, 'null'));
  end if;
  for v_key, v_value in select e.key, e.value from pg_catalog.jsonb_each(p_params) as e loop
    if not (v_key = any (wahook.storage_parameter_names())) then
      raise exception using errcode = 'WH010',
        message = pg_catalog.format('storage parameter %L is not allowed', v_key),
        hint = 'allowed: fillfactor and the autovacuum_* table parameters (see wahook.storage_parameter_names())';
    end if;
    if pg_catalog.jsonb_typeof(v_value) not in ('number', 'string', 'boolean') then
      raise exception using errcode = 'WH010',
        message = pg_catalog.format('storage parameter %L needs a number, string or boolean value, got %s', v_key, v_value::text);
    end if;
  end loop;
end;
$$;

-- A table's schema and name, for format('%I.%I', ...).
create or replace function wahook.relation_name(p_table regclass, out schema_name text, out table_name text)
language sql stable
as $$
  select n.nspname::text, c.relname::text
    from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
   where c.oid = p_table
$$;

-- Apply storage parameters to one table (a partition or a plain table) when any of them differs from what the
-- table has (pg_class.reloptions). Parameters the table has that are not listed are left alone. Returns true
-- when it changed the table. ALTER TABLE ... SET takes a SHARE UPDATE EXCLUSIVE lock: reads and writes go on.
create or replace function wahook.apply_storage_parameters(p_table regclass, p_params jsonb) returns boolean
language plpgsql volatile
as $$
declare
  v_current text[];
  v_assignments text;
  v_name record;
begin
  perform wahook.check_storage_parameters(p_params);
  select c.reloptions into v_current from pg_catalog.pg_class as c where c.oid = p_table;
  select * into v_name from wahook.relation_name(p_table);
  if not exists (
    select from pg_catalog.jsonb_each_text(p_params) as e
     where not ((e.key || '=' || e.value) = any (coalesce(v_current, '{}'::text[])))
  ) then
    return false;
  end if;
  select pg_catalog.string_agg(pg_catalog.format('%I = %L', e.key, e.value), ', ' order by e.key)
    into v_assignments
    from pg_catalog.jsonb_each_text(p_params) as e;
  execute pg_catalog.format('alter table %I.%I set (%s)', v_name.schema_name, v_name.table_name, v_assignments);
  return true;
end;
$$;

-- The one timestamptz column a table is range-partitioned on; WH011 for any other kind of table.
create or replace function wahook.partition_key_column(p_parent regclass) returns text
language plpgsql stable
as $$
declare
  v_column text;
begin
  select a.attname into v_column
    from pg_catalog.pg_partitioned_table as pt
    join pg_catalog.pg_attribute as a on a.attrelid = pt.partrelid and a.attnum = pt.partattrs[0]
   where pt.partrelid = p_parent
     and pt.partstrat = 'r'
     and pt.partnatts = 1
     and a.atttypid = 'pg_catalog.timestamptz'::pg_catalog.regtype;
  if v_column is null then
    raise exception using errcode = 'WH011',
      message = pg_catalog.format('%s is not range-partitioned on one timestamptz column', p_parent);
  end if;
  return v_column;
end;
$$;

-- The bounds of one partition, read back from its partition bound (MINVALUE/MAXVALUE become -infinity/infinity;
-- the default partition has null bounds). DateStyle is fixed so the text form always reads back.
create or replace function wahook.partition_bounds(
  p_partition regclass, out range_from timestamptz, out range_to timestamptz, out is_default boolean)
language plpgsql stable
set datestyle to 'ISO, YMD'
as $$
declare
  v_bound text;
  v_parts text[];
begin
  select pg_catalog.pg_get_expr(c.relpartbound, c.oid) into v_bound from pg_catalog.pg_class as c where c.oid = p_partition;
  is_default := v_bound = 'DEFAULT';
  if is_default or v_bound is null then
    return;
  end if;
  v_parts := pg_catalog.regexp_match(v_bound, '^FOR VALUES FROM \((.+)\) TO \((.+)\)$');
  if v_parts is null then
    return;
  end if;
  range_from := case v_parts[1] when 'MINVALUE' then '-infinity' when 'MAXVALUE' then 'infinity'
                else pg_catalog.btrim(v_parts[1], '''')::timestamptz end;
  range_to := case v_parts[2] when 'MINVALUE' then '-infinity' when 'MAXVALUE' then 'infinity'
              else pg_catalog.btrim(v_parts[2], '''')::timestamptz end;
end;
$$;

-- The partitions of a partitioned table with their bounds.
create or replace function wahook.partitions_of(p_parent regclass)
returns table (
  partition regclass, schema_name text, table_name text, range_from timestamptz, range_to timestamptz, is_default boolean)
language sql stable
as $$
  select i.inhrelid::regclass, n.nspname::text, c.relname::text, b.range_from, b.range_to, b.is_default
    from pg_catalog.pg_inherits as i
    join pg_catalog.pg_class as c on c.oid = i.inhrelid
    join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
   cross join lateral wahook.partition_bounds(i.inhrelid::regclass) as b
   where i.inhparent = p_parent
   order by b.is_default, b.range_from
$$;

-- The configured storage parameters of a partitioned table ('{}' when it is not configured).
create or replace function wahook.partition_storage_parameters(p_parent regclass) returns jsonb
language sql stable
as $$
  select coalesce(
    (select pc.storage_parameters from wahook.partition_config as pc
      where pg_catalog.to_regclass(pc.parent) = p_parent),
    '{}'::jsonb)
$$;

-- Make the partition of p_parent for the UTC month that contains p_month, unless a partition already covers that
-- month. Rows of that month in the default partition (they landed there while the partition was missing) are
-- moved into it. Created as a plain table, tuned, filled, then attached: ATTACH takes only a SHARE UPDATE
-- EXCLUSIVE lock on the parent (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE), so ingest goes on.
-- The default partition is locked ACCESS EXCLUSIVE (as ATTACH would) before the move and until commit, so no row of
-- that month can land there between the move and the attach.
create or replace function wahook.make_month_partition(
  p_parent regclass, p_month date, out partition text, out created boolean, out moved bigint)
language plpgsql volatile
as $$
declare
  v_schema text;
  v_table text;
  v_key text := wahook.partition_key_column(p_parent);
  v_month date := pg_catalog.date_trunc('month', p_month::timestamp)::date;
  v_from timestamptz := v_month::timestamp at time zone 'UTC';
  v_to timestamptz := (v_month::timestamp + interval '1 month') at time zone 'UTC';
  v_name text;
  v_existing text;
  v_default record;
begin
  created := false;
  moved := 0;
  -- Serialise with wahook.maintain_partitions (re-entrant when called from it).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('wahook.maintain_partitions'));

  select n.nspname, c.relname into v_schema, v_table
    from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
   where c.oid = p_parent;
  v_name := v_table || '_p' || pg_catalog.to_char(v_month, 'YYYYMM');

  select pg_catalog.format('%I.%I', p.schema_name, p.table_name) into v_existing
    from wahook.partitions_of(p_parent) as p
   where not p.is_default and p.range_from <= v_from and p.range_to > v_from;
  if v_existing is not null then
    partition := v_existing;
    return;
  end if;
  if pg_catalog.to_regclass(pg_catalog.format('%I.%I', v_schema, v_name)) is not null then
    raise exception using errcode = 'WH011',
      message = pg_catalog.format('%I.%I exists but is not a partition of %I.%I', v_schema, v_name, v_schema, v_table),
      hint = 'attach it, or rename or drop it, then run maintenance again';
  end if;
  select p.schema_name, p.table_name into v_default from wahook.partitions_of(p_parent) as p where p.is_default;

  execute pg_catalog.format('create table %I.%I (like %I.%I including defaults including constraints)',
                            v_schema, v_name, v_schema, v_table);
  perform wahook.apply_storage_parameters(pg_catalog.format('%I.%I', v_schema, v_name)::regclass,
                                          wahook.partition_storage_parameters(p_parent));
  if v_default.table_name is not null then
    execute pg_catalog.format('lock table %I.%I in access exclusive mode', v_default.schema_name, v_default.table_name);
    execute pg_catalog.format(
      'with moved as (delete from %I.%I where %I >= $1 and %I < $2 returning *) insert into %I.%I select * from moved',
      v_default.schema_name, v_default.table_name, v_key, v_key, v_schema, v_name)
      using v_from, v_to;
    get diagnostics moved = row_count;
  end if;
  -- Bounds as ISO literals with an explicit UTC offset: they read the same whatever the session's DateStyle.
  execute pg_catalog.format('alter table %I.%I attach partition %I.%I for values from (%L) to (%L)',
                            v_schema, v_table, v_schema, v_name,
                            pg_catalog.to_char(v_month, 'YYYY-MM-DD') || ' 00:00:00+00',
                            pg_catalog.to_char(v_month::timestamp + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
  partition := pg_catalog.format('%I.%I', v_schema, v_name);
  created := true;
end;
$$;

-- Rows of a default partition by UTC month of the partition key (null keys are not counted: they belong nowhere).
create or replace function wahook.default_partition_months(p_default regclass, p_key text)
returns table (month date, n bigint)
language plpgsql stable
as $$
declare
  v_name record;
begin
  select * into v_name from wahook.relation_name(p_default);
  return query execute pg_catalog.format(
    'select pg_catalog.date_trunc(%L, %I at time zone %L)::date, pg_catalog.count(*) from %I.%I where %I is not null group by 1 order by 1',
    'month', p_key, 'UTC', v_name.schema_name, v_name.table_name, p_key);
end;
$$;

-- Rows of a partition that must not disappear with it: events not yet done or discarded (pending, processing,
-- retrying, and dead ones still waiting in the DLQ). Retention keeps such a partition and says so. Other tables
-- have none. Uses wa_events_open_idx (state <> 'done').
create or replace function wahook.partition_unfinished_rows(p_parent regclass, p_partition regclass) returns bigint
language plpgsql stable
as $$
declare
  v_n bigint := 0;
  v_name record;
begin
  if p_parent = 'wahook.wa_events'::regclass then
    select * into v_name from wahook.relation_name(p_partition);
    execute pg_catalog.format('select pg_catalog.count(*) from %I.%I where state not in (%L, %L)',
                              v_name.schema_name, v_name.table_name, 'done', 'discarded')
      into v_n;
  end if;
  return v_n;
end;
$$;

-- Whether this server is a replica (maintenance writes nothing there). A function of its own so the replica
-- branch of wahook.maintain_partitions can be tested by replacing it inside a rolled-back transaction.
create or replace function wahook.is_replica() returns boolean
language sql volatile
as $$
  select pg_catalog.pg_is_in_recovery()
$$;

-- Partition maintenance, for every row of wahook.partition_config, in parent name order:
--   1. purge dedupe keys past dedupe.retention (wahook.purge_dedupe_keys; real time, whatever p_now says)
--   2. retention: detach and drop each partition whose whole range ends at or before p_now - retention (never the
--      default partition, never p_now's month); a wa_events partition with unfinished events is kept ('kept')
--   3. make the partitions of the months from p_now's month to premake months later
--   4. move rows out of the default partition into their month's partition (creating it); rows of a month already
--      past the retention stay where they are and are reported ('expired_in_default')
--   5. re-apply the configured storage parameters to every partition, the default one included, where they drifted
-- Lock order. DETACH takes ACCESS EXCLUSIVE on the parent; ATTACH (steps 3-4) takes ACCESS EXCLUSIVE on the default
-- partition; both are held until commit. Dropping first means a run locks a parent before its partitions, the order
-- every query uses, so a query waiting for a partition never holds the parent a later DETACH would wait for. Tables
-- go in name order (wa_events before webhook_logs), the order wahook.ingest locks them.
-- It is a plain DETACH: DETACH ... CONCURRENTLY cannot run in a function (nor any transaction block) and PostgreSQL
-- refuses it while the table has a default partition, which both wahook tables have. Each lock is waited for at
-- most partitions.lock_timeout (default 5 s).
--
-- One run at a time: a run that finds another one holding the lock logs 'skipped_concurrent_run' and returns.
-- On a replica it does nothing and returns 'skipped_replica'. Each step runs in a subtransaction: a failure is
-- recorded (an 'error' row, partition_config.last_error, maintenance_log outcome 'error') and the other steps go
-- on; the function itself does not raise, so the records commit. Callers check for 'error' rows and fail loudly.
-- p_now moves the clock for making and dropping partitions (tests, backfills); the log keeps the real times.
create or replace function wahook.maintain_partitions(p_now timestamptz default pg_catalog.now())
returns table (parent text, partition text, action text, rows bigint, detail text)
language plpgsql volatile
as $$
declare
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_lock_timeout text := pg_catalog.current_setting('lock_timeout');
  v_month0 date := pg_catalog.date_trunc('month', p_now at time zone 'UTC')::date;
  v_cfg wahook.partition_config;
  v_parent regclass;
  v_parent_name record;
  v_key text;
  v_cutoff timestamptz;
  v_made record;
  v_part record;
  v_group record;
  v_n bigint;
  v_ok boolean;
  v_error text;
  v_errors jsonb := '{}';
  v_invalid text[] := '{}';
  v_created integer := 0;
  v_moved bigint := 0;
  v_expired bigint := 0;
  v_tuned integer := 0;
  v_dropped integer := 0;
  v_kept integer := 0;
  v_purged bigint := 0;
begin
  if wahook.is_replica() then
    action := 'skipped_replica';
    detail := 'this server is a replica (pg_is_in_recovery): partition maintenance runs on the primary';
    return next;
    return;
  end if;
  if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('wahook.maintain_partitions')) then
    insert into wahook.maintenance_log (task, started_at, finished_at, outcome, details)
    values ('partitions', v_started, pg_catalog.clock_timestamp(), 'skipped_concurrent_run',
            pg_catalog.jsonb_build_object('as_of', p_now));
    action := 'skipped_concurrent_run';
    detail := 'another maintenance run holds the lock and does the work';
    return next;
    return;
  end if;
  perform pg_catalog.set_config('lock_timeout',
    pg_catalog.round(pg_catalog.date_part('epoch', wahook.setting_interval('partitions.lock_timeout', interval '5 seconds')) * 1000)::text,
    true);

  -- 1. Dedupe keys, before any DDL lock is taken.
  parent := 'wahook.dedupe_keys';
  partition := null;
  begin
    v_purged := wahook.purge_dedupe_keys();
    action := 'purged'; rows := v_purged; detail := 'dedupe keys older than dedupe.retention';
  exception when others then
    v_error := sqlstate || ': ' || sqlerrm;
    v_errors := v_errors || pg_catalog.jsonb_build_object(parent, v_error);
    action := 'error'; rows := null; detail := v_error;
  end;
  return next;

  -- The configuration of each table, checked once: a table whose row is unusable is skipped (and reported).
  for v_cfg in select * from wahook.partition_config as pc order by pc.parent loop
    begin
      v_parent := pg_catalog.to_regclass(v_cfg.parent);
      if v_parent is null then
        raise exception using errcode = 'WH011', message = pg_catalog.format('partition_config: no table %s', v_cfg.parent);
      end if;
      perform wahook.partition_key_column(v_parent);
      perform wahook.check_storage_parameters(v_cfg.storage_parameters);
    exception when others then
      v_error := sqlstate || ': ' || sqlerrm;
      v_invalid := v_invalid || v_cfg.parent;
      v_errors := v_errors || pg_catalog.jsonb_build_object(v_cfg.parent, v_error);
      parent := v_cfg.parent; partition := null; action := 'error'; rows := null; detail := v_error;
      return next;
    end;
  end loop;

  -- 2. Retention.
  for v_cfg in select * from wahook.partition_config as pc where pc.retention is not null order by pc.parent loop
    continue when v_cfg.parent = any (v_invalid);
    v_parent := pg_catalog.to_regclass(v_cfg.parent);
    select * into v_parent_name from wahook.relation_name(v_parent);
    parent := v_cfg.parent;
    v_cutoff := p_now - v_cfg.retention;
    for v_part in
      select p.partition, p.schema_name, p.table_name, p.range_from, p.range_to, c.reltuples,
             pg_catalog.format('%I.%I', p.schema_name, p.table_name) as name
        from wahook.partitions_of(v_parent) as p
        join pg_catalog.pg_class as c on c.oid = p.partition
       where not p.is_default
         and p.range_to <= v_cutoff
         and p.range_to <= (v_month0::timestamp at time zone 'UTC')
       order by p.range_from
    loop
      partition := v_part.name;
      begin
        v_n := wahook.partition_unfinished_rows(v_parent, v_part.partition);
        if v_n > 0 then
          v_kept := v_kept + 1;
          action := 'kept'; rows := v_n;
          detail := 'past the retention but holds unfinished events: resolve or discard them (wahook dlq)';
        else
          execute pg_catalog.format('alter table %I.%I detach partition %I.%I',
                                    v_parent_name.schema_name, v_parent_name.table_name, v_part.schema_name, v_part.table_name);
          execute pg_catalog.format('drop table %I.%I', v_part.schema_name, v_part.table_name);
          v_dropped := v_dropped + 1;
          action := 'dropped';
          rows := case when v_part.reltuples >= 0 then v_part.reltuples::bigint end;  -- planner estimate
          detail := pg_catalog.format('range ended %s, before the retention cutoff %s (rows: planner estimate)',
                                      pg_catalog.to_char(v_part.range_to at time zone 'UTC', 'YYYY-MM-DD HH24:MI"Z"'),
                                      pg_catalog.to_char(v_cutoff at time zone 'UTC', 'YYYY-MM-DD HH24:MI"Z"'));
        end if;
      exception when others then
        v_error := sqlstate || ': ' || sqlerrm;
        v_errors := v_errors || pg_catalog.jsonb_build_object(parent, v_error);
        action := 'error'; rows := null; detail := v_error;
      end;
      return next;
    end loop;
  end loop;

  -- 3-5. Make, move, tune.
  for v_cfg in select * from wahook.partition_config as pc order by pc.parent loop
    continue when v_cfg.parent = any (v_invalid);
    v_parent := pg_catalog.to_regclass(v_cfg.parent);
    v_key := wahook.partition_key_column(v_parent);
    v_cutoff := p_now - v_cfg.retention;  -- null: keep forever
    parent := v_cfg.parent;

    -- 3. This month and premake months ahead.
    for i in 0 .. v_cfg.premake loop
      begin
        select * into v_made from wahook.make_month_partition(v_parent, (v_month0 + pg_catalog.make_interval(months => i))::date);
        v_ok := true;
      exception when others then
        v_ok := false;
        v_error := sqlstate || ': ' || sqlerrm;
        v_errors := v_errors || pg_catalog.jsonb_build_object(parent, v_error);
        partition := null; action := 'error'; rows := null;
        detail := pg_catalog.to_char(v_month0 + pg_catalog.make_interval(months => i), 'YYYY-MM') || ': ' || v_error;
        return next;
      end;
      if v_ok and v_made.created then
        v_created := v_created + 1;
        v_moved := v_moved + v_made.moved;
        partition := v_made.partition; action := 'created'; rows := null; detail := 'premake';
        return next;
        if v_made.moved > 0 then
          action := 'moved'; rows := v_made.moved; detail := 'from the default partition';
          return next;
        end if;
      end if;
    end loop;

    -- 4. Rows in the default partition, by month (it is normally empty: the scan is cheap).
    for v_group in
      select pg_catalog.format('%I.%I', p.schema_name, p.table_name) as default_partition, g.month, g.n
        from wahook.partitions_of(v_parent) as p
       cross join lateral wahook.default_partition_months(p.partition, v_key) as g
       where p.is_default
    loop
      if ((v_group.month::timestamp + interval '1 month') at time zone 'UTC') <= v_cutoff then
        v_expired := v_expired + v_group.n;
        partition := v_group.default_partition; action := 'expired_in_default'; rows := v_group.n;
        detail := pg_catalog.to_char(v_group.month, 'YYYY-MM') || ' is past the retention: rows left in the default partition';
        return next;
        continue;
      end if;
      begin
        select * into v_made from wahook.make_month_partition(v_parent, v_group.month);
        v_ok := true;
      exception when others then
        v_ok := false;
        v_error := sqlstate || ': ' || sqlerrm;
        v_errors := v_errors || pg_catalog.jsonb_build_object(parent, v_error);
        partition := v_group.default_partition; action := 'error'; rows := v_group.n;
        detail := 'moving ' || pg_catalog.to_char(v_group.month, 'YYYY-MM') || ' out of the default partition: ' || v_error;
        return next;
      end;
      if v_ok and v_made.created then
        v_created := v_created + 1;
        v_moved := v_moved + v_made.moved;
        partition := v_made.partition; action := 'created'; rows := null; detail := 'for rows in the default partition';
        return next;
        action := 'moved'; rows := v_made.moved; detail := 'from ' || v_group.default_partition;
        return next;
      end if;
    end loop;

    -- 5. Storage parameters on every partition, the default one included.
    for v_part in select p.partition, pg_catalog.format('%I.%I', p.schema_name, p.table_name) as name
                    from wahook.partitions_of(v_parent) as p loop
      begin
        v_ok := wahook.apply_storage_parameters(v_part.partition, v_cfg.storage_parameters);
      exception when others then
        v_ok := false;
        v_error := sqlstate || ': ' || sqlerrm;
        v_errors := v_errors || pg_catalog.jsonb_build_object(parent, v_error);
        partition := v_part.name; action := 'error'; rows := null; detail := v_error;
        return next;
      end;
      if v_ok then
        v_tuned := v_tuned + 1;
        partition := v_part.name; action := 'tuned'; rows := null; detail := v_cfg.storage_parameters::text;
        return next;
      end if;
    end loop;
  end loop;

  update wahook.partition_config as pc
     set last_run_at = pg_catalog.now(),
         last_success_at = case when v_errors ? pc.parent then pc.last_success_at else pg_catalog.now() end,
         last_error = v_errors ->> pc.parent;
  insert into wahook.maintenance_log (task, started_at, finished_at, outcome, details)
  values ('partitions', v_started, pg_catalog.clock_timestamp(), case when v_errors = '{}'::jsonb then 'ok' else 'error' end,
          pg_catalog.jsonb_build_object(
            'as_of', p_now,
            'created', v_created,
            'moved_rows', v_moved,
            'expired_in_default_rows', v_expired,
            'tuned', v_tuned,
            'dropped', v_dropped,
            'kept', v_kept,
            'dedupe_keys_purged', v_purged,
            'errors', v_errors,
            'duration_ms', pg_catalog.round((pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - v_started) * 1000)::numeric, 1)));
  perform pg_catalog.set_config('lock_timeout', v_lock_timeout, true);
end;
$$;

comment on function wahook.maintain_partitions(timestamptz) is
  'Partition maintenance for every table in wahook.partition_config: premake, move rows out of the default partition, storage parameters, retention; plus the dedupe-key purge. One row per action; never raises (see the error rows, partition_config.last_error and wahook.maintenance_log).';

-- Dedupe keys older than the retention (default 8 days: Meta's 7-day retry window plus a day) are removed in
-- bounded batches (each DELETE touches at most p_batch rows; all batches share the caller's transaction).
-- Returns how many were removed. Not a partition drop: see docs/DATABASE.md.
create or replace function wahook.purge_dedupe_keys(p_batch integer default 10000)
returns bigint
language sql volatile
as $$
  select wahook.delete_older_than('wahook.dedupe_keys', 'first_seen_at',
    pg_catalog.now() - (wahook.setting('dedupe.retention', '"8 days"') #>> '{}')::interval, p_batch)
$$;

-- Every partition of every configured table: bounds, size, rows (estimated from the planner statistics; counted
-- exactly for the default partition, which should be empty), and per table the first month from now to premake
-- months ahead that has no partition (null: none missing).
create or replace function wahook.partition_status()
returns table (
  parent text,
  partition text,
  range_from timestamptz,
  range_to timestamptz,
  total_bytes bigint,
  rows bigint,
  rows_exact boolean,
  is_default boolean,
  next_missing_month date,
  premake integer,
  retention interval
)
language plpgsql stable
as $$
declare
  v_cfg wahook.partition_config;
  v_parent regclass;
  v_part record;
  v_month0 date := pg_catalog.date_trunc('month', pg_catalog.now() at time zone 'UTC')::date;
begin
  for v_cfg in select * from wahook.partition_config as pc order by pc.parent loop
    v_parent := pg_catalog.to_regclass(v_cfg.parent);
    continue when v_parent is null;
    select pg_catalog.min(m.month)::date into next_missing_month
      from pg_catalog.generate_series(v_month0::timestamp, v_month0 + pg_catalog.make_interval(months => v_cfg.premake),
                                      interval '1 month') as m(month)
     where not exists (
       select from wahook.partitions_of(v_parent) as p
        where not p.is_default
          and p.range_from <= (m.month at time zone 'UTC') and p.range_to > (m.month at time zone 'UTC'));
    parent := v_cfg.parent;
    premake := v_cfg.premake;
    retention := v_cfg.retention;
    for v_part in
      select p.partition, p.range_from, p.range_to, p.is_default, c.reltuples
        from wahook.partitions_of(v_parent) as p
        join pg_catalog.pg_class as c on c.oid = p.partition
    loop
      partition := v_part.partition::text;
      range_from := v_part.range_from;
      range_to := v_part.range_to;
      is_default := v_part.is_default;
      total_bytes := pg_catalog.pg_total_relation_size(v_part.partition);
      if v_part.is_default then
        execute pg_catalog.format('select pg_catalog.count(*) from %s', v_part.partition) into rows;
        rows_exact := true;
      else
        rows := case when v_part.reltuples >= 0 then v_part.reltuples::bigint end;  -- -1: never vacuumed or analyzed
        rows_exact := false;
      end if;
      return next;
    end loop;
  end loop;
end;
$$;

-- partition_config is checked when written: storage parameters (WH010), the parent and the retention (WH011).
-- Security definer (search_path ''): it runs for whoever may update the table (wahook_admin), who has no EXECUTE on
-- the helpers it calls. A trigger function cannot be called directly, so this grants nothing else.
create or replace function wahook.partition_config_check() returns trigger
language plpgsql volatile
security definer
set search_path = ''
as $$
declare
  v_parent regclass := pg_catalog.to_regclass(new.parent);
begin
  perform wahook.check_storage_parameters(new.storage_parameters);
  if v_parent is null then
    raise exception using errcode = 'WH011', message = pg_catalog.format('partition_config: no table %s', new.parent);
  end if;
  perform wahook.partition_key_column(v_parent);
  if new.retention is not null and new.retention <= interval '0' then
    raise exception using errcode = 'WH011',
      message = pg_catalog.format('partition_config: retention of %s must be positive (null keeps everything)', new.parent);
  end if;
  return new;
end;
$$;

drop trigger if exists check_config on wahook.partition_config;
create trigger check_config before insert or update of parent, premake, retention, storage_parameters
  on wahook.partition_config
  for each row execute function wahook.partition_config_check();

-- Defaults; an operator's later changes to these rows are kept (do nothing on conflict). Values: docs/DATABASE.md.
insert into wahook.partition_config (parent, premake, retention, storage_parameters) values
  ('wahook.wa_events', 3, interval '6 months', '{
     "autovacuum_vacuum_scale_factor": 0.05,
     "autovacuum_vacuum_threshold": 1000,
     "autovacuum_vacuum_insert_scale_factor": 0.05,
     "autovacuum_vacuum_insert_threshold": 10000,
     "autovacuum_analyze_scale_factor": 0.02,
     "autovacuum_analyze_threshold": 1000
   }'),
  ('wahook.webhook_logs', 3, interval '3 months', '{
     "autovacuum_vacuum_scale_factor": 0.1,
     "autovacuum_vacuum_threshold": 1000,
     "autovacuum_vacuum_insert_scale_factor": 0.05,
     "autovacuum_vacuum_insert_threshold": 10000,
     "autovacuum_analyze_scale_factor": 0.05,
     "autovacuum_analyze_threshold": 1000,
     "autovacuum_freeze_min_age": 0
   }')
on conflict (parent) do nothing;

insert into wahook.settings (key, value, description) values
  ('partitions.lock_timeout', '"5 seconds"',
   'How long partition maintenance waits for a table lock (ATTACH, DETACH) before that step fails and is retried on the next run.')
on conflict (key) do nothing;

-- The hot plain tables (not partitioned). Applied only where they differ, so re-running takes no lock.
select wahook.apply_storage_parameters('wahook.dedupe_keys', '{
  "autovacuum_vacuum_scale_factor": 0.05,
  "autovacuum_vacuum_threshold": 1000,
  "autovacuum_vacuum_insert_scale_factor": 0.1,
  "autovacuum_vacuum_insert_threshold": 10000,
  "autovacuum_analyze_scale_factor": 0.05,
  "autovacuum_analyze_threshold": 1000
}');
select wahook.apply_storage_parameters('wahook.whatsapp_messages', '{
  "fillfactor": 90,
  "autovacuum_vacuum_scale_factor": 0.05,
  "autovacuum_vacuum_threshold": 500,
  "autovacuum_vacuum_insert_scale_factor": 0.1,
  "autovacuum_analyze_scale_factor": 0.05,
  "autovacuum_analyze_threshold": 500
}');
select wahook.apply_storage_parameters('wahook.webhook_dlq', '{
  "autovacuum_vacuum_scale_factor": 0.05,
  "autovacuum_vacuum_threshold": 100,
  "autovacuum_analyze_scale_factor": 0.05,
  "autovacuum_analyze_threshold": 100
}');
