// A real PostgreSQL stopped and restarted under a running receiver (never 200 for what was not stored) and under
// a running worker process (it carries on; the attempt the restart cut off is found by the sweeper and run again).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbedded, type EmbeddedDatabase } from '../src/db/embedded.ts';
import { migrate } from '../src/db/migrate.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { waitFor } from './helpers/db.ts';
import { fixture } from './helpers/fixtures.ts';
import { childEnv, spawnWahook, type WahookProcess } from './helpers/process.ts';
import { post, quietLogger, testReceiver } from './helpers/receiver.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'wahook-down-'));
const workerDir = mkdtempSync(path.join(os.tmpdir(), 'wahook-down-worker-'));
let pgServer: EmbeddedDatabase | undefined;
let receiver: RunningReceiver | undefined;
let worker: WahookProcess | undefined;

afterAll(async () => {
  if (worker && worker.child.exitCode === null) worker.child.kill('SIGKILL');
  await receiver?.close();
  await pgServer?.stop();
  rmSync(dir, { recursive: true, force: true });
  rmSync(workerDir, { recursive: true, force: true });
});

describe('database unreachable', () => {
  it('answers 503 (never 200) while PostgreSQL is down, and stores again once it is back', async () => {
    const log = quietLogger('pg');
    pgServer = await startEmbedded(dir, log);
    await migrate(pgServer.url, log);
    receiver = await testReceiver(pgServer.url);

    const a = fixture('text-message');
    expect((await post(receiver.webhookUrl, a.body, a.signature)).status).toBe(200);

    await pgServer.stop();
    const b = fixture('batch-mixed');
    const down = await post(receiver.webhookUrl, b.body, b.signature);
    expect(down.status).toBe(503);
    expect(down.headers.get('retry-after')).toBe('30');
    expect((await fetch(`${receiver.url}/readyz`)).status).toBe(503);
    expect((await fetch(`${receiver.url}/healthz`)).status).toBe(200);

    pgServer = await startEmbedded(dir, log);
    // Meta's retry of the refused POST now succeeds
    const retried = await post(receiver.webhookUrl, b.body, b.signature);
    expect(retried.status).toBe(200);
    expect(await retried.json()).toMatchObject({ notifications: 3, duplicates: 0 });

    const c = new pg.Client({ connectionString: pgServer.url });
    await c.connect();
    const r = await c.query<{ logs: number; events: number }>(
      'select (select count(*) from wahook.webhook_logs)::int as logs, (select count(*) from wahook.wa_events)::int as events',
    );
    await c.end();
    expect(r.rows[0]).toEqual({ logs: 2, events: 4 });
  });
});

describe('database restarted under a running worker process', () => {
  it('keeps running; the attempt the restart cut off is swept and run again; later events are processed', async () => {
    const log = quietLogger('pg');
    // a server of its own: only this test's events in it
    await receiver?.close();
    await pgServer?.stop();
    receiver = undefined;
    pgServer = await startEmbedded(workerDir, log);
    await migrate(pgServer.url, log);
    receiver = await testReceiver(pgServer.url);
    const url = pgServer.url;
    const q = async <T extends pg.QueryResultRow>(sql: string): Promise<T[]> => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        return (await c.query<T>(sql)).rows;
      } finally {
        await c.end();
      }
    };
    worker = spawnWahook(['worker'], childEnv({
      DATABASE_URL: url,
      WAHOOK_HANDLERS: path.resolve('test/fixtures/handlers/slow-other.mjs'),
      WAHOOK_LOG_LEVEL: 'info',
    }));
    await worker.waitFor(/worker started/);

    const t = fixture('template-status-update');
    expect((await post(receiver.webhookUrl, t.body, t.signature)).status).toBe(200);
    await waitFor(async () => (await q(`select 1 from wahook.wa_events where kind = 'other' and state = 'processing'`)).length === 1,
      10_000, 'the slow attempt to start');
    await pgServer.stop(); // under the attempt: its commit cannot happen
    await new Promise((r) => setTimeout(r, 2500)); // the handler returns meanwhile and finds the database gone
    pgServer = await startEmbedded(workerDir, log);
    expect(worker.child.exitCode, worker.output()).toBeNull();
    // (usually graphile-worker's "job failed" statement met the stopped database and was logged as lost, the path
    // that made the process exit before; on a slow machine it may wait for the restart and succeed instead)

    // the cut-off attempt left its job locked; the sweeper (every 5 minutes from the crontab) finds it
    await waitFor(async () => (await q(`select * from wahook.sweep(now() + interval '1 minute')`)).length === 1
      || (await q(`select 1 from wahook.wa_events where kind = 'other' and state = 'done'`)).length === 1, 20_000, 'the sweeper');
    await waitFor(async () => (await q(`select 1 from wahook.wa_events where kind = 'other' and state = 'done'`)).length === 1,
      20_000, 'the swept event to be processed');

    const m = fixture('text-message');
    expect((await post(receiver.webhookUrl, m.body, m.signature)).status).toBe(200);
    await waitFor(async () => (await q(`select 1 from wahook.wa_events where kind = 'message' and state = 'done'`)).length >= 1,
      30_000, 'an event stored after the restart to be processed');
    expect(await q(`select state, count(*)::int as n from wahook.wa_events where state <> 'done' group by state`)).toEqual([]);
    expect(await q(`select 1 from graphile_worker._private_jobs`)).toEqual([]);
    expect(worker.child.exitCode, worker.output()).toBeNull();
  }, 90_000);
});
