-- Housekeeping the daily maintenance task runs after the partitions: operational logs past their retention, and
-- graphile-worker queue rows nothing uses any more (one per conversation and per recipient would otherwise stay
-- forever).

insert into wahook.settings (key, value, description) values
  ('retention.audit_log', '"400 days"', 'How long wahook.audit_log rows are kept (who did what to the DLQ and the settings).'),
  ('retention.dlq_processing_log', '"90 days"', 'How long wahook.dlq_processing_log rows are kept.'),
  ('retention.maintenance_log', '"90 days"', 'How long wahook.maintenance_log rows are kept.'),
  ('retention.closed_dlq_entries', '"90 days"', 'How long resolved, replayed and discarded DLQ entries are kept (open ones stay until handled).')
on conflict (key) do nothing;

-- Delete rows past their retention in bounded batches. Returns, per table, how many rows went.
create or replace function wahook.purge_operational_logs(p_now timestamptz default pg_catalog.now(), p_batch integer default 10000)
returns table (table_name text, deleted bigint)
language plpgsql volatile
as $$
declare
  v_n bigint;
begin
  return query
  select t.name::text, wahook.delete_older_than(t.name, t.col, p_now - wahook.setting_interval(t.setting, t.fallback), p_batch)
    from (values ('wahook.audit_log'::regclass, 'at', 'retention.audit_log', interval '400 days', 1),
                 ('wahook.dlq_processing_log'::regclass, 'started_at', 'retention.dlq_processing_log', interval '90 days', 2),
                 ('wahook.maintenance_log'::regclass, 'started_at', 'retention.maintenance_log', interval '90 days', 3))
         as t(name, col, setting, fallback, ord)
   order by t.ord;

  -- Closed DLQ entries only; their deletion is audited like every DLQ change. Entries another entry replays
  -- (replay_of) go with the newest of their chain, so the reference never dangles.
  table_name := 'wahook.webhook_dlq';
  deleted := 0;
  loop
    delete from wahook.webhook_dlq where id in (
      select d.id from wahook.webhook_dlq as d
       where d.status in ('resolved', 'replayed', 'discarded')
         and d.updated_at < p_now - wahook.setting_interval('retention.closed_dlq_entries', interval '90 days')
         and not exists (select from wahook.webhook_dlq as later where later.replay_of = d.id)
       limit p_batch);
    get diagnostics v_n = row_count;
    deleted := deleted + v_n;
    exit when v_n < p_batch;
  end loop;
  return next;
end;
$$;

-- graphile-worker keeps a row per named queue. wahook names a queue per conversation and per recipient, so
-- unused ones are removed here. The table lock (SHARE ROW EXCLUSIVE) waits for transactions adding jobs to a queue
-- and blocks new ones for the moment of the delete: a queue cannot vanish between add_jobs creating or finding it
-- and inserting the job that uses it. A busy queue table makes it give up after 2 s (it runs again tomorrow).
create or replace function wahook.gc_job_queues() returns bigint
language plpgsql volatile
as $$
declare
  v_n bigint;
begin
  set local lock_timeout = '2s';
  lock table graphile_worker._private_job_queues in share row exclusive mode;
  delete from graphile_worker._private_job_queues as q
   where q.locked_at is null
     and q.queue_name like 'wahook:%'
     and not exists (select from graphile_worker._private_jobs as j where j.job_queue_id = q.id);
  get diagnostics v_n = row_count;
  return v_n;
exception when lock_not_available then
  return 0;
end;
$$;
