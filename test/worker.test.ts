// The worker against a real database: built-in status handling, handler dispatch, retries, ordering.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import path from 'node:path';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { loadHandlers } from '../src/worker/handlers.ts';
import { startWorker } from '../src/worker/runner.ts';
import type { WaEvent } from '../src/worker/types.ts';
import { createTestDatabase, waitFor, type TestDatabase } from './helpers/db.ts';
import { fixture } from './helpers/fixtures.ts';
import { post, quietLogger, testReceiver } from './helpers/receiver.ts';
import { sendSigned, settled, startTestWorker, webhook, type TestWorker } from './helpers/worker.ts';

let db: TestDatabase;
let receiver: RunningReceiver;
let tw: TestWorker | undefined;
let behaviour: TestWorker['behaviour'];

beforeAll(async () => {
  db = await createTestDatabase();
  receiver = await testReceiver(db.url);
  tw = await startTestWorker(db.url);
});
afterAll(async () => {
  await tw?.worker.stop();
  await receiver?.close();
  await db?.drop();
});
beforeEach(() => {
  behaviour = tw!.behaviour = {};
});

async function allDone(): Promise<void> {
  await settled(db.pool);
  const r = await db.pool.query<{ n: number }>(`select count(*)::int as n from wahook.wa_events where state <> 'done'`);
  expect(r.rows[0]!.n).toBe(0);
}

const send = (body: Buffer) => sendSigned(receiver.webhookUrl, body);

function status(wamid: string, s: string, ts: number, extra: Record<string, unknown> = {}) {
  return { id: wamid, status: s, timestamp: String(ts), recipient_id: '447700900123', ...extra };
}

async function message(wamid: string) {
  return (await db.pool.query('select * from wahook.whatsapp_messages where wamid = $1', [wamid])).rows[0];
}

describe('delivery status', () => {
  it('ends at read whatever order sent, delivered and read arrive in', async () => {
    const f = fixture('statuses-out-of-order'); // read, sent, delivered in one POST
    const res = await post(receiver.webhookUrl, f.body, f.signature);
    expect(res.status).toBe(200);
    await allDone();
    const m = await message('wamid.OUTBOUND0003');
    expect(m.status).toBe('read');
    expect(m.direction).toBe('outbound');
    expect(m.sent_at.toISOString()).toBe(new Date(1767225801_000).toISOString());
    expect(m.delivered_at.toISOString()).toBe(new Date(1767225802_000).toISOString());
    expect(m.read_at.toISOString()).toBe(new Date(1767225803_000).toISOString());
  });

  it('a late sent never downgrades read, across separate POSTs', async () => {
    await send(webhook({ statuses: [status('wamid.LATE1', 'read', 1767225903)] }));
    await allDone();
    await send(webhook({ statuses: [status('wamid.LATE1', 'sent', 1767225901)] }));
    await send(webhook({ statuses: [status('wamid.LATE1', 'delivered', 1767225902)] }));
    await allDone();
    const m = await message('wamid.LATE1');
    expect(m.status).toBe('read');
    expect(m.sent_at).not.toBeNull();
  });

  it('failed is terminal and keeps its errors; a failed after read does not replace read', async () => {
    const f = fixture('status-failed');
    await post(receiver.webhookUrl, f.body, f.signature);
    await allDone();
    await send(webhook({ statuses: [status('wamid.OUTBOUND0002', 'delivered', 1767225701), status('wamid.OUTBOUND0002', 'read', 1767225702)] }));
    await allDone();
    const failed = await message('wamid.OUTBOUND0002');
    expect(failed.status).toBe('failed');
    expect(failed.errors[0].code).toBe(131026);

    await send(webhook({ statuses: [status('wamid.READ2', 'read', 1767225801)] }));
    await allDone();
    await send(webhook({ statuses: [status('wamid.READ2', 'failed', 1767225802, { errors: [{ code: 131000 }] })] }));
    await allDone();
    expect((await message('wamid.READ2')).status).toBe('read');
  });
});

describe('handlers', () => {
  it('records inbound messages and passes the typed event to the message handler', async () => {
    const seen: WaEvent[] = [];
    behaviour.message = (e) => {
      seen.push(e);
    };
    const f = fixture('text-message');
    await post(receiver.webhookUrl, f.body, f.signature);
    await allDone();
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({
      kind: 'message',
      field: 'messages',
      waId: '447700900123',
      phoneNumberId: '100000000000001',
      wamid: 'wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUQUFBQQA=',
      contact: { profile: { name: 'Ana' }, wa_id: '447700900123' },
      attempt: 1,
    });
    expect((seen[0]!.payload as { text: { body: string } }).text.body).toBe('Hello there');
    const m = await message('wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUQUFBQQA=');
    expect(m).toMatchObject({ direction: 'inbound', status: 'received', type: 'text', wa_id: '447700900123' });
  });

  it('a handler that throws makes the job retry; its writes roll back; the event shows retrying, then done', async () => {
    let calls = 0;
    behaviour.other = async (_e, { db: client }) => {
      calls++;
      await client.query('create table if not exists public.side_effects (n int)');
      await client.query('insert into public.side_effects values ($1)', [calls]);
      if (calls === 1) throw new Error('upstream said no');
    };
    const f = fixture('template-status-update');
    await post(receiver.webhookUrl, f.body, f.signature);
    const retrying = await waitFor(async () => {
      const r = await db.pool.query(`select state, attempts, last_error from wahook.wa_events where kind = 'other'`);
      return r.rows[0]?.state === 'retrying' ? r.rows[0] : undefined;
    });
    expect(retrying).toMatchObject({ attempts: 1, last_error: 'upstream said no' });
    // graphile-worker backs off about e^1 s before the second attempt
    await allDone();
    const ev = (await db.pool.query(`select state, attempts, last_error from wahook.wa_events where kind = 'other'`)).rows[0];
    expect(ev).toEqual({ state: 'done', attempts: 2, last_error: null });
    expect(calls).toBe(2);
    const effects = (await db.pool.query('select n from public.side_effects')).rows.map((r) => r.n);
    expect(effects).toEqual([2]); // the failed attempt's write rolled back with it
  }, 30_000);

  it('handles one conversation in order; statuses do not wait behind a slow message', async () => {
    const handled: string[] = [];
    let releaseSlow!: () => void;
    const slow = new Promise<void>((r) => (releaseSlow = r));
    behaviour.message = async (e) => {
      if (e.wamid === 'wamid.ORDER0') await slow;
      handled.push(e.wamid!);
    };
    const statusesSeen: string[] = [];
    behaviour.status = (e) => {
      statusesSeen.push(e.wamid!);
    };
    const msg = (i: number, from = '447700900999') => ({ from, id: `wamid.ORDER${i}`, timestamp: String(1767226000 + i), type: 'text', text: { body: String(i) } });
    // one conversation over several POSTs (and two in one POST, in reverse order: Meta's timestamp orders them)
    await send(webhook({ messages: [msg(0)] }));
    await send(webhook({ messages: [msg(2), msg(1)] }));
    await send(webhook({ messages: [msg(3)] }));
    // another conversation and a status are not held up by the slow first message
    await send(webhook({ messages: [msg(10, '447700900888')] }));
    await send(webhook({ statuses: [status('wamid.ORDERSTATUS', 'sent', 1767226001)] }));
    await waitFor(async () => handled.includes('wamid.ORDER10') && statusesSeen.includes('wamid.ORDERSTATUS'), 20_000, 'other work to pass the slow message');
    expect(handled.filter((w) => /ORDER[0-3]$/.test(w))).toEqual([]);
    releaseSlow();
    await allDone();
    expect(handled.filter((w) => /ORDER[0-3]$/.test(w))).toEqual(['wamid.ORDER0', 'wamid.ORDER1', 'wamid.ORDER2', 'wamid.ORDER3']);
  });

  it('loads an operator module named by WAHOOK_HANDLERS (TypeScript), default export', async () => {
    const loaded = await loadHandlers(path.resolve('test/fixtures/handlers/recording.ts'));
    expect(typeof loaded.message).toBe('function');
    expect(loaded.status).toBeUndefined();
    await expect(loadHandlers(path.resolve('test/fixtures/text-message.json'))).rejects.toThrow(/WAHOOK_HANDLERS/);
  });
});

describe('graphile-worker stopping by itself', () => {
  it('is reported through onFatal (the CLI exits for its supervisor), and the worker still stops cleanly', async () => {
    let fatal: Error | undefined;
    const w = await startWorker({ databaseUrl: db.url, handlersPath: undefined, workerConcurrency: 1 }, quietLogger('worker'), {
      handlers: {},
      onFatal: (err) => {
        fatal = err;
      },
    });
    await w.runner.stop(); // not through w.stop(): as if graphile-worker had given up
    await waitFor(async () => fatal !== undefined, 10_000, 'onFatal');
    expect(fatal!.message).toBe('graphile-worker stopped unexpectedly');
    await w.stop();
  });
});
