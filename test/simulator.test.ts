// The Graph API simulator, its status webhooks, the traffic generator and `wahook simulate`, over real HTTP on
// 127.0.0.1 (no database).
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { simulateCommand } from '../src/cli/simulate.ts';
import type { Logger } from '../src/log.ts';
import { verifySignature } from '../src/receiver/signature.ts';
import { GraphApiSimulator, type SimulatorWebhookOptions } from '../src/simulator/graphApi.ts';
import { generateTraffic } from '../src/simulator/traffic.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- parsed JSON, checked by the assertions
type Json = any;

const TOKEN = 'test-access-token';
const SECRET = 'test-app-secret';
const PHONE_ID = '100000000000001';
const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');

interface LogRecord {
  level: string;
  message: string;
  fields?: Record<string, unknown>;
}
function recordingLogger(records: LogRecord[] = []): Logger & { records: LogRecord[] } {
  const at = (level: string) => (message: string, fields?: Record<string, unknown>) => void records.push({ level, message, fields });
  const log: Logger & { records: LogRecord[] } = {
    records,
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: () => log,
  };
  return log;
}

/** A small deterministic PRNG (mulberry32). */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function simulator(opts: { webhook?: SimulatorWebhookOptions; random?: () => number; latencyMs?: number } = {}) {
  const log = recordingLogger();
  const sim = new GraphApiSimulator({ accessToken: TOKEN, log, ...opts });
  const url = await sim.start();
  cleanups.push(() => sim.stop());
  return { sim, url, log };
}

interface Hit {
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

/** A webhook receiver that records every POST's raw bytes; `status(n)` answers the n-th (1-based) request. */
async function testReceiver(opts: { status?: (n: number) => number; delayMs?: number } = {}) {
  const hits: Hit[] = [];
  let seen = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const server = http.createServer((req, res) => {
    const n = ++seen;
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      hits.push({ headers: req.headers, body: Buffer.concat(chunks), at: performance.now() });
      if (opts.delayMs) await sleep(opts.delayMs);
      inFlight--;
      res.writeHead(opts.status?.(n) ?? 200).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/webhooks/whatsapp`;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url, hits, maxInFlight: () => maxInFlight };
}

/** A URL nothing listens on. */
async function closedUrl(): Promise<string> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}/webhooks/whatsapp`;
}

async function send(url: string, body: unknown, opts: { token?: string | null; path?: string } = {}) {
  const token = opts.token === undefined ? TOKEN : opts.token;
  const res = await fetch(url + (opts.path ?? `/v21.0/${PHONE_ID}/messages`), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(token !== null ? { Authorization: `Bearer ${token}` } : {}) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: (await res.json()) as Json };
}

const textMessage = (extra: Record<string, unknown> = {}) => ({
  messaging_product: 'whatsapp',
  recipient_type: 'individual',
  to: '447700900123',
  type: 'text',
  text: { body: 'Your order has shipped' },
  ...extra,
});

function expectGraphError(r: { status: number; json: Json }, status: number, code: number) {
  expect(r.status).toBe(status);
  expect(r.json.error).toMatchObject({ type: 'OAuthException', code, error_data: { messaging_product: 'whatsapp' } });
  expect(r.json.error.message).toMatch(new RegExp(`^\\(#${code}\\) `));
  expect(typeof r.json.error.error_data.details).toBe('string');
  expect(r.json.error.fbtrace_id).toMatch(/^[\w-]{6,}$/);
}

describe('GraphApiSimulator: POST /{phone_number_id}/messages', () => {
  it('accepts a valid send, answers a unique wamid and records it with biz_opaque_callback_data', async () => {
    const { sim, url } = await simulator();
    const r = await send(url, textMessage({ biz_opaque_callback_data: 'outbox:42' }));
    expect(r.status).toBe(200);
    expect(r.json).toEqual({
      messaging_product: 'whatsapp',
      contacts: [{ input: '447700900123', wa_id: '447700900123' }],
      messages: [{ id: expect.stringMatching(/^wamid\.\S+$/) }],
    });
    const wamid = r.json.messages[0].id as string;
    // the unversioned path works too, and every wamid is new
    const r2 = await send(url, textMessage(), { path: `/${PHONE_ID}/messages` });
    expect(r2.status).toBe(200);
    expect(r2.json.messages[0].id).not.toBe(wamid);

    expect(sim.sent).toHaveLength(2);
    expect(sim.sent[0]).toMatchObject({ wamid, phoneNumberId: PHONE_ID, to: '447700900123', type: 'text', bizOpaqueCallbackData: 'outbox:42' });
    expect(sim.sent[0]!.body).toEqual(textMessage({ biz_opaque_callback_data: 'outbox:42' }));
    expect(sim.sent[1]!.bizOpaqueCallbackData).toBeUndefined();
    expect(sim.requestCount).toBe(2);
    const listed = (await (await fetch(`${url}/_sim/sent`)).json()) as Json[];
    expect(listed.map((m) => m.wamid)).toEqual([wamid, r2.json.messages[0].id]);
    expect(listed[0].bizOpaqueCallbackData).toBe('outbox:42');
  });

  it('refuses a missing or wrong token with 401 and code 190, and records nothing', async () => {
    const { sim, url } = await simulator();
    expectGraphError(await send(url, textMessage(), { token: 'not-the-token' }), 401, 190);
    expectGraphError(await send(url, textMessage(), { token: null }), 401, 190);
    expect(sim.sent).toHaveLength(0);
    expect(sim.requestCount).toBe(2);
    expect(sim.stats()).toMatchObject({ requests: 2, accepted: 0, failed: 2, byCode: { '190': 2 } });
  });

  it('refuses a badly shaped body with 400 and code 100, saying what is wrong', async () => {
    const { sim, url } = await simulator();
    const cases: Array<[unknown, RegExp]> = [
      ['{not json', /not valid JSON/],
      [[1, 2], /JSON object/],
      [textMessage({ messaging_product: undefined }), /messaging_product is required/],
      [textMessage({ messaging_product: 'sms' }), /messaging_product must be 'whatsapp'/],
      [textMessage({ to: undefined }), /parameter to is required/],
      [textMessage({ to: '0770-CALL-ME' }), /Param to must be/],
      [textMessage({ type: 'fax' }), /Param type must be one of/],
      [textMessage({ text: undefined }), /parameter text is required/],
      [textMessage({ text: { body: '' } }), /text\['body'\]/],
      [textMessage({ text: { body: 'x'.repeat(4097) } }), /text\['body'\]/],
      [{ messaging_product: 'whatsapp', to: '447700900123', type: 'template', template: { name: 'x' } }, /template\['language'\]\['code'\]/],
      [{ messaging_product: 'whatsapp', to: '447700900123', type: 'image', image: { caption: 'no media' } }, /image must have an id or a link/],
      [textMessage({ biz_opaque_callback_data: 42 }), /biz_opaque_callback_data/],
    ];
    for (const [body, problem] of cases) {
      const r = await send(url, body);
      expectGraphError(r, 400, 100);
      expect(r.json.error.message, JSON.stringify(body).slice(0, 80)).toMatch(problem);
    }
    expect(sim.sent).toHaveLength(0);
    expect(sim.stats().byCode).toEqual({ '100': cases.length });
    // the other types are accepted when their object is there
    const ok = [
      { type: 'template', template: { name: 'order_update', language: { code: 'en_US' } } },
      { type: 'interactive', interactive: { type: 'button', body: { text: 'OK?' }, action: { buttons: [] } } },
      { type: 'image', image: { link: 'https://example.com/a.jpg' } },
      { type: 'location', location: { latitude: 51.5, longitude: -0.12 } },
      { type: 'reaction', reaction: { message_id: 'wamid.X', emoji: '👍' } },
      { type: 'contacts', contacts: [{ name: { formatted_name: 'Ana' } }] },
    ];
    for (const extra of ok) expect((await send(url, { messaging_product: 'whatsapp', to: '447700900123', ...extra })).status).toBe(200);
    expect(sim.sent.map((m) => m.type)).toEqual(ok.map((o) => o.type));
  });

  it('fails with an injected rate limit: 429, Retry-After and code 130429', async () => {
    const { sim, url } = await simulator();
    sim.inject({ code: 130429, retryAfterSeconds: 7 });
    const r = await send(url, textMessage());
    expectGraphError(r, 429, 130429);
    expect(r.headers.get('retry-after')).toBe('7');
    expect(sim.sent).toHaveLength(0);
    sim.clearFailures();
    expect((await send(url, textMessage())).status).toBe(200);
  });

  it('takes failure rules over the control API, refuses bad ones, and clears them', async () => {
    const { sim, url } = await simulator();
    const add = (rule: unknown) => fetch(`${url}/_sim/failures`, { method: 'POST', body: JSON.stringify(rule) });
    expect((await add({ code: 131056 })).status).toBe(201);
    expectGraphError(await send(url, textMessage()), 400, 131056);
    const bad = await add({ errorRate: 2 });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as Json).error).toMatch(/errorRate/);
    expect((await add({ code: 1, typo: true })).status).toBe(400);
    expect((await fetch(`${url}/_sim/failures`, { method: 'DELETE' })).status).toBe(204);
    expect((await send(url, textMessage())).status).toBe(200);
    const stats = (await (await fetch(`${url}/_sim/stats`)).json()) as Json;
    expect(stats).toMatchObject({ requests: 2, accepted: 1, failed: 1, byCode: { '131056': 1 } });
    expect(sim.requestCount).toBe(2);
  });

  it('applies a rule with `times` to the next N requests only, and a phoneNumberId rule to that sender only', async () => {
    const { sim: s, url: sUrl } = await simulator();
    s.inject({ code: 131000, times: 2 });
    expectGraphError(await send(sUrl, textMessage()), 500, 131000);
    expectGraphError(await send(sUrl, textMessage()), 500, 131000);
    expect((await send(sUrl, textMessage())).status).toBe(200);
    expect((await send(sUrl, textMessage())).status).toBe(200);

    s.inject({ code: 131048, phoneNumberId: '100000000000009' });
    expect((await send(sUrl, textMessage())).status).toBe(200);
    expectGraphError(await send(sUrl, textMessage(), { path: '/v21.0/100000000000009/messages' }), 400, 131048);
    expect(s.sent).toHaveLength(3);
  });

  it('fails the share of requests given by errorRate, decided by random()', async () => {
    const { sim, url } = await simulator({ random: () => 0.3 });
    sim.inject({ errorRate: 0.5, code: 2 });
    expectGraphError(await send(url, textMessage()), 500, 2);
    sim.clearFailures();
    sim.inject({ errorRate: 0.2, code: 2 });
    expect((await send(url, textMessage())).status).toBe(200);
  });

  it('fails every request with 503 and code 131000 during an outage window, then recovers', async () => {
    const { sim, url } = await simulator();
    const until = Date.now() + 250;
    sim.inject({ outageUntil: until, retryAfterSeconds: 1 });
    const r = await send(url, textMessage());
    expectGraphError(r, 503, 131000);
    expect(r.headers.get('retry-after')).toBe('1');
    expectGraphError(await send(url, textMessage()), 503, 131000);
    await sleep(Math.max(0, until - Date.now()) + 10);
    expect((await send(url, textMessage())).status).toBe(200);
    expect(sim.stats()).toMatchObject({ requests: 3, accepted: 1, failed: 2, byCode: { '131000': 2 } });
  });

  it('adds the configured latency to every send', async () => {
    const { url } = await simulator({ latencyMs: 120 });
    const t0 = performance.now();
    expect((await send(url, textMessage())).status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(110);
  });
});

describe('GraphApiSimulator: status webhooks', () => {
  const statusOf = (h: Hit) => JSON.parse(h.body.toString('utf8')).entry[0].changes[0].value.statuses[0];

  it('posts signed sent → delivered → read webhooks with the wamid, recipient and biz_opaque_callback_data', async () => {
    const receiver = await testReceiver();
    const { sim, url } = await simulator({ webhook: { url: receiver.url, appSecret: SECRET } });
    const biz = 'outbox:42/é'; // Meta escapes "/" and non-ASCII: the signature must be over these exact bytes
    const r = await send(url, textMessage({ biz_opaque_callback_data: biz }));
    const wamid = r.json.messages[0].id as string;
    await sim.flushWebhooks();

    expect(receiver.hits).toHaveLength(3);
    for (const hit of receiver.hits) {
      expect(verifySignature(hit.body, hit.headers['x-hub-signature-256'] as string, [SECRET])).toMatchObject({ ok: true });
      expect(verifySignature(hit.body, hit.headers['x-hub-signature-256'] as string, ['another-secret'])).toMatchObject({ ok: false });
      expect(hit.headers['content-type']).toMatch(/^application\/json/);
      expect(hit.body.toString('latin1')).toContain('outbox:42\\/\\u00e9');
      const body = JSON.parse(hit.body.toString('utf8'));
      expect(body.object).toBe('whatsapp_business_account');
      expect(body.entry[0].changes[0].field).toBe('messages');
      expect(body.entry[0].changes[0].value.metadata.phone_number_id).toBe(PHONE_ID);
    }
    const statuses = receiver.hits.map(statusOf);
    expect(statuses.map((s) => s.status)).toEqual(['sent', 'delivered', 'read']);
    for (const s of statuses) {
      expect(s).toMatchObject({ id: wamid, recipient_id: '447700900123', biz_opaque_callback_data: biz });
      expect(s.timestamp).toMatch(/^\d{10}$/);
    }
    const ts = statuses.map((s) => Number(s.timestamp));
    expect(ts).toEqual([...ts].sort((a, b) => a - b));
    expect(sim.stats().webhooks).toMatchObject({ queued: 1, posted: 3, failed: 0 });
  });

  it('posts only the statuses asked for, and nothing for a refused send', async () => {
    const receiver = await testReceiver();
    const { sim, url } = await simulator({ webhook: { url: receiver.url, appSecret: SECRET, statuses: ['sent', 'read'] } });
    await send(url, textMessage({ to: 'bad' }));
    await send(url, textMessage());
    await sim.flushWebhooks();
    expect(receiver.hits.map((h) => statusOf(h).status)).toEqual(['sent', 'read']);
  });

  it('posts every status twice with duplicateRate 1, byte for byte', async () => {
    const receiver = await testReceiver();
    const { sim, url } = await simulator({ webhook: { url: receiver.url, appSecret: SECRET, duplicateRate: 1 } });
    await send(url, textMessage());
    await send(url, textMessage());
    await sim.flushWebhooks();
    expect(receiver.hits).toHaveLength(12);
    const byBytes = new Map<string, number>();
    for (const h of receiver.hits) byBytes.set(h.body.toString('hex'), (byBytes.get(h.body.toString('hex')) ?? 0) + 1);
    expect([...byBytes.values()]).toEqual([2, 2, 2, 2, 2, 2]);
  });

  it('posts a send’s statuses out of order with shuffle', async () => {
    const receiver = await testReceiver();
    // random() = 0: Fisher–Yates turns [sent, delivered, read] into [delivered, read, sent]
    const { sim, url } = await simulator({ webhook: { url: receiver.url, appSecret: SECRET, shuffle: true }, random: () => 0 });
    await send(url, textMessage());
    await sim.flushWebhooks();
    const order = receiver.hits.map((h) => statusOf(h).status);
    expect(order).toEqual(['delivered', 'read', 'sent']);
  });

  it('retries a failing receiver, then gives up and logs without stopping the server', async () => {
    const flaky = await testReceiver({ status: (n) => (n <= 2 ? 503 : 200) });
    const a = await simulator({ webhook: { url: flaky.url, appSecret: SECRET, statuses: ['sent'] } });
    await send(a.url, textMessage());
    await a.sim.flushWebhooks();
    expect(flaky.hits).toHaveLength(3); // 503, 503, 200
    expect(a.sim.stats().webhooks).toMatchObject({ posted: 1, failed: 0 });

    const b = await simulator({ webhook: { url: await closedUrl(), appSecret: SECRET, statuses: ['sent'] } });
    await send(b.url, textMessage());
    await b.sim.flushWebhooks();
    expect(b.sim.stats().webhooks).toMatchObject({ posted: 0, failed: 1 });
    expect(b.log.records.some((r) => r.level === 'warn' && /not delivered/.test(r.message))).toBe(true);
    expect((await send(b.url, textMessage())).status).toBe(200);
  });
});

describe('generateTraffic', () => {
  it('posts N signed POSTs, counts the duplicates, and its summary matches what the server received', async () => {
    const receiver = await testReceiver();
    const summary = await generateTraffic({
      webhookUrl: receiver.url,
      appSecret: SECRET,
      posts: 60,
      ratePerSecond: 5000,
      conversations: 4,
      messagesPerPost: 3,
      duplicateRate: 0.25,
      concurrency: 8,
      random: seeded(7),
    });
    const hits = receiver.hits;
    expect(hits).toHaveLength(60);
    expect(summary).toMatchObject({ posts: 60, accepted: 60, failed: 0, statusCounts: { '200': 60 } });
    for (const h of hits) {
      expect(verifySignature(h.body, h.headers['x-hub-signature-256'] as string, [SECRET])).toMatchObject({ ok: true });
    }
    const seen = new Set<string>();
    let duplicates = 0;
    const ids = new Set<string>();
    const froms = new Set<string>();
    const types = new Set<string>();
    for (const h of hits) {
      const key = h.body.toString('hex');
      if (seen.has(key)) duplicates++;
      seen.add(key);
      const body = JSON.parse(h.body.toString('utf8'));
      expect(body.entry).toHaveLength(1);
      expect(body.entry[0].changes).toHaveLength(1);
      const value = body.entry[0].changes[0].value;
      expect(value.metadata.phone_number_id).toBe(PHONE_ID);
      expect(value.messages).toHaveLength(3);
      const contactIds = new Set(value.contacts.map((c: Json) => c.wa_id));
      for (const m of value.messages) {
        expect(m.id).toMatch(/^wamid\.SIM/);
        expect(m.from).toMatch(/^4477009\d{5}$/);
        expect(m.timestamp).toMatch(/^\d{10}$/);
        expect(contactIds.has(m.from)).toBe(true);
        ids.add(m.id);
        froms.add(m.from);
        types.add(m.type);
      }
    }
    expect(duplicates).toBeGreaterThan(0);
    expect(summary.duplicatesSent).toBe(duplicates);
    expect(summary.messagesSent).toBe((60 - duplicates) * 3);
    expect(ids.size).toBe(summary.messagesSent); // fresh messages never reuse a wamid
    expect(froms.size).toBe(4);
    expect(types.has('text')).toBe(true);
    expect(types.has('interactive')).toBe(true);
    expect(summary.latencyMs.max).toBeGreaterThanOrEqual(summary.latencyMs.p50);
  });

  it('paces the POSTs at the requested rate', async () => {
    const receiver = await testReceiver();
    const t0 = performance.now();
    const summary = await generateTraffic({ webhookUrl: receiver.url, appSecret: SECRET, posts: 11, ratePerSecond: 100 });
    expect(summary.posts).toBe(11);
    // POST i is due at i × 10 ms after the start: the last one cannot arrive before 100 ms (unpaced: a few ms)
    expect(receiver.hits.at(-1)!.at - t0).toBeGreaterThanOrEqual(95);
    expect(receiver.hits[4]!.at - t0).toBeGreaterThanOrEqual(35);
  });

  it('keeps at most `concurrency` requests in flight', async () => {
    const receiver = await testReceiver({ delayMs: 40 });
    const summary = await generateTraffic({ webhookUrl: receiver.url, appSecret: SECRET, posts: 12, ratePerSecond: 10_000, concurrency: 3 });
    expect(summary.accepted).toBe(12);
    expect(receiver.maxInFlight()).toBeLessThanOrEqual(3);
    expect(receiver.maxInFlight()).toBeGreaterThanOrEqual(2);
  });

  it('counts failed POSTs by HTTP status and connection errors', async () => {
    const receiver = await testReceiver({ status: (n) => (n % 3 === 0 ? 503 : 200) });
    const s = await generateTraffic({ webhookUrl: receiver.url, appSecret: SECRET, posts: 9, ratePerSecond: 10_000, concurrency: 1 });
    expect(s).toMatchObject({ posts: 9, accepted: 6, failed: 3, statusCounts: { '200': 6, '503': 3 } });

    const down = await generateTraffic({ webhookUrl: await closedUrl(), appSecret: SECRET, posts: 2, ratePerSecond: 10_000 });
    expect(down).toMatchObject({ posts: 2, accepted: 0, failed: 2, statusCounts: { network: 2 } });
  });

  it('refuses options out of range, naming them', async () => {
    const base = { webhookUrl: 'http://127.0.0.1:9/x', appSecret: SECRET, posts: 1, ratePerSecond: 1 };
    await expect(generateTraffic({ ...base, posts: 0 })).rejects.toThrow(/posts/);
    await expect(generateTraffic({ ...base, posts: 1_000_001 })).rejects.toThrow(/posts/);
    await expect(generateTraffic({ ...base, ratePerSecond: 0 })).rejects.toThrow(/ratePerSecond/);
    await expect(generateTraffic({ ...base, messagesPerPost: 1001 })).rejects.toThrow(/messagesPerPost/);
    await expect(generateTraffic({ ...base, duplicateRate: 1.5 })).rejects.toThrow(/duplicateRate/);
  });
});

describe('wahook simulate', () => {
  function captureOutput() {
    let out = '';
    let err = '';
    const write = { out: process.stdout.write, err: process.stderr.write };
    process.stdout.write = ((s: string | Uint8Array) => ((out += String(s)), true)) as typeof process.stdout.write;
    process.stderr.write = ((s: string | Uint8Array) => ((err += String(s)), true)) as typeof process.stderr.write;
    const restore = () => {
      process.stdout.write = write.out;
      process.stderr.write = write.err;
    };
    return { out: () => out, err: () => err, restore };
  }

  it('traffic: sends the POSTs, prints a summary, and sets a failing exit code when a POST failed', async () => {
    const good = await testReceiver();
    const bad = await testReceiver({ status: () => 500 });
    const io = captureOutput();
    try {
      await simulateCommand(['traffic', '--posts', '5', '--rate', '1000', '--url', good.url, '--app-secret', SECRET], {}, recordingLogger());
      expect(process.exitCode ?? 0).toBe(0);
      await simulateCommand(['traffic', '--posts=2', '--rate=1000', `--url=${bad.url}`], { WHATSAPP_APP_SECRET: `${SECRET},old` }, recordingLogger());
      expect(process.exitCode).toBe(1);
    } finally {
      io.restore();
      process.exitCode = undefined;
    }
    expect(good.hits).toHaveLength(5);
    expect(bad.hits).toHaveLength(2);
    for (const h of [...good.hits, ...bad.hits]) {
      expect(verifySignature(h.body, h.headers['x-hub-signature-256'] as string, [SECRET])).toMatchObject({ ok: true });
    }
    expect(io.out()).toMatch(/POSTs\s+5\n/);
    expect(io.out()).toMatch(/HTTP 500\s+2\n/);
    expect(io.err()).toMatch(/2 of 2 POSTs failed/);
  });

  it('refuses bad flags with a message naming the flag and what it expects', async () => {
    const log = recordingLogger();
    const cases: Array<[string[], RegExp]> = [
      [['traffic', '--app-secret', 's'], /--posts is required/],
      [['traffic', '--posts', 'ten'], /--posts expects a whole number from 1 to 1000000 \(got "ten"\)/],
      [['traffic', '--posts', '5', '--rate', '0', '--app-secret', 's'], /--rate expects a number above 0/],
      [['traffic', '--posts', '5', '--duplicates', '1.5', '--app-secret', 's'], /--duplicates expects a number from 0 to 1/],
      [['traffic', '--posts', '5', '--per-post', '2000', '--app-secret', 's'], /--per-post expects a whole number from 1 to 1000/],
      [['traffic', '--posts', '5', '--url', 'ftp://x', '--app-secret', 's'], /--url expects an http or https URL/],
      [['traffic', '--posts', '5'], /--app-secret is required/],
      [['traffic', '--posts'], /--posts needs a value/],
      [['traffic', '--posts', '5', '--bogus', '1'], /unknown flag --bogus/],
      [['api', '--port', '99999'], /--port expects a whole number from 0 to 65535/],
      [['api', '--error-rate', '2'], /--error-rate expects a number from 0 to 1/],
      [['api', '--webhook-url', 'http://127.0.0.1:1/x'], /--webhook-url needs --app-secret/],
      [['launch'], /expected api or traffic/],
    ];
    for (const [args, message] of cases) {
      await expect(simulateCommand(args, {}, log), args.join(' ')).rejects.toThrow(message);
    }
  });

  it('api: serves sends until SIGTERM and prints how to point wahook at it', async () => {
    const script = `
      const { simulateCommand } = await import('./src/cli/simulate.ts');
      const { makeLogger } = await import('./src/log.ts');
      await simulateCommand(['api', '--port', '0', '--token', '${TOKEN}', '--no-webhooks'], process.env, makeLogger());
      process.stdout.write('STOPPED\\n');`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: ROOT,
      env: { ...process.env, WAHOOK_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    cleanups.push(async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const deadline = Date.now() + 15_000;
    let m: RegExpMatchArray | null = null;
    while (!(m = out.match(/WHATSAPP_API_BASE_URL=(http:\/\/127\.0\.0\.1:\d+)\/v21\.0/)) && Date.now() < deadline && child.exitCode === null) {
      await sleep(20);
    }
    expect(m, out).not.toBeNull();
    const base = m![1]!;
    const r = await send(base, textMessage());
    expect(r.status).toBe(200);
    expect((await send(base, textMessage(), { token: 'wrong' })).status).toBe(401);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(out).toContain('STOPPED');
  }, 20_000);
});
