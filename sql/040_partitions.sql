-- Monthly partitions (UTC months). Names: <table>_pYYYYMM. Dynamic DDL only through format('%I', ...).

-- Create the partition of p_parent for the month that contains p_month, if missing. Rows of that month that
-- landed in the default partition (because the partition was missing) are moved into it first.
-- Returns true when a partition was created.
create or replace function wahook.create_month_partition(p_parent regclass, p_month date)
returns boolean
language plpgsql volatile
as $$
declare
  v_schema text;
  v_table text;
  v_from timestamptz := (pg_catalog.date_trunc('month', p_month)::timestamp at time zone 'UTC');
  v_to timestamptz := ((pg_catalog.date_trunc('month', p_month) + interval '1 month')::timestamp at time zone 'UTC');
  v_name text;
  v_default text;
  v_moved bigint;
begin
  select n.nspname, c.relname into v_schema, v_table
    from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
   where c.oid = p_parent;
  v_name := v_table || '_p' || pg_catalog.to_char(p_month, 'YYYYMM');

  if pg_catalog.to_regclass(pg_catalog.format('%I.%I', v_schema, v_name)) is not null then
    return false;
  end if;

  select c.relname into v_default
    from pg_catalog.pg_inherits as i
    join pg_catalog.pg_class as c on c.oid = i.inhrelid
   where i.inhparent = p_parent and pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

  execute pg_catalog.format('create table %I.%I (like %I.%I including defaults including constraints)',
                            v_schema, v_name, v_schema, v_table);
  if v_default is not null then
    execute pg_catalog.format(
      'with moved as (delete from %I.%I where received_at >= %L and received_at < %L returning *) '
      'insert into %I.%I select * from moved',
      v_schema, v_default, v_from, v_to, v_schema, v_name);
    get diagnostics v_moved = row_count;
    if v_moved > 0 then
      raise notice 'wahook: moved % rows of % from %.% into %.%', v_moved, pg_catalog.to_char(p_month, 'YYYY-MM'),
        v_schema, v_default, v_schema, v_name;
    end if;
  end if;
  execute pg_catalog.format('alter table %I.%I attach partition %I.%I for values from (%L) to (%L)',
                            v_schema, v_table, v_schema, v_name, v_from, v_to);
  return true;
end;
$$;

-- Partitions for this month and p_months_ahead months after it, for every partitioned wahook table.
-- Returns the names of the partitions it created.
create or replace function wahook.ensure_partitions(p_months_ahead integer default 1)
returns setof text
language plpgsql volatile
as $$
declare
  v_parent regclass;
  v_month date;
begin
  -- One run at a time: concurrent callers wait for each other rather than race on the same DDL.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('wahook.ensure_partitions'));
  foreach v_parent in array array['wahook.wa_events'::regclass, 'wahook.webhook_logs'::regclass] loop
    for i in 0 .. p_months_ahead loop
      v_month := (pg_catalog.date_trunc('month', pg_catalog.now() at time zone 'UTC') + pg_catalog.make_interval(months => i))::date;
      if wahook.create_month_partition(v_parent, v_month) then
        return next v_parent::text || ' ' || pg_catalog.to_char(v_month, 'YYYY-MM');
      end if;
    end loop;
  end loop;
end;
$$;

-- Dedupe keys older than the retention (default 8 days: Meta's 7-day retry window plus a day) are removed in
-- bounded batches. Returns how many were removed.
create or replace function wahook.purge_dedupe_keys(p_batch integer default 10000)
returns bigint
language plpgsql volatile
as $$
declare
  v_cutoff timestamptz := pg_catalog.now() - (wahook.setting('dedupe.retention', '"8 days"') #>> '{}')::interval;
  v_total bigint := 0;
  v_n bigint;
begin
  loop
    delete from wahook.dedupe_keys
     where key in (select d.key from wahook.dedupe_keys as d where d.first_seen_at < v_cutoff limit p_batch);
    get diagnostics v_n = row_count;
    v_total := v_total + v_n;
    exit when v_n < p_batch;
  end loop;
  return v_total;
end;
$$;
