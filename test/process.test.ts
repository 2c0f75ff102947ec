// Real wahook processes: the newcomer's `wahook start`, and a receiver draining on SIGTERM.
import http from 'node:http';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../src/db/embedded.ts';
import { createTestDatabase, type TestDatabase } from './helpers/db.ts';
import { fixture, FIXTURE_SECRET } from './helpers/fixtures.ts';
import { childEnv, spawnWahook } from './helpers/process.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

describe('wahook start', () => {
  it('runs on an embedded PostgreSQL, processes the printed sample webhook and sends the echo round trip', async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'wahook-start-'));
    const port = await freePort();
    const p = spawnWahook(['start'], childEnv({ WAHOOK_DATA_DIR: dataDir, PORT: String(port) }));
    try {
      await p.waitFor(/Press Ctrl-C to stop/, 60_000);
      expect(p.output()).toContain(`Webhook URL:   http://localhost:${port}/webhooks/whatsapp`);
      const token = p.output().match(/Verify token:\s+(\S+)/)![1]!;
      const hs = await fetch(`http://localhost:${port}/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=${token}&hub.challenge=42`);
      expect(await hs.text()).toBe('42');
      const curl = p.output().match(/^\s*(curl -sS .*)$/m)![1]!;
      const { stdout } = await promisify(execFile)('sh', ['-c', curl]);
      expect(JSON.parse(stdout)).toMatchObject({ received: true, notifications: 1, duplicates: 0 });
      await p.waitFor(/inbound message .*text="Hello from wahook"/, 20_000);
      // the echo goes out through the built-in Graph API simulator and its statuses come back
      const accepted = await p.waitFor(/message accepted by the Graph API outbox_id=\d+ wamid=(\S+)/, 20_000);
      await p.waitFor(new RegExp(`status event=\\d+ wamid=${accepted[1]!.replace(/\./g, '\\.')} status=read`), 20_000);
      p.child.kill('SIGTERM');
      expect(await p.exited).toEqual({ code: 0, signal: null });
    } finally {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('refuses to run the receiver without its secrets, naming the variables', async () => {
    const p = spawnWahook(['receiver'], childEnv({ DATABASE_URL: db.url }));
    const { code } = await p.exited;
    expect(code).toBe(2);
    expect(p.output()).toMatch(/WHATSAPP_APP_SECRET is required/);
    expect(p.output()).toMatch(/WHATSAPP_VERIFY_TOKEN is required/);
  });
});

describe('operator commands', () => {
  it('dlq, partitions and setup-roles run as commands, and bad input exits 2 naming the problem', async () => {
    const env = childEnv({ DATABASE_URL: db.url, WAHOOK_ACTOR: 'ci' });
    const list = spawnWahook(['dlq', 'list'], env);
    expect(await list.exited).toEqual({ code: 0, signal: null });
    expect(list.output()).toContain('no DLQ entries match');
    const status = spawnWahook(['partitions', 'status'], env);
    expect(await status.exited).toEqual({ code: 0, signal: null });
    expect(status.output()).toMatch(/wahook\.wa_events_p\d{6}/);
    const roles = spawnWahook(['setup-roles'], env);
    expect(await roles.exited).toEqual({ code: 0, signal: null });
    expect(roles.output()).toContain('the four wahook roles exist already');
    const bad = spawnWahook(['dlq', 'discard', '1'], env);
    expect((await bad.exited).code).toBe(2);
    expect(bad.output()).toContain('wahook: discard needs --reason');
    const unknown = spawnWahook(['dlq', 'replay', 'abc'], env);
    expect((await unknown.exited).code).toBe(2);
    expect(unknown.output()).toContain('not a DLQ entry id: abc');
  });
});

describe('wahook worker on an unhandled error', () => {
  it('logs it and exits 1, for its supervisor to start a clean process', async () => {
    const p = spawnWahook(['worker'], childEnv({
      DATABASE_URL: db.url,
      WAHOOK_HANDLERS: path.resolve('test/fixtures/handlers/unhandled-bug.mjs'),
    }));
    try {
      await p.waitFor(/worker started/);
      const t = fixture('template-status-update');
      await db.pool.query(`select * from wahook.ingest(array[$1::bytea], array[0]::smallint[], array['test'])`, [t.body]);
      expect(await p.exited).toEqual({ code: 1, signal: null });
      expect(p.output()).toMatch(/ERROR \[wahook\] unhandled error; exiting error=.*a bug nobody awaited/);
    } finally {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
    }
  });
});

describe('wahook receiver on SIGTERM', () => {
  it('stops accepting, finishes the request in flight (stored, 200), and exits 0', async () => {
    const port = await freePort();
    const p = spawnWahook(
      ['receiver'],
      childEnv({ DATABASE_URL: db.url, PORT: String(port), HOST: '127.0.0.1', WHATSAPP_APP_SECRET: FIXTURE_SECRET, WHATSAPP_VERIFY_TOKEN: 't' }),
    );
    try {
      await p.waitFor(/receiver listening/);
      const { body, signature } = fixture('text-message');
      // a request whose body is still arriving when SIGTERM comes
      const response = new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = http.request(
          { host: '127.0.0.1', port, method: 'POST', path: '/webhooks/whatsapp',
            headers: { 'content-type': 'application/json', 'content-length': body.length, 'x-hub-signature-256': signature } },
          (res) => {
            let text = '';
            res.on('data', (d) => (text += d));
            res.on('end', () => resolve({ status: res.statusCode!, text }));
          },
        );
        req.on('error', reject);
        req.write(body.subarray(0, 100));
        setTimeout(() => {
          p.child.kill('SIGTERM');
          setTimeout(() => req.end(body.subarray(100)), 500);
        }, 200);
      });
      await p.waitFor(/shutting down/);
      // no new connections once shutdown began
      await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
      const res = await response;
      expect(res.status).toBe(200);
      const { log_id } = JSON.parse(res.text) as { log_id: string };
      expect(await p.exited).toEqual({ code: 0, signal: null });
      const stored = await db.pool.query('select body from wahook.webhook_logs where id = $1', [log_id]);
      expect(Buffer.compare(stored.rows[0].body, body)).toBe(0);
    } finally {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
    }
  });
});
