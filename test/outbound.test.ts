// Outbound messages end to end: handler → outbox → send job → Graph API simulator → status webhooks → receiver.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GraphApiSimulator } from '../src/simulator/graphApi.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { createTestDatabase, waitFor, type TestDatabase } from './helpers/db.ts';
import { FIXTURE_SECRET } from './helpers/fixtures.ts';
import { childEnv, spawnWahook } from './helpers/process.ts';
import { quietLogger, testReceiver } from './helpers/receiver.ts';
import { plantOrphanedJob, sendSigned, settled, startTestWorker, textMessage, webhook, type TestWorker } from './helpers/worker.ts';

const TOKEN = 'test-access-token';
const PHONE = '100000000000001';
let db: TestDatabase;
let receiver: RunningReceiver;
let sim: GraphApiSimulator;
let tw: TestWorker;
let seq = 0;

const workerConfig = () => ({
  accessToken: TOKEN,
  apiBaseUrl: sim.url,
  send: { timeoutMs: 5000, errorThresholdPercentage: 50, volumeThreshold: 1000, resetTimeoutMs: 1000 },
});

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    update wahook.settings set value = v.value::jsonb from (values
      ('send_whatsapp_message.max_attempts', '3'),
      ('process_wa_event.max_attempts', '3'),
      ('retry.base_delay', '"50 milliseconds"'),
      ('send.breaker_threshold', '3'),
      ('send.breaker_open_for', '"700 milliseconds"'),
      ('send.reconcile_window', '"1 second"'),
      ('send.rate_limit_pause', '"1 second"')
    ) as v(key, value) where settings.key = v.key`);
  receiver = await testReceiver(db.url);
  sim = new GraphApiSimulator({ accessToken: TOKEN, webhook: { url: receiver.webhookUrl, appSecret: FIXTURE_SECRET }, log: quietLogger('sim') });
  await sim.start();
  tw = await startTestWorker(db.url, workerConfig());
});
afterAll(async () => {
  await tw?.worker.stop();
  await sim?.stop();
  await receiver?.close();
  await db?.drop();
});
beforeEach(() => {
  tw.behaviour = {};
  sim.clearFailures();
});

async function query<T = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
  return (await db.pool.query(sql, params)).rows as T[];
}

async function enqueue(to: string, body: string): Promise<string> {
  const r = await query<{ id: string }>(`select wahook.enqueue_message($1, $2, $3::jsonb) as id`, [PHONE, to, JSON.stringify({ type: 'text', text: { body } })]);
  return r[0]!.id;
}

const sendsOf = (id: string) => sim.sent.filter((m) => m.bizOpaqueCallbackData === `wahook:${id}`);
const outbox = async (id: string) => (await query('select * from wahook.whatsapp_messages where id = $1', [id]))[0]!;
async function sendJobsDone(): Promise<void> {
  const left = () => query(`select id, run_at, attempts, max_attempts, locked_at, last_error, payload::text
                              from graphile_worker._private_jobs where task_id = (select id from graphile_worker._private_tasks where identifier = 'send_whatsapp_message')`);
  try {
    await waitFor(async () => (await left()).length === 0, 30_000, 'send jobs to finish');
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${JSON.stringify(await left())}`);
  }
}

describe('outbox', () => {
  it('a reply commits with its event, is sent once with the outbox id, and its statuses move it to read', async () => {
    let calls = 0;
    tw.behaviour.message = async (e, ctx) => {
      calls++;
      await ctx.reply({ type: 'text', text: { body: `You said: ${(e.payload as { text: { body: string } }).text.body}` } });
      if (calls === 1) throw new Error('fails after queueing the reply: the reply must roll back');
    };
    await sendSigned(receiver.webhookUrl, webhook({ messages: [textMessage('wamid.ECHO1', 1767228001, '447700900123')] }));
    await settled(db.pool);
    await sendJobsDone();
    const rows = await query<{ id: string }>(`select id from wahook.whatsapp_messages where direction = 'outbound' and reply_to_event_id is not null`);
    expect(rows).toHaveLength(1); // the first attempt's reply rolled back with it
    const id = rows[0]!.id;
    const sends = sendsOf(id);
    expect(sends).toHaveLength(1);
    expect(sends[0]).toMatchObject({ to: '447700900123', type: 'text', phoneNumberId: PHONE });
    expect((sends[0]!.body as { text: { body: string } }).text.body).toBe('You said: wamid.ECHO1');
    await sim.flushWebhooks();
    await settled(db.pool);
    const row = await outbox(id);
    expect(row).toMatchObject({ wamid: sends[0]!.wamid, status: 'read', send_attempts: 1 });
    expect(row.accepted_at).not.toBeNull();
    expect(row.read_at).not.toBeNull();
  });

  it('enqueue_message refuses bad input with a clear error', async () => {
    await expect(query(`select wahook.enqueue_message('abc', '447700900123', '{"type":"text","text":{"body":"x"}}')`)).rejects.toMatchObject({ code: 'WH020' });
    await expect(query(`select wahook.enqueue_message($1, 'not-a-number', '{"type":"text","text":{"body":"x"}}')`, [PHONE])).rejects.toMatchObject({ code: 'WH020' });
    await expect(query(`select wahook.enqueue_message($1, '447700900123', '{"type":"fax"}')`, [PHONE])).rejects.toMatchObject({ code: 'WH021' });
    await expect(query(`select wahook.enqueue_message($1, '447700900123', '{"type":"text","text":{}}')`, [PHONE])).rejects.toThrow(/text.body/);
  });

  it('template and interactive messages go out as given', async () => {
    const t = await query<{ id: string }>(`select wahook.enqueue_message($1, '447700900124', $2::jsonb) as id`, [PHONE,
      JSON.stringify({ type: 'template', template: { name: 'order_update', language: { code: 'en_US' } } })]);
    const i = await query<{ id: string }>(`select wahook.enqueue_message($1, '447700900124', $2::jsonb) as id`, [PHONE,
      JSON.stringify({ type: 'interactive', interactive: { type: 'button', body: { text: 'Confirm?' }, action: { buttons: [{ type: 'reply', reply: { id: 'yes', title: 'Yes' } }] } } })]);
    await sendJobsDone();
    expect(sendsOf(t[0]!.id)[0]!.type).toBe('template');
    expect(sendsOf(i[0]!.id)[0]!.type).toBe('interactive');
  });
});

describe('circuit breaker', () => {
  it('opens after the threshold, waits without spending attempts, probes half-open, closes, and sends every message exactly once', async () => {
    const to = '447700900200';
    sim.inject({ outageUntil: Date.now() + 2500 });
    const before = sim.requestCount;
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push(await enqueue(to, `outage ${i}`));
    await waitFor(async () => (await query<{ state: string }>(`select state from wahook.send_breakers where phone_number_id = $1`, [PHONE]))[0]?.state === 'open', 10_000, 'the breaker to open');
    await sendJobsDone();
    // every message sent exactly once
    for (const id of ids) expect(sendsOf(id), `outbox ${id}`).toHaveLength(1);
    // requests that failed: the threshold, then one probe per open period, not one per message per retry
    const failed = sim.requestCount - before - ids.length;
    expect(failed).toBeGreaterThanOrEqual(3);
    expect(failed).toBeLessThanOrEqual(3 + 6);
    expect(await query(`select * from wahook.webhook_dlq where task = 'send_whatsapp_message'`)).toEqual([]);
    expect((await query(`select state, failures from wahook.send_breakers where phone_number_id = $1`, [PHONE]))[0]).toEqual({ state: 'closed', failures: 0 });
  }, 30_000);
});

describe('Graph API errors', () => {
  it('a rate limit pauses the number for Retry-After without spending an attempt', async () => {
    // a budget of one attempt: if the rate-limited call spent it, the message would be dead-lettered
    await query(`update wahook.settings set value = '1' where key = 'send_whatsapp_message.max_attempts'`);
    try {
      sim.inject({ code: 130429, retryAfterSeconds: 1, times: 1 });
      const started = Date.now();
      const id = await enqueue('447700900300', 'rate limited');
      await waitFor(async () => sendsOf(id).length === 1, 15_000);
      expect(sendsOf(id)[0]!.at - started).toBeGreaterThanOrEqual(950);
      const pause = await query(`select reason from wahook.send_pauses where scope = 'phone' and key = $1`, [PHONE]);
      expect(pause[0]).toMatchObject({ reason: 'rate limit (code 130429)' });
      await sendJobsDone();
      const row = await outbox(id);
      expect(row).toMatchObject({ wamid: sendsOf(id)[0]!.wamid, send_attempts: 2, last_send_error_code: null });
      expect(['accepted', 'sent', 'delivered', 'read']).toContain(row.status);
      expect(await query(`select 1 from wahook.webhook_dlq where payload ->> 'id' = $1`, [id])).toEqual([]);
    } finally {
      await query(`update wahook.settings set value = '3' where key = 'send_whatsapp_message.max_attempts'`);
    }
  });

  it('a permanent error sends the message to the DLQ at once and marks it failed', async () => {
    sim.inject({ code: 131026, times: 1 });
    const id = await enqueue('447700900301', 'undeliverable');
    await waitFor(async () => (await query(`select 1 from wahook.webhook_dlq where task = 'send_whatsapp_message' and payload ->> 'id' = $1`, [id])).length === 1);
    const [entry] = await query(`select attempts, error_class, error_code from wahook.webhook_dlq where payload ->> 'id' = $1`, [id]);
    expect(entry).toEqual({ attempts: 1, error_class: 'permanent', error_code: '131026' });
    expect(await outbox(id)).toMatchObject({ status: 'failed', last_send_error_code: '131026' });
    expect(sendsOf(id)).toHaveLength(0);
  });

  it('an account error opens the breaker for the number with its reason, alerts, and spends no attempt', async () => {
    const phone = '100000000000011'; // a number of its own: its breaker opens
    await query(`update wahook.settings set value = '"1 second"' where key = 'send.account_breaker_open_for'`);
    await query(`update wahook.settings set value = '1' where key = 'send_whatsapp_message.max_attempts'`);
    try {
      sim.inject({ code: 190, times: 1, phoneNumberId: phone });
      const started = Date.now();
      const r = await query<{ id: string }>(`select wahook.enqueue_message($1, '447700900302', '{"type":"text","text":{"body":"token expired"}}') as id`, [phone]);
      const id = r[0]!.id;
      const open = await waitFor(async () => (await query<{ state: string; reason: string }>(
        `select state, reason from wahook.send_breakers where phone_number_id = $1 and state = 'open'`, [phone]))[0]);
      expect(open!.reason).toMatch(/^account cannot send \(code 190\)/);
      // with a budget of one attempt, a spent attempt would have dead-lettered it
      await waitFor(async () => sendsOf(id).length === 1, 15_000);
      expect(sendsOf(id)[0]!.at - started).toBeGreaterThanOrEqual(950);
      expect(await query(`select 1 from wahook.webhook_dlq where payload ->> 'id' = $1`, [id])).toEqual([]);
      await waitFor(async () => (await query<{ state: string }>(`select state from wahook.send_breakers where phone_number_id = $1`, [phone]))[0]!.state === 'closed');
    } finally {
      await query(`update wahook.settings set value = '3' where key = 'send_whatsapp_message.max_attempts'`);
    }
  });

  it('failed statuses that arrive by webhook get the same classes: account → breaker, 131056 → recipient pause', async () => {
    const phone = '100000000000012';
    const failed = (wamid: string, to: string, code: number) => Buffer.from(JSON.stringify({
      object: 'whatsapp_business_account',
      entry: [{ id: '200000000000002', changes: [{ field: 'messages', value: { messaging_product: 'whatsapp',
        metadata: { phone_number_id: phone },
        statuses: [{ id: wamid, status: 'failed', timestamp: String(1767229000 + seq++), recipient_id: to, errors: [{ code, title: 'x' }] }] } }] }],
    }));
    await sendSigned(receiver.webhookUrl, failed('wamid.FAILEDPAIR', '447700900600', 131056));
    await sendSigned(receiver.webhookUrl, failed('wamid.FAILEDAUTH', '447700900601', 190));
    await settled(db.pool);
    expect(await query(`select reason from wahook.send_pauses where scope = 'recipient' and key = $1`, [`${phone}:447700900600`]))
      .toEqual([{ reason: 'failed status: pair rate limit (131056)' }]);
    const breaker = await query<{ state: string; reason: string }>(`select state, reason from wahook.send_breakers where phone_number_id = $1`, [phone]);
    expect(breaker[0]).toMatchObject({ state: 'open', reason: 'failed status: account cannot send (code 190)' });
    expect((await query(`select status from wahook.whatsapp_messages where wamid = 'wamid.FAILEDAUTH'`))[0]).toEqual({ status: 'failed' });
  });

  it('a status that overtook the send answer is folded into the outbox row without going backwards', async () => {
    const id = await enqueue('447700900700', 'overtaken');
    await sendJobsDone();
    // the simulator's own status webhooks carry the outbox id: let them land first, or one arriving after the
    // reset below would reconcile the row to the simulator's wamid before record_send_success runs
    await sim.flushWebhooks();
    await settled(db.pool);
    // as if the read status had arrived (and made its own row) before the answer with the wamid was recorded
    await query(`update wahook.whatsapp_messages set wamid = null, status = 'queued' where id = $1`, [id]);
    await query(`select wahook.apply_status('wamid.OVERTAKEN', 'read', now(), $1, '447700900700', null)`, [PHONE]);
    await query(`select wahook.apply_status('wamid.OVERTAKEN', 'sent', now() - interval '2 seconds', $1, '447700900700', null)`, [PHONE]);
    const r = await query<{ s: string }>(`select wahook.record_send_success($1, 'wamid.OVERTAKEN') as s`, [id]);
    expect(r[0]!.s).toBe('read');
    const rows = await query(`select id, status, sent_at is not null as sent, read_at is not null as read from wahook.whatsapp_messages where wamid = 'wamid.OVERTAKEN'`);
    expect(rows).toEqual([{ id, status: 'read', sent: true, read: true }]);
  });

  it('131056 delays only that recipient', async () => {
    sim.inject({ code: 131056, times: 1 });
    const slow = await enqueue('447700900303', 'to the busy recipient');
    const pause = await waitFor(async () =>
      (await query<{ until: Date }>(`select until from wahook.send_pauses where scope = 'recipient' and key = $1`, [`${PHONE}:447700900303`]))[0],
    10_000, 'the recipient pause');
    const other = await enqueue('447700900304', 'to someone else');
    await waitFor(async () => sendsOf(other).length === 1 && sendsOf(slow).length === 1, 15_000);
    // the other recipient did not wait for the pause (4 s); the busy one went only once it was over
    expect(sendsOf(other)[0]!.at).toBeLessThan(pause!.until.getTime());
    expect(sendsOf(slow)[0]!.at).toBeGreaterThanOrEqual(pause!.until.getTime() - 50);
  }, 30_000);
});

describe('throughput', () => {
  it('never exceeds the per-number rate', async () => {
    await query(`insert into wahook.settings (key, value) values ('send.rate_per_second.${PHONE}', '5')`);
    try {
      const ids: string[] = [];
      for (let i = 0; i < 10; i++) ids.push(await enqueue(`4477009004${String(i).padStart(2, '0')}`, `paced ${i}`));
      await sendJobsDone();
      const times = ids.map((id) => sendsOf(id)[0]!.at).sort((a, b) => a - b);
      // 10 sends at 5/s: the last no earlier than 1.8 s after the first; no second holds more than 5 (+1 jitter)
      expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual(1700);
      for (const t of times) expect(times.filter((u) => u >= t && u < t + 1000).length).toBeLessThanOrEqual(6);
    } finally {
      await query(`delete from wahook.settings where key = 'send.rate_per_second.${PHONE}'`);
    }
  }, 30_000);
});

describe('reconciling a send whose outcome is unknown', () => {
  it('a stored but unprocessed status webhook with the outbox id counts as accepted: no second send', async () => {
    // One transaction, so no worker can take the send job or process the status event: the order is fixed to the
    // one that sent twice before (the retry decides before the status event is processed).
    const c = await db.pool.connect();
    try {
      await c.query('begin');
      const id = (await c.query<{ id: string }>(`select wahook.enqueue_message($1, '447700900900', '{"type":"text","text":{"body":"unknown"}}') as id`, [PHONE])).rows[0]!.id;
      // the attempt called the Graph API an hour ago and died before recording the answer
      await c.query(`update wahook.whatsapp_messages set send_started_at = now() - interval '1 hour', send_attempts = 1 where id = $1`, [id]);
      const status = Buffer.from(JSON.stringify({
        object: 'whatsapp_business_account',
        entry: [{ id: '200000000000002', changes: [{ field: 'messages', value: { messaging_product: 'whatsapp', metadata: { phone_number_id: PHONE },
          statuses: [{ id: 'wamid.RECONCILED', status: 'sent', timestamp: '1767229500', recipient_id: '447700900900', biz_opaque_callback_data: `wahook:${id}` }] } }] }],
      }));
      await c.query(`select * from wahook.ingest(array[$1::bytea], array[0]::smallint[], array['test'])`, [status]);
      const [d] = (await c.query<{ decision: string; reason: string }>(`select decision, reason from wahook.prepare_send($1, 'test')`, [id])).rows;
      expect(d).toEqual({ decision: 'done', reason: 'accepted: reconciled through a stored status webhook' });
      const [row] = (await c.query(`select wamid, status, send_attempts from wahook.whatsapp_messages where id = $1`, [id])).rows;
      expect(row).toEqual({ wamid: 'wamid.RECONCILED', status: 'accepted', send_attempts: 1 });
    } finally {
      await c.query('rollback');
      c.release();
    }
  });
});

describe('a worker that died after recording the send', () => {
  it('leaves a job the sweeper removes: the message is not sent again', async () => {
    const id = await enqueue('447700900800', 'sent, then the worker died');
    await sendJobsDone();
    await sim.flushWebhooks(); // its status events are processed first: the sweep below must meet only the orphan
    await settled(db.pool);
    expect(sendsOf(id)).toHaveLength(1);
    const job = await plantOrphanedJob(db.pool, 'send_whatsapp_message', { id: Number(id) });
    expect(await query(`select * from wahook.sweep(now() + interval '1 minute')`))
      .toEqual([{ job_id: job, task: 'send_whatsapp_message', outcome: 'finished', dlq_id: null }]);
    expect(await query('select 1 from graphile_worker._private_jobs where id = $1', [job])).toEqual([]);
    expect((await outbox(id)).send_attempts).toBe(1);
    expect(sendsOf(id)).toHaveLength(1);
  });
});

describe('a worker killed between the Graph API call and the commit', () => {
  it('does not send twice: the status webhook carrying the outbox id reconciles it', async () => {
    await tw.worker.stop();
    const p = spawnWahook(['worker'], childEnv({
      DATABASE_URL: db.url, WHATSAPP_ACCESS_TOKEN: TOKEN, WHATSAPP_API_BASE_URL: sim.url, WAHOOK_LOG_LEVEL: 'info',
    }));
    try {
      await p.waitFor(/worker started/);
      // a sender of its own, so no other test's retry can take this slow answer
      const phone = '100000000000009';
      sim.inject({ latencyMs: 1500, errorRate: 0, times: 1, phoneNumberId: phone });
      const r = await query<{ id: string }>(`select wahook.enqueue_message($1, '447700900500', $2::jsonb) as id`, [phone,
        JSON.stringify({ type: 'text', text: { body: `crash ${seq++}` } })]);
      const id = r[0]!.id;
      await waitFor(async () => (await outbox(id)).send_started_at !== null);
      await new Promise((r) => setTimeout(r, 300)); // the request is at the API now
      p.child.kill('SIGKILL');
      await p.exited;
      // the API still accepts it and posts its statuses (with biz_opaque_callback_data = wahook:<id>)
      await waitFor(async () => sendsOf(id).length === 1, 10_000);
      await sim.flushWebhooks();
      tw = await startTestWorker(db.url, workerConfig());
      try {
        // the killed worker may have held other jobs too (status events): the sweeper moves them all
        await waitFor(async () => (await query<{ task: string }>(`select * from wahook.sweep(now() + interval '1 minute')`))
          .some((r) => r.task === 'send_whatsapp_message'), 10_000, 'the sweeper');
      } catch (err) {
        const jobs = await query(`select id, locked_at, locked_by, attempts, payload::text from graphile_worker._private_jobs`);
        const locks = await query(`select l.locktype, l.classid, l.objid, l.pid, a.state, a.application_name from pg_locks l left join pg_stat_activity a using (pid) where l.locktype = 'advisory' or (l.locktype = 'tuple')`);
        throw new Error(`${(err as Error).message}\njobs ${JSON.stringify(jobs)}\nlocks ${JSON.stringify(locks)}\nrow ${JSON.stringify(await outbox(id))}\nchild:\n${p.output()}`);
      }
      await sendJobsDone();
      await settled(db.pool);
      expect(sendsOf(id)).toHaveLength(1);
      expect(await outbox(id)).toMatchObject({ wamid: sendsOf(id)[0]!.wamid, status: 'read' });
    } finally {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
    }
  }, 40_000);
});
