// Least privilege: what each role may and may not do, each proved by a real statement, and the receiver and the
// worker running as their own roles end to end.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PermanentError } from '../src/errors.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { createTestDatabase, waitFor, type TestDatabase } from './helpers/db.ts';
import { fixture } from './helpers/fixtures.ts';
import { post, testReceiver } from './helpers/receiver.ts';
import { settled, startTestWorker, type TestWorker } from './helpers/worker.ts';

let db: TestDatabase;
let client: pg.Client;

beforeAll(async () => {
  db = await createTestDatabase();
  client = new pg.Client({ connectionString: db.url });
  await client.connect();
  // something for the roles to (not) see
  const f = fixture('text-message');
  await client.query(`select * from wahook.ingest(array[$1::bytea], array[0]::smallint[], array['fp'])`, [f.body]);
  await client.query(`insert into wahook.webhook_dlq (task, payload, attempts, error_class, first_failed_at, last_failed_at)
                      values ('process_wa_event', '{"id": 1, "at": "2026-01-01T00:00:00Z"}', 3, 'transient', now(), now())`);
});
afterAll(async () => {
  await client?.end();
  await db?.drop();
});

/** Run sql as role inside a transaction that is rolled back; resolves 'ok' or the error's SQLSTATE. */
async function as(role: string, sql: string, params: unknown[] = []): Promise<string> {
  await client.query('begin');
  try {
    await client.query(`set local role ${role}`);
    await client.query(sql, params);
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  } finally {
    await client.query('rollback');
  }
}

const DENIED = '42501';
const body = fixture('batch-mixed').body;
const ingest = [`select * from wahook.ingest(array[$1::bytea], array[0]::smallint[], array['fp'])`, [body]] as const;

const table: Array<[role: string, what: string, sql: string, params: readonly unknown[], expected: string]> = [
  ['wahook_receiver', 'call ingest', ingest[0], ingest[1], 'ok'],
  ['wahook_receiver', 'check readiness', `select wahook.schema_ready(array['x'])`, [], 'ok'],
  ['wahook_receiver', 'read events', `select * from wahook.wa_events`, [], DENIED],
  ['wahook_receiver', 'read raw webhooks', `select * from wahook.webhook_logs`, [], DENIED],
  ['wahook_receiver', 'read the DLQ', `select * from wahook.webhook_dlq`, [], DENIED],
  ['wahook_receiver', 'write a log row directly', `insert into wahook.webhook_logs (body, signature_key, secret_fingerprint, parse_status) values ('\\x00', 0, 'x', 'ok')`, [], DENIED],
  ['wahook_receiver', 'claim an event', `select * from wahook.claim_event(1, now())`, [], DENIED],
  ['wahook_receiver', 'add a job directly', `select graphile_worker.add_job('process_wa_event', '{}')`, [], DENIED],

  ['wahook_worker', 'claim an event', `select * from wahook.claim_event(1, now())`, [], 'ok'],
  ['wahook_worker', 'read events', `select count(*) from wahook.wa_events`, [], 'ok'],
  ['wahook_worker', 'queue a message', `select wahook.enqueue_message('100000000000001', '447700900123', '{"type":"text","text":{"body":"hi"}}')`, [], 'ok'],
  ['wahook_worker', 'move a job to the DLQ', `select * from wahook.job_failed(0, 'permanent', 'x')`, [], 'ok'],
  ['wahook_worker', 'run the DLQ processor', `select * from wahook.dlq_process()`, [], 'ok'],
  ['wahook_worker', 'use graphile-worker', `select graphile_worker.add_job('wahook_dlq_process', '{}')`, [], 'ok'],
  ['wahook_worker', 'read the DLQ', `select * from wahook.webhook_dlq`, [], DENIED],
  ['wahook_worker', 'read the audit log', `select * from wahook.audit_log`, [], DENIED],
  ['wahook_worker', 'replay DLQ entries', `select * from wahook.dlq_replay(array[1::bigint], 'w')`, [], DENIED],
  ['wahook_worker', 'discard DLQ entries', `select * from wahook.dlq_discard(array[1::bigint], 'r', 'w')`, [], DENIED],
  ['wahook_worker', 'change settings', `update wahook.settings set value = '1' where key = 'dlq.auto_retry'`, [], DENIED],
  ['wahook_worker', 'read raw webhooks', `select * from wahook.webhook_logs`, [], DENIED],
  ['wahook_worker', 'ingest', ingest[0], ingest[1], DENIED],

  ['wahook_admin', 'read the DLQ', `select * from wahook.webhook_dlq`, [], 'ok'],
  ['wahook_admin', 'read the audit log', `select * from wahook.audit_log`, [], 'ok'],
  ['wahook_admin', 'read raw webhooks', `select * from wahook.webhook_logs`, [], 'ok'],
  ['wahook_admin', 'replay (dry run)', `select * from wahook.dlq_replay(array[1::bigint], 'ana', true)`, [], 'ok'],
  ['wahook_admin', 'replay', `select * from wahook.dlq_replay(array[1::bigint], 'ana')`, [], 'ok'],
  ['wahook_admin', 'discard', `select * from wahook.dlq_discard(array[1::bigint], 'test', 'ana')`, [], 'ok'],
  ['wahook_admin', 'change settings', `update wahook.settings set value = 'false' where key = 'dlq.auto_retry'`, [], 'ok'],
  ['wahook_admin', 'rewrite a DLQ entry directly', `update wahook.webhook_dlq set status = 'resolved'`, [], DENIED],
  ['wahook_admin', 'forge an audit row', `insert into wahook.audit_log (action) values ('x')`, [], DENIED],
  ['wahook_admin', 'erase the audit log', `delete from wahook.audit_log`, [], DENIED],
  ['wahook_admin', 'ingest', ingest[0], ingest[1], DENIED],

  ['wahook_monitor', 'read event metrics', `select * from wahook.metrics_events`, [], 'ok'],
  ['wahook_monitor', 'read DLQ metrics', `select * from wahook.metrics_dlq`, [], 'ok'],
  ['wahook_monitor', 'read outbox and breaker metrics', `select * from wahook.metrics_outbox, wahook.metrics_breakers`, [], 'ok'],
  ['wahook_monitor', 'read events', `select * from wahook.wa_events`, [], DENIED],
  ['wahook_monitor', 'read the DLQ', `select * from wahook.webhook_dlq`, [], DENIED],
  ['wahook_monitor', 'read messages', `select * from wahook.whatsapp_messages`, [], DENIED],
  ['wahook_monitor', 'ingest', ingest[0], ingest[1], DENIED],
];

describe('what each role may and may not do', () => {
  it.each(table)('%s: %s → %s', async (role, _what, sql, params, expected) => {
    expect(await as(role, sql, [...params])).toBe(expected === 'ok' ? 'ok' : expected);
  });
});

describe('row-level security and functions', () => {
  it('every wahook table has row-level security on, with policies named <command>_<who>', async () => {
    const r = await client.query<{ relname: string; relrowsecurity: boolean }>(
      `select c.relname, c.relrowsecurity from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'wahook' and c.relkind in ('r', 'p') and not c.relispartition order by 1`);
    expect(r.rows.length).toBeGreaterThanOrEqual(13);
    expect(r.rows.filter((t) => !t.relrowsecurity)).toEqual([]);
    const policies = await client.query<{ polname: string }>(
      `select distinct polname from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'wahook'`);
    for (const p of policies.rows) expect(p.polname).toMatch(/^(select|insert|update|delete)_(receiver|worker|admin|monitor)$/);
  });

  it('security definer functions pin search_path and are not executable by PUBLIC', async () => {
    const r = await client.query<{ proname: string; proconfig: string[] | null; public_exec: boolean }>(
      `select p.proname, p.proconfig, has_function_privilege('public', p.oid, 'execute') as public_exec
         from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'wahook' and p.prosecdef`);
    expect(r.rows.map((x) => x.proname)).toEqual(expect.arrayContaining(['ingest', 'job_failed', 'dlq_replay', 'enqueue_message']));
    for (const f of r.rows) {
      expect(f.proconfig, f.proname).toContain('search_path=""');
      expect(f.public_exec, f.proname).toBe(false);
    }
  });

  it('the monitor has a statement timeout', async () => {
    const r = await client.query(`select rolconfig from pg_roles where rolname = 'wahook_monitor'`);
    expect(r.rows[0].rolconfig).toContain('statement_timeout=5s');
  });

  it('changes to settings and the DLQ are audited with the acting role', async () => {
    await client.query('begin');
    try {
      await client.query('set local role wahook_admin');
      await client.query(`update wahook.settings set value = '7' where key = 'process_wa_event.max_attempts'`);
      await client.query('reset role');
      const a = await client.query(`select db_role, action, before ->> 'value' as before, after ->> 'value' as after
                                      from wahook.audit_log where row_id = 'process_wa_event.max_attempts' order by id desc limit 1`);
      expect(a.rows[0]).toEqual({ db_role: 'wahook_admin', action: 'update', before: '10', after: '7' });
    } finally {
      await client.query('rollback');
    }
  });
});

describe('receiver and worker as their roles', () => {
  let receiver: RunningReceiver | undefined;
  let tw: TestWorker | undefined;
  afterAll(async () => {
    await tw?.worker.stop();
    await receiver?.close();
  });

  it('ingest, processing and a permanent failure to the DLQ work with role-specific URLs', async () => {
    const urlFor = async (role: string) => {
      const password = randomBytes(12).toString('hex');
      await client.query(`alter role ${role} password '${password}'`);
      const u = new URL(db.url);
      u.username = role;
      u.password = password;
      return u.toString();
    };
    receiver = await testReceiver(await urlFor('wahook_receiver'));
    tw = await startTestWorker(await urlFor('wahook_worker'));
    tw.behaviour.other = () => {
      throw new PermanentError('as the worker role', 'ROLE_TEST');
    };
    const f = fixture('template-status-update');
    expect((await post(receiver.webhookUrl, f.body, f.signature)).status).toBe(200);
    expect((await fetch(`${receiver.url}/readyz`)).status).toBe(200);
    await settled(db.pool);
    await waitFor(async () => (await client.query(`select 1 from wahook.webhook_dlq where error_code = 'ROLE_TEST'`)).rowCount === 1);
  });
});
