-- Least privilege. Four roles, created by `wahook setup-roles` (a DBA with CREATEROLE; never in a migration, and
-- never with a password from code):
--   wahook_receiver  calls wahook.ingest; reads nothing
--   wahook_worker    processes events, sends, moves jobs to the DLQ, writes logs; graphile-worker's own tables
--   wahook_admin     reads everything, replays and discards DLQ entries, changes settings, reads the audit log
--   wahook_monitor   reads the aggregate metrics views (for postgres_exporter), with a statement timeout
-- Tables carry no privileges for the receiver and few for the others: writes go through wahook's functions, the
-- entry points below being SECURITY DEFINER (they run as the schema owner) with `search_path = ''` and EXECUTE
-- granted to the roles that need them only. Row-level security is on for every table; policies are named
-- <command>_<who>. This file re-applies everything on each migrate, so a new function or table cannot slip through
-- with default privileges.

-- Roles the cluster has, for grants (a database without `wahook setup-roles` simply gets none).
create or replace function wahook.role_exists(p_role text) returns boolean
language sql stable
as $$
  select exists (select from pg_catalog.pg_roles as r where r.rolname = p_role)
$$;

-- Create the four roles if missing (needs CREATEROLE). LOGIN without a password: set one with
-- `alter role … password …`, or use certificate or peer authentication. Then grants are applied.
create or replace function wahook.setup_roles() returns setof text
language plpgsql volatile
as $$
declare
  v_role text;
begin
  foreach v_role in array array['wahook_receiver', 'wahook_worker', 'wahook_admin', 'wahook_monitor'] loop
    if not wahook.role_exists(v_role) then
      execute pg_catalog.format('create role %I login', v_role);
      return next v_role;
    end if;
  end loop;
  -- dashboards must never hold locks or run long
  execute pg_catalog.format('alter role %I set statement_timeout = %L', 'wahook_monitor', '5s');
  execute pg_catalog.format('alter role %I set lock_timeout = %L', 'wahook_monitor', '1s');
  perform wahook.apply_grants();
end;
$$;

-- Set the login password of one of wahook's roles (used by `wahook start` on its embedded database, where wahook
-- makes the passwords itself and keeps them in the data directory). Needs CREATEROLE; PUBLIC cannot call it.
create or replace function wahook.set_login_password(p_role text, p_password text) returns void
language plpgsql volatile
as $$
begin
  if p_role not in ('wahook_receiver', 'wahook_worker', 'wahook_admin', 'wahook_monitor') then
    raise exception using errcode = 'WH031', message = pg_catalog.format('wahook.set_login_password: %L is not a wahook role', p_role);
  end if;
  if pg_catalog.length(p_password) < 16 then
    raise exception using errcode = 'WH031', message = 'wahook.set_login_password: use a password of at least 16 characters';
  end if;
  execute pg_catalog.format('alter role %I login password %L', p_role, p_password);
end;
$$;

-- Entry points: who may call what. A function named here that does not exist (yet) is skipped.
create or replace function wahook.entry_points() returns table (fn text, roles text[])
language sql immutable
as $$
  values
    ('wahook.ingest(bytea[], smallint[], text[])', array['wahook_receiver']),
    ('wahook.schema_ready(text[])', array['wahook_receiver', 'wahook_worker', 'wahook_admin', 'wahook_monitor']),
    ('wahook.claim_event(bigint, timestamptz)', array['wahook_worker']),
    ('wahook.begin_attempt(bigint)', array['wahook_worker']),
    ('wahook.end_attempt(bigint)', array['wahook_worker']),
    ('wahook.apply_event(bigint, timestamptz)', array['wahook_worker']),
    ('wahook.complete_event(bigint, timestamptz)', array['wahook_worker']),
    ('wahook.job_failed(bigint, text, text, text, interval, timestamptz)', array['wahook_worker']),
    ('wahook.dlq_resolve(bigint, numeric)', array['wahook_worker']),
    ('wahook.dlq_enqueue_retry(bigint, timestamptz)', array['wahook_worker']),
    ('wahook.dlq_process(timestamptz, integer)', array['wahook_worker', 'wahook_admin']),
    ('wahook.sweep(timestamptz)', array['wahook_worker', 'wahook_admin']),
    ('wahook.enqueue_message(text, text, jsonb, bigint, timestamptz)', array['wahook_worker', 'wahook_admin']),
    ('wahook.prepare_send(bigint, text, timestamptz)', array['wahook_worker']),
    ('wahook.record_send_success(bigint, text, timestamptz)', array['wahook_worker']),
    ('wahook.record_send_failure(bigint, integer, integer, text, integer, boolean, timestamptz)', array['wahook_worker']),
    ('wahook.send_not_attempted(bigint)', array['wahook_worker']),
    ('wahook.open_breaker(text, timestamptz, text)', array['wahook_worker', 'wahook_admin']),
    ('wahook.maintain_partitions(timestamptz)', array['wahook_worker', 'wahook_admin']),
    ('wahook.purge_dedupe_keys(integer)', array['wahook_worker', 'wahook_admin']),
    ('wahook.partition_status()', array['wahook_admin']),
    ('wahook.purge_operational_logs(timestamptz, integer)', array['wahook_worker', 'wahook_admin']),
    ('wahook.gc_job_queues()', array['wahook_worker', 'wahook_admin']),
    ('wahook.dlq_replay(bigint[], text, boolean)', array['wahook_admin']),
    ('wahook.dlq_replay_where(text, text, text, interval, text, boolean)', array['wahook_admin']),
    ('wahook.dlq_discard(bigint[], text, text)', array['wahook_admin']),
    ('wahook.dlq_select(text, text, interval, text, text[], interval)', array['wahook_admin']),
    ('wahook.accounting(timestamptz, timestamptz)', array['wahook_admin', 'wahook_monitor']),
    ('wahook.audit_write(text, text, text, text, jsonb, jsonb, jsonb)', array[]::text[])
$$;

-- Readiness without reading graphile-migrate's table: how many of the given migration hashes are applied.
create or replace function wahook.schema_ready(p_hashes text[]) returns integer
language plpgsql stable
as $$
declare
  v_n integer := 0;
begin
  if pg_catalog.to_regclass('graphile_migrate.migrations') is not null then
    execute 'select count(*)::integer from graphile_migrate.migrations where hash = any($1)' into v_n using p_hashes;
  end if;
  return v_n;
end;
$$;

-- Aggregate views for dashboards and postgres_exporter. They run with the owner's rights (no per-row access
-- for the monitor) and return counts only: no phone numbers, no message ids.
create or replace view wahook.metrics_events as
  select e.kind, e.state, pg_catalog.count(*)::bigint as events,
         pg_catalog.min(e.received_at) filter (where e.state in ('pending', 'retrying')) as oldest_open_at
    from wahook.wa_events as e
   where e.received_at > pg_catalog.now() - interval '8 days'
   group by e.kind, e.state;

create or replace view wahook.metrics_dlq as
  select d.task, d.status, d.error_class, pg_catalog.count(*)::bigint as entries,
         pg_catalog.min(d.dead_lettered_at) as oldest_at
    from wahook.webhook_dlq as d
   group by d.task, d.status, d.error_class;

create or replace view wahook.metrics_outbox as
  select m.status, pg_catalog.count(*)::bigint as messages, pg_catalog.min(m.created_at) as oldest_at
    from wahook.whatsapp_messages as m
   where m.direction = 'outbound' and m.created_at > pg_catalog.now() - interval '8 days'
   group by m.status;

create or replace view wahook.metrics_breakers as
  select b.state, pg_catalog.count(*)::bigint as breakers
    from wahook.send_breakers as b
   group by b.state;

create or replace view wahook.metrics_maintenance as
  select c.parent, c.last_run_at, c.last_success_at,
         extract(epoch from pg_catalog.now() - c.last_success_at) as seconds_since_success
    from wahook.partition_config as c;

-- Grants and policies for the roles that exist. Idempotent; run by every migrate and by setup_roles.
create or replace function wahook.apply_grants() returns void
language plpgsql volatile
as $$
declare
  v_role text;
  v_fn record;
  v_sig regprocedure;
  v_table text;
  r text;
  all_roles text[] := array['wahook_receiver', 'wahook_worker', 'wahook_admin', 'wahook_monitor'];
begin
  -- Nothing is executable by PUBLIC; helpers are executable by wahook's roles (they only compute).
  execute 'revoke all on all functions in schema wahook from public';
  foreach v_role in array all_roles loop
    if wahook.role_exists(v_role) then
      execute pg_catalog.format('grant usage on schema wahook to %I', v_role);
      execute pg_catalog.format('revoke all on all tables in schema wahook from %I', v_role);
      execute pg_catalog.format('revoke all on all functions in schema wahook from %I', v_role);
      foreach r in array array['wahook.jsonb_array(jsonb)', 'wahook.epoch_to_timestamptz(text)', 'wahook.sha256_hex(text)',
                                'wahook.status_rank(text)', 'wahook.status_supersedes(text, text)',
                                'wahook.graph_error_class(integer, integer)', 'wahook.setting(text, jsonb)',
                                'wahook.setting_interval(text, interval)', 'wahook.max_attempts(text)'] loop
        if pg_catalog.to_regprocedure(r) is not null then
          execute pg_catalog.format('grant execute on function %s to %I', pg_catalog.to_regprocedure(r), v_role);
        end if;
      end loop;
    end if;
  end loop;

  -- Entry points run as the owner; each is callable by the roles named above and by no one else.
  for v_fn in select * from wahook.entry_points() loop
    v_sig := pg_catalog.to_regprocedure(v_fn.fn);
    continue when v_sig is null;
    execute pg_catalog.format('alter function %s security definer set search_path = %L', v_sig, '');
    foreach v_role in array v_fn.roles loop
      if wahook.role_exists(v_role) then
        execute pg_catalog.format('grant execute on function %s to %I', v_sig, v_role);
      end if;
    end loop;
  end loop;
  -- triggers write audit rows through it; it must be callable by whoever changes an audited table
  foreach v_role in array array['wahook_worker', 'wahook_admin'] loop
    if wahook.role_exists(v_role) then
      execute pg_catalog.format('grant execute on function wahook.audit_write(text, text, text, text, jsonb, jsonb, jsonb) to %I', v_role);
      execute pg_catalog.format('grant execute on function wahook.audit_row_change() to %I', v_role);
    end if;
  end loop;

  -- Row-level security on every wahook table (partitions are reached through their parents only).
  for v_table in
    select pg_catalog.format('%I.%I', n.nspname, c.relname)
      from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
     where n.nspname = 'wahook' and c.relkind in ('r', 'p') and not c.relispartition
  loop
    execute pg_catalog.format('alter table %s enable row level security', v_table);
  end loop;

  -- Policies first, then the grants they allow.
  perform wahook.policy('wahook.wa_events', 'select', 'wahook_worker');
  perform wahook.policy('wahook.whatsapp_messages', 'select', 'wahook_worker');
  perform wahook.policy('wahook.settings', 'select', 'wahook_worker');
  perform wahook.policy('wahook.send_breakers', 'select', 'wahook_worker');
  perform wahook.policy('wahook.send_pauses', 'select', 'wahook_worker');
  foreach v_table in array array['wahook.webhook_logs', 'wahook.wa_events', 'wahook.dedupe_keys', 'wahook.whatsapp_messages',
                                  'wahook.settings', 'wahook.webhook_dlq', 'wahook.dlq_processing_log', 'wahook.audit_log',
                                  'wahook.send_breakers', 'wahook.send_pauses', 'wahook.send_pacing',
                                  'wahook.partition_config', 'wahook.maintenance_log'] loop
    perform wahook.policy(v_table, 'select', 'wahook_admin');
  end loop;
  perform wahook.policy('wahook.settings', 'update', 'wahook_admin');
  perform wahook.policy('wahook.settings', 'insert', 'wahook_admin');
  perform wahook.policy('wahook.partition_config', 'update', 'wahook_admin');
  perform wahook.policy('wahook.send_breakers', 'update', 'wahook_admin');
  perform wahook.policy('wahook.send_pauses', 'delete', 'wahook_admin');

  if wahook.role_exists('wahook_worker') then
    execute 'grant select on wahook.wa_events, wahook.whatsapp_messages, wahook.settings, wahook.send_breakers, wahook.send_pauses to wahook_worker';
    -- graphile-worker runs its own queries and functions on its schema as the worker
    execute 'grant usage on schema graphile_worker to wahook_worker';
    execute 'grant select, insert, update, delete on all tables in schema graphile_worker to wahook_worker';
    execute 'grant usage, select, update on all sequences in schema graphile_worker to wahook_worker';
    execute 'grant execute on all functions in schema graphile_worker to wahook_worker';
    -- graphile-worker turns row-level security on for its private tables with no policies (only their owner may
    -- touch them); the worker role is the queue's user, so it gets an all_worker policy on each.
    for v_table in
      select pg_catalog.format('%I.%I', n.nspname, c.relname)
        from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
       where n.nspname = 'graphile_worker' and c.relkind in ('r', 'p') and c.relrowsecurity
    loop
      perform wahook.policy(v_table, 'all', 'wahook_worker');
    end loop;
  end if;
  if wahook.role_exists('wahook_admin') then
    execute 'grant select on all tables in schema wahook to wahook_admin';
    execute 'grant insert, update (value, description, updated_at) on wahook.settings to wahook_admin';
    execute 'grant update (premake, retention, storage_parameters) on wahook.partition_config to wahook_admin';
    execute 'grant update (state, failures, retry_at, probe_by, reason, updated_at) on wahook.send_breakers to wahook_admin';
    execute 'grant delete on wahook.send_pauses to wahook_admin';
    execute 'grant usage on schema graphile_worker to wahook_admin';
    execute 'grant select on graphile_worker.jobs to wahook_admin';
  end if;
  if wahook.role_exists('wahook_monitor') then
    execute 'grant select on wahook.metrics_events, wahook.metrics_dlq, wahook.metrics_outbox, wahook.metrics_breakers, wahook.metrics_maintenance to wahook_monitor';
  end if;
end;
$$;

-- A permissive policy <command>_<who> on a table for one role (true: access is decided by the grants and the
-- functions; the policy makes RLS explicit and fails closed for any role not named).
create or replace function wahook.policy(p_table text, p_command text, p_role text) returns void
language plpgsql volatile
as $$
declare
  v_name text := p_command || '_' || pg_catalog.replace(p_role, 'wahook_', '');
  v_rel regclass := p_table::regclass;
begin
  if p_command not in ('select', 'insert', 'update', 'delete', 'all') then
    raise exception using errcode = 'WH030', message = pg_catalog.format('wahook.policy: unknown command %L', p_command);
  end if;
  if not wahook.role_exists(p_role) then
    return;
  end if;
  if not exists (select from pg_catalog.pg_policy as p where p.polrelid = v_rel and p.polname = v_name) then
    execute pg_catalog.format('create policy %I on %s for %s to %I %s', v_name, v_rel, p_command, p_role,
      case p_command when 'insert' then 'with check (true)' when 'update' then 'using (true) with check (true)'
                     when 'all' then 'using (true) with check (true)' else 'using (true)' end);
  end if;
end;
$$;

select wahook.apply_grants();
