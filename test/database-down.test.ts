// A real PostgreSQL stopped and restarted under a running receiver: never 200 for what was not stored.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbedded, type EmbeddedDatabase } from '../src/db/embedded.ts';
import { migrate } from '../src/db/migrate.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { fixture } from './helpers/fixtures.ts';
import { post, quietLogger, testReceiver } from './helpers/receiver.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'wahook-down-'));
let pgServer: EmbeddedDatabase | undefined;
let receiver: RunningReceiver | undefined;

afterAll(async () => {
  await receiver?.close();
  await pgServer?.stop();
  rmSync(dir, { recursive: true, force: true });
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
