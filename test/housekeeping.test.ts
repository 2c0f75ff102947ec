// Daily housekeeping: operational logs past their retention, unused graphile-worker queues.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/db.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const q = async (sql: string, params: unknown[] = []) => (await db.pool.query(sql, params)).rows;

describe('wahook.purge_operational_logs', () => {
  it('deletes only rows past each retention, and never an open DLQ entry', async () => {
    await q(`insert into wahook.audit_log (at, action, details) values (now() - interval '401 days', 'old', '{}'), (now() - interval '399 days', 'recent', '{}')`);
    await q(`insert into wahook.dlq_processing_log (kind, started_at, outcome) values ('run', now() - interval '91 days', 'old'), ('run', now() - interval '89 days', 'recent')`);
    await q(`insert into wahook.webhook_dlq (task, payload, attempts, error_class, first_failed_at, last_failed_at, status, last_error)
             values ('t', '{}', 1, 'permanent', now(), now(), 'discarded', 'old closed'),
                    ('t', '{}', 1, 'permanent', now(), now(), 'exhausted', 'old open'),
                    ('t', '{}', 1, 'permanent', now(), now(), 'resolved', 'recent closed')`);
    // age them (updated_at is the clock of a closed entry)
    await q(`update wahook.webhook_dlq set updated_at = now() - interval '100 days' where last_error like 'old%'`);
    const r = await q(`select table_name, deleted::int from wahook.purge_operational_logs()`);
    expect(r).toEqual([
      { table_name: 'wahook.audit_log', deleted: 1 },
      { table_name: 'wahook.dlq_processing_log', deleted: 1 },
      { table_name: 'wahook.maintenance_log', deleted: 0 },
      { table_name: 'wahook.webhook_dlq', deleted: 1 },
    ]);
    expect((await q(`select action from wahook.audit_log where action in ('old', 'recent')`)).map((x) => x.action)).toEqual(['recent']);
    expect((await q(`select last_error from wahook.webhook_dlq order by id`)).map((x) => x.last_error)).toEqual(['old open', 'recent closed']);
    // the DLQ deletion is itself audited
    expect(await q(`select 1 from wahook.audit_log where table_name = 'wahook.webhook_dlq' and action = 'delete'`)).toHaveLength(1);
  });
});

describe('wahook.gc_job_queues', () => {
  it('removes unused wahook queues, keeps queues with jobs, and never one a concurrent transaction is adding to', async () => {
    await q(`select graphile_worker.add_job('process_wa_event', '{}', queue_name => 'wahook:conv:1:used')`);
    await q(`select graphile_worker.add_job('process_wa_event', '{}', queue_name => 'wahook:conv:1:unused')`);
    await q(`delete from graphile_worker._private_jobs where job_queue_id = (select id from graphile_worker._private_job_queues where queue_name = 'wahook:conv:1:unused')`);
    const a = new pg.Client({ connectionString: db.url });
    await a.connect();
    try {
      // an uncommitted job on a queue that has no committed job yet
      await a.query('begin');
      await a.query(`select graphile_worker.add_job('process_wa_event', '{}', queue_name => 'wahook:conv:1:racing')`);
      const blocked = await q(`select wahook.gc_job_queues() as n`);
      expect(blocked[0].n).toBe('0'); // gave up on the lock rather than delete under the writer
      await a.query('commit');
    } finally {
      await a.end();
    }
    const removed = await q(`select wahook.gc_job_queues() as n`);
    expect(removed[0].n).toBe('1');
    const left = (await q(`select queue_name from graphile_worker._private_job_queues where queue_name like 'wahook:conv:1:%' order by 1`)).map((x) => x.queue_name);
    expect(left).toEqual(['wahook:conv:1:racing', 'wahook:conv:1:used']);
  });
});
