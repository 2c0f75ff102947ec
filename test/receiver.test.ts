// The receiver over real HTTP against a real database.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sign } from '../src/receiver/signature.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { createTestDatabase, waitFor, type TestDatabase } from './helpers/db.ts';
import { fixture, FIXTURE_SECRET } from './helpers/fixtures.ts';
import { post, testReceiver, VERIFY_TOKEN } from './helpers/receiver.ts';

let db: TestDatabase;
let receiver: RunningReceiver;

beforeAll(async () => {
  db = await createTestDatabase();
  receiver = await testReceiver(db.url, { appSecrets: ['rotated-in-secret', FIXTURE_SECRET] });
});
afterAll(async () => {
  await receiver?.close();
  await db?.drop();
});

async function count(sql: string, params: unknown[] = []): Promise<number> {
  const r = await db.pool.query<{ n: number }>(`select (${sql})::int as n`, params);
  return r.rows[0]!.n;
}

describe('GET /webhooks/whatsapp (subscription handshake)', () => {
  it('echoes hub.challenge as text when the verify token matches', async () => {
    const res = await fetch(`${receiver.webhookUrl}?hub.mode=subscribe&hub.verify_token=${VERIFY_TOKEN}&hub.challenge=1158201444`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await res.text()).toBe('1158201444');
  });

  it('answers 403 for a wrong token, a wrong mode or no challenge', async () => {
    for (const q of [
      `hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1`,
      `hub.mode=unsubscribe&hub.verify_token=${VERIFY_TOKEN}&hub.challenge=1`,
      `hub.mode=subscribe&hub.verify_token=${VERIFY_TOKEN}`,
      ``,
    ]) {
      const res = await fetch(`${receiver.webhookUrl}?${q}`);
      expect(res.status, q).toBe(403);
      expect(await res.text()).not.toContain('1');
    }
  });
});

describe('POST /webhooks/whatsapp', () => {
  it('refuses missing, malformed and wrong signatures with 401, stores nothing and counts them', async () => {
    const { body, signature } = fixture('text-message');
    const before = await count('select count(*) from wahook.webhook_logs');
    const cases: Array<[string | undefined, string]> = [
      [undefined, 'missing'],
      [signature.slice(0, 20), 'malformed'],
      [sign(body, 'not-our-secret'), 'mismatch'],
    ];
    for (const [sig, reason] of cases) {
      const res = await post(receiver.webhookUrl, body, sig);
      expect(res.status).toBe(401);
      expect(await res.json()).toEqual({ error: `signature ${reason}` });
    }
    expect(await count('select count(*) from wahook.webhook_logs')).toBe(before);
    const metrics = await (await fetch(`${receiver.url}/metrics`)).text();
    expect(metrics).toMatch(/wahook_webhook_requests_total\{method="POST",outcome="missing_signature"\} 1/);
    expect(metrics).toMatch(/wahook_webhook_requests_total\{method="POST",outcome="invalid_signature"\} 2/);
  });

  it('stores the raw bytes exactly, with which secret matched (the second one here), and answers 200', async () => {
    const { body, signature } = fixture('text-unicode-escaped');
    const res = await post(receiver.webhookUrl, body, signature);
    expect(res.status).toBe(200);
    const json = (await res.json()) as { log_id: string; notifications: number };
    expect(json.notifications).toBe(1);
    const row = (
      await db.pool.query('select body, signature_key, secret_fingerprint, parse_status from wahook.webhook_logs where id = $1', [json.log_id])
    ).rows[0];
    expect(Buffer.compare(row.body, body)).toBe(0);
    expect(row.signature_key).toBe(1);
    expect(row.secret_fingerprint).toMatch(/^[0-9a-f]{12}$/);
    expect(row.parse_status).toBe('ok');
    // the escaped text decoded to the real characters in the event
    const ev = (await db.pool.query(`select payload from wahook.wa_events where log_id = $1`, [json.log_id])).rows[0];
    expect(JSON.stringify(ev.payload)).not.toMatch(/\\u[0-9a-f]{4}/);
  });

  it('fans a mixed batch out into one event and one job per notification, messages queued per conversation', async () => {
    const { body, signature } = fixture('batch-mixed');
    const res = await post(receiver.webhookUrl, body, signature);
    expect(res.status).toBe(200);
    const { log_id } = (await res.json()) as { log_id: string };
    const events = (
      await db.pool.query(
        `select e.kind, e.wamid, e.wa_id, e.phone_number_id, e.meta_ts, e.state, e.dedupe_key, j.queue_name, j.task_identifier
           from wahook.wa_events e
           left join (select pj.payload, t.identifier as task_identifier, q.queue_name
                        from graphile_worker._private_jobs pj
                        join graphile_worker._private_tasks t on t.id = pj.task_id
                        left join graphile_worker._private_job_queues q on q.id = pj.job_queue_id) j
             on (j.payload::jsonb ->> 'id')::bigint = e.id
          where e.log_id = $1 order by e.id`,
        [log_id],
      )
    ).rows;
    // event ids follow Meta's timestamps: the status (…605) before the messages (…610, …612)
    expect(events.map((e) => [e.kind, e.wamid, e.state])).toEqual([
      ['status', 'wamid.OUTBOUND0001', 'pending'],
      ['message', 'wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUREREREE=', 'pending'],
      ['message', 'wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgURUVFRUE=', 'pending'],
    ]);
    expect(events[1].wa_id).toBe('447700900123');
    expect(events[1].phone_number_id).toBe('100000000000001');
    expect(events[1].meta_ts.toISOString()).toBe(new Date(1767225610 * 1000).toISOString());
    expect(events[0].dedupe_key).toBe('s:wamid.OUTBOUND0001:delivered');
    expect(events.every((e) => e.task_identifier === 'process_wa_event')).toBe(true);
    expect(events[1].queue_name).toBe('wahook:conv:100000000000001:447700900123');
    expect(events[2].queue_name).toBe(events[1].queue_name);
    expect(events[0].queue_name).toBeNull(); // statuses never wait behind messages
  });

  it('a POST delivered twice adds a log row but no second event and no second job', async () => {
    const { body, signature } = fixture('media-location-reaction');
    const first = await post(receiver.webhookUrl, body, signature);
    expect(await first.json()).toMatchObject({ notifications: 3, duplicates: 0 });
    const events = await count('select count(*) from wahook.wa_events');
    const jobs = await count('select count(*) from graphile_worker.jobs');
    const second = await post(receiver.webhookUrl, body, signature);
    expect(second.status).toBe(200);
    expect(await second.json()).toMatchObject({ notifications: 3, duplicates: 3 });
    expect(await count('select count(*) from wahook.wa_events')).toBe(events);
    expect(await count('select count(*) from graphile_worker.jobs')).toBe(jobs);
    expect(await count(`select count(*) from wahook.webhook_logs where body = $1`, [body])).toBe(2);
  });

  it('stores value.errors entries and other fields as events', async () => {
    for (const [name, kind, field] of [
      ['value-errors', 'error', 'messages'],
      ['template-status-update', 'other', 'message_template_status_update'],
    ] as const) {
      const { body, signature } = fixture(name);
      const res = await post(receiver.webhookUrl, body, signature);
      expect(res.status).toBe(200);
      const { log_id } = (await res.json()) as { log_id: string };
      const rows = (await db.pool.query('select kind, field, payload from wahook.wa_events where log_id = $1', [log_id])).rows;
      expect(rows.map((r) => [r.kind, r.field])).toEqual([[kind, field]]);
    }
    const other = (await db.pool.query(`select payload, meta_ts from wahook.wa_events where kind = 'other'`)).rows[0];
    expect(other.payload.value.event).toBe('APPROVED');
    expect(other.meta_ts.toISOString()).toBe(new Date(1767225900 * 1000).toISOString());
  });

  it('stores a validly signed body that is not JSON, marked unparseable, and answers 200', async () => {
    const body = Buffer.from('{"object":"whatsapp_business_account","entry":[{"id": tru');
    const res = await post(receiver.webhookUrl, body, sign(body, FIXTURE_SECRET));
    expect(res.status).toBe(200);
    const { log_id, parse_status } = (await res.json()) as { log_id: string; parse_status: string };
    expect(parse_status).toBe('invalid_json');
    const row = (await db.pool.query('select body, parse_status, parse_error, notification_count from wahook.webhook_logs where id = $1', [log_id])).rows[0];
    expect(Buffer.compare(row.body, body)).toBe(0);
    expect(row.parse_error).toMatch(/^22P02: invalid input syntax for type json/);
    expect(row.notification_count).toBe(0);
  });

  it('stores invalid UTF-8 and JSON of an unexpected shape without failing', async () => {
    const bad = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
    const r1 = await post(receiver.webhookUrl, bad, sign(bad, FIXTURE_SECRET));
    expect(r1.status).toBe(200);
    expect(await r1.json()).toMatchObject({ parse_status: 'invalid_json' });
    const odd = Buffer.from('{"object":"page","entry":{"not":"an array"}}');
    const r2 = await post(receiver.webhookUrl, odd, sign(odd, FIXTURE_SECRET));
    expect(await r2.json()).toMatchObject({ parse_status: 'unexpected_shape', notifications: 0 });
  });

  it('accepts a 3 MB POST with 1000 updates; refuses a body over the limit with 413 and stores nothing', async () => {
    const statuses = Array.from({ length: 1000 }, (_, i) => ({
      id: `wamid.BULK${String(i).padStart(6, '0')}`,
      status: 'delivered',
      timestamp: String(1767225600 + i),
      recipient_id: '447700900123',
      pricing: { billable: true, pricing_model: 'PMP', category: 'utility', note: 'x'.repeat(2900) },
    }));
    const big = Buffer.from(JSON.stringify({
      object: 'whatsapp_business_account',
      entry: [{ id: '200000000000002', changes: [{ field: 'messages', value: { messaging_product: 'whatsapp', metadata: { phone_number_id: '100000000000001' }, statuses } }] }],
    }));
    expect(big.length).toBeGreaterThan(3_000_000);
    const res = await post(receiver.webhookUrl, big, sign(big, FIXTURE_SECRET));
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ notifications: 1000, duplicates: 0 });
    expect(await count(`select count(*) from wahook.wa_events where wamid like 'wamid.BULK%'`)).toBe(1000);

    const logs = await count('select count(*) from wahook.webhook_logs');
    const huge = Buffer.alloc(4 * 1024 * 1024 + 1, 0x20);
    const tooBig = await post(receiver.webhookUrl, huge, sign(huge, FIXTURE_SECRET));
    expect(tooBig.status).toBe(413);
    expect(await count('select count(*) from wahook.webhook_logs')).toBe(logs);
  });

  it('commits concurrent POSTs together (group commit) and answers each after its own rows', async () => {
    const bodies = Array.from({ length: 60 }, (_, i) =>
      Buffer.from(JSON.stringify({
        object: 'whatsapp_business_account',
        entry: [{ id: '1', changes: [{ field: 'messages', value: { metadata: { phone_number_id: '100000000000001' },
          messages: [{ from: `4477009${String(i).padStart(5, '0')}`, id: `wamid.GROUP${i}`, timestamp: '1767225600', type: 'text', text: { body: `m${i}` } }] } }] }],
      })),
    );
    // Hold the log table so the first transactions wait and every POST arrives while they do, however slowly this
    // machine schedules the 60 requests; none may be answered while its rows are uncommitted.
    const holder = await db.pool.connect();
    let answered = 0;
    let pending!: Promise<Response[]>;
    try {
      await holder.query('begin');
      await holder.query('lock table wahook.webhook_logs in share mode');
      pending = Promise.all(bodies.map((b) => post(receiver.webhookUrl, b, sign(b, FIXTURE_SECRET)).then((r) => (answered++, r))));
      const gauge = async () => (await receiver.metrics.ingestPending.get()).values[0]?.value ?? 0;
      await waitFor(async () => (await gauge()) === 60, 20_000, 'all 60 POSTs to wait for their commit');
      expect(answered).toBe(0);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    const responses = await pending;
    expect(responses.map((r) => r.status)).toEqual(bodies.map(() => 200));
    const ids = await Promise.all(responses.map(async (r) => ((await r.json()) as { log_id: string }).log_id));
    // every answered POST is there; rows committed in one transaction share an xmin
    const r = await db.pool.query<{ rows: number; txs: number }>(
      'select count(*)::int as rows, count(distinct xmin::text)::int as txs from wahook.webhook_logs where id = any($1::bigint[])',
      [ids],
    );
    expect(r.rows[0]!.rows).toBe(60);
    // the transactions already waiting on the lock (at most 3 with the default pool of 4), then the rest together
    expect(r.rows[0]!.txs).toBeLessThanOrEqual(4);
    expect(await count(`select count(*) from wahook.wa_events where wamid like 'wamid.GROUP%'`)).toBe(60);
  });
});

describe('health', () => {
  it('/healthz and /readyz answer 200 on a migrated database', async () => {
    expect((await fetch(`${receiver.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${receiver.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready' });
  });

  it('/readyz answers 503 when migrations are missing', async () => {
    const empty = await createTestDatabase({ template: false });
    const r = await testReceiver(empty.url);
    try {
      const res = await fetch(`${r.url}/readyz`);
      expect(res.status).toBe(503);
    } finally {
      await r.close();
      await empty.drop();
    }
  });
});
