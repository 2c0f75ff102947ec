// The receiver through a real PgBouncer in transaction pooling mode, connecting as wahook_receiver.
// CI installs PgBouncer (Debian package); on a machine without it this file is skipped outside CI, never in CI.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../src/db/embedded.ts';
import { sign } from '../src/receiver/signature.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { createTestDatabase, waitFor, type TestDatabase } from './helpers/db.ts';
import { fixture, FIXTURE_SECRET } from './helpers/fixtures.ts';
import { post, testReceiver } from './helpers/receiver.ts';

const binary = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer'].find((p) => existsSync(p));
const available = binary !== undefined;
if (!available && process.env.CI) throw new Error('PgBouncer is not installed: .ci/run installs the Debian package pgbouncer');

let db: TestDatabase;
let dir: string;
let bouncer: ChildProcess | undefined;
let receiver: RunningReceiver | undefined;
let bouncerLog = '';

describe.skipIf(!available)('receiver through PgBouncer (transaction pooling)', () => {
  beforeAll(async () => {
    db = await createTestDatabase();
    const password = randomBytes(18).toString('base64url');
    await db.pool.query('select wahook.set_login_password($1, $2)', ['wahook_receiver', password]);
    const target = new URL(db.url);
    const port = await freePort();
    dir = mkdtempSync(path.join(os.tmpdir(), 'wahook-pgbouncer-'));
    chmodSync(dir, 0o777); // pgbouncer runs as the postgres user when we are root
    writeFileSync(path.join(dir, 'pgbouncer.ini'), [
      '[databases]',
      `${db.name} = host=${target.hostname} port=${target.port || 5432} dbname=${db.name} user=wahook_receiver password=${password}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = any',
      'pool_mode = transaction',
      'default_pool_size = 3',
      'max_client_conn = 200',
      'ignore_startup_parameters = extra_float_digits',
      `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
      '',
    ].join('\n'));
    chmodSync(path.join(dir, 'pgbouncer.ini'), 0o644);
    const asRoot = process.getuid?.() === 0;
    bouncer = spawn(binary!, [...(asRoot ? ['-u', 'postgres'] : []), path.join(dir, 'pgbouncer.ini')], { stdio: ['ignore', 'pipe', 'pipe'] });
    bouncer.stdout!.on('data', (d) => (bouncerLog += d));
    bouncer.stderr!.on('data', (d) => (bouncerLog += d));
    await waitFor(() => new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); });
      s.on('error', () => resolve(false));
    }), 10_000, `PgBouncer to listen (log: ${bouncerLog})`);
    receiver = await testReceiver(`postgres://wahook_receiver@127.0.0.1:${port}/${db.name}`);
  });
  afterAll(async () => {
    await receiver?.close();
    bouncer?.kill('SIGTERM');
    await db?.drop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('stores concurrent and duplicate POSTs, answers readiness, through three server connections', async () => {
    expect((await fetch(`${receiver!.url}/readyz`)).status).toBe(200);
    const bodies = Array.from({ length: 40 }, (_, i) => Buffer.from(JSON.stringify({
      object: 'whatsapp_business_account',
      entry: [{ id: '1', changes: [{ field: 'messages', value: { metadata: { phone_number_id: '100000000000001' },
        messages: [{ from: '447700900123', id: `wamid.BOUNCER${i}`, timestamp: '1767225600', type: 'text', text: { body: String(i) } }] } }] }],
    })));
    const f = fixture('batch-mixed');
    const responses = await Promise.all([
      ...bodies.map((b) => post(receiver!.webhookUrl, b, sign(b, FIXTURE_SECRET))),
      post(receiver!.webhookUrl, f.body, f.signature),
      post(receiver!.webhookUrl, f.body, f.signature),
    ]);
    expect(responses.map((r) => r.status)).toEqual(responses.map(() => 200));
    const n = await db.pool.query(`select
      (select count(*)::int from wahook.wa_events where wamid like 'wamid.BOUNCER%') as bouncer,
      (select count(*)::int from wahook.wa_events where dedupe_key = 's:wamid.OUTBOUND0001:delivered') as status,
      (select count(*)::int from wahook.webhook_logs) as logs`);
    expect(n.rows[0]).toEqual({ bouncer: 40, status: 1, logs: 42 });
    const who = await db.pool.query(`select count(*)::int as n from pg_stat_activity where usename = 'wahook_receiver' and datname = $1`, [db.name]);
    expect(who.rows[0].n).toBeLessThanOrEqual(3); // PgBouncer's pool, not one connection per request
  });
});
