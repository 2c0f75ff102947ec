// Signed inbound webhook traffic, as Meta would post it: messages from a set of customers (mostly text, some
// button and list replies), unique wamids, timestamps that never go back, several messages per POST on demand,
// and byte-for-byte redeliveries. Paced by a scheduler (POST i is due at start + i / rate), at most `concurrency`
// requests in flight, each with a timeout: every loop is bounded in count and in time.
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { sign } from '../receiver/signature.ts';
import {
  DEFAULT_DISPLAY_PHONE_NUMBER,
  DEFAULT_PHONE_NUMBER_ID,
  messagesWebhook,
  metaJson,
  type InboundContact,
  type InboundMessage,
} from './payloads.ts';

export interface TrafficProgress {
  done: number;
  total: number;
  accepted: number;
  failed: number;
}

export interface TrafficOptions {
  webhookUrl: string;
  appSecret: string;
  /** total POSTs (duplicates included), 1..1_000_000 */
  posts: number;
  /** POSTs per second */
  ratePerSecond: number;
  /** distinct customers, default 10 */
  conversations?: number;
  /** 1..1000, default 1 */
  messagesPerPost?: number;
  /** 0..1: resend an earlier POST byte for byte */
  duplicateRate?: number;
  phoneNumberId?: string;
  /** max requests in flight, default 16 */
  concurrency?: number;
  onProgress?: (p: TrafficProgress) => void;
  random?: () => number;
  /** per POST, default 30 s */
  requestTimeoutMs?: number;
  /** stop scheduling new POSTs (those in flight finish) */
  signal?: AbortSignal;
}

export interface TrafficSummary {
  /** POSTs made (fewer than asked only when stopped through `signal`) */
  posts: number;
  /** answered 2xx */
  accepted: number;
  /** any other answer, a timeout or a connection error */
  failed: number;
  /** by HTTP status ("200", "503", …), "timeout" or "network" */
  statusCounts: Record<string, number>;
  duplicatesSent: number;
  /** messages in the POSTs that were not redeliveries */
  messagesSent: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number };
  seconds: number;
}

export const MAX_POSTS = 1_000_000;
const MAX_RECENT = 1_000; // POSTs a duplicate can be copied from
const CUSTOMER_PREFIX = '4477009';

const NAMES = ['Ana', 'Ben', 'Chloé', 'Dev', 'Eitan', 'Fatima', 'Gus', 'Hana', 'Iván', 'Jo', 'Kemi', 'Lars', 'Mei', 'Nour', 'Priya', 'Zoë'];
const TEXTS = [
  'Hi',
  'Hello, is anyone there?',
  'Where is my order?',
  'My order number is 10442/B',
  'Can I change the delivery address?',
  'What are your opening hours?',
  'Thanks!',
  'Gracias 🙏',
  'Ça marche, merci',
  'ok',
  'I need help with my account',
  'Can someone call me back?',
];
const BUTTONS = [
  { id: 'confirm_yes', title: 'Yes' },
  { id: 'confirm_no', title: 'No' },
  { id: 'talk_to_agent', title: 'Talk to an agent' },
];
const LIST_ROWS = [
  { id: 'track_order', title: 'Track my order', description: 'Where is my parcel?' },
  { id: 'returns', title: 'Returns', description: 'Send something back' },
  { id: 'opening_hours', title: 'Opening hours', description: 'When are you open?' },
];
const QUICK_REPLIES = [
  { payload: 'RESCHEDULE', text: 'Reschedule' },
  { payload: 'STOP', text: 'Stop promotions' },
];

function check(ok: boolean, message: string): void {
  if (!ok) throw new RangeError(message);
}

const isInt = (v: number, min: number, max: number) => Number.isInteger(v) && v >= min && v <= max;

/** Makes the messages of fresh POSTs: one run's customers, wamids and clock. */
class Conversations {
  private readonly customers: InboundContact[];
  private readonly runId = randomBytes(4).toString('hex').toUpperCase();
  private seq = 0;
  private lastTimestamp = 0;

  constructor(count: number, private readonly random: () => number) {
    this.customers = Array.from({ length: count }, (_, i) => ({
      waId: CUSTOMER_PREFIX + String(i).padStart(5, '0'),
      name: NAMES[i % NAMES.length]!,
    }));
  }

  private pick<T>(items: readonly T[]): T {
    return items[Math.min(items.length - 1, Math.floor(this.random() * items.length))]!;
  }

  private id(kind: 'SIM' | 'SIMOUT'): string {
    return `wamid.${kind}${this.runId}${(++this.seq).toString(36).toUpperCase().padStart(8, '0')}`;
  }

  message(customer: InboundContact): InboundMessage {
    this.lastTimestamp = Math.max(this.lastTimestamp, Math.floor(Date.now() / 1000));
    const base = { from: customer.waId, id: this.id('SIM'), timestamp: String(this.lastTimestamp) };
    const context = { from: DEFAULT_DISPLAY_PHONE_NUMBER, id: this.id('SIMOUT') }; // the business message answered
    const roll = this.random();
    if (roll < 0.8) return { ...base, type: 'text', text: { body: this.pick(TEXTS) } };
    if (roll < 0.9) return { ...base, type: 'interactive', context, interactive: { type: 'button_reply', button_reply: this.pick(BUTTONS) } };
    if (roll < 0.95) return { ...base, type: 'interactive', context, interactive: { type: 'list_reply', list_reply: this.pick(LIST_ROWS) } };
    return { ...base, type: 'button', context, button: this.pick(QUICK_REPLIES) };
  }

  /** The JSON of one fresh POST with `count` messages in one change. */
  post(phoneNumberId: string, count: number): Buffer {
    const messages: InboundMessage[] = [];
    const contacts = new Map<string, InboundContact>();
    for (let i = 0; i < count; i++) {
      const customer = this.pick(this.customers);
      contacts.set(customer.waId, customer);
      messages.push(this.message(customer));
    }
    return Buffer.from(metaJson(messagesWebhook(phoneNumberId, [...contacts.values()], messages)));
  }
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const v = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
  return Math.round(v * 10) / 10;
}

export async function generateTraffic(opts: TrafficOptions): Promise<TrafficSummary> {
  const conversations = opts.conversations ?? 10;
  const perPost = opts.messagesPerPost ?? 1;
  const duplicateRate = opts.duplicateRate ?? 0;
  const concurrency = opts.concurrency ?? 16;
  const timeoutMs = opts.requestTimeoutMs ?? 30_000;
  const phoneNumberId = opts.phoneNumberId ?? DEFAULT_PHONE_NUMBER_ID;
  check(isInt(opts.posts, 1, MAX_POSTS), `posts must be a whole number from 1 to ${MAX_POSTS}`);
  check(opts.ratePerSecond > 0 && opts.ratePerSecond <= 100_000, 'ratePerSecond must be a number above 0 and at most 100000');
  check(isInt(conversations, 1, 100_000), 'conversations must be a whole number from 1 to 100000');
  check(isInt(perPost, 1, 1000), 'messagesPerPost must be a whole number from 1 to 1000');
  check(duplicateRate >= 0 && duplicateRate <= 1, 'duplicateRate must be a number from 0 to 1');
  check(isInt(concurrency, 1, 1024), 'concurrency must be a whole number from 1 to 1024');
  check(isInt(timeoutMs, 1, 600_000), 'requestTimeoutMs must be a whole number from 1 to 600000');
  check(/^\d+$/.test(phoneNumberId), 'phoneNumberId must be digits');
  check(opts.appSecret !== '', 'appSecret is required');
  check(/^https?:$/.test(URL.canParse(opts.webhookUrl) ? new URL(opts.webhookUrl).protocol : ''), 'webhookUrl must be an http or https URL');

  const random = opts.random ?? Math.random;
  const source = new Conversations(conversations, random);
  const recent: Array<{ body: Buffer; signature: string }> = [];
  const latencies = new Float64Array(opts.posts);
  const statusCounts: Record<string, number> = {};
  const progress: TrafficProgress = { done: 0, total: opts.posts, accepted: 0, failed: 0 };
  let duplicatesSent = 0;
  let messagesSent = 0;
  let next = 0;

  const nextBody = (): { body: Buffer; signature: string } => {
    if (recent.length > 0 && duplicateRate > 0 && random() < duplicateRate) {
      duplicatesSent++;
      return recent[Math.min(recent.length - 1, Math.floor(random() * recent.length))]!;
    }
    const body = source.post(phoneNumberId, perPost);
    const fresh = { body, signature: sign(body, opts.appSecret) };
    messagesSent += perPost;
    if (recent.length < MAX_RECENT) recent.push(fresh);
    else recent[Math.floor(random() * MAX_RECENT) % MAX_RECENT] = fresh;
    return fresh;
  };

  const post = async ({ body, signature }: { body: Buffer; signature: string }) => {
    const t0 = performance.now();
    let key: string;
    let ok = false;
    try {
      const res = await fetch(opts.webhookUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Hub-Signature-256': signature, 'User-Agent': 'facebookexternalua' },
        body: new Uint8Array(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      await res.arrayBuffer();
      key = String(res.status);
      ok = res.ok;
    } catch (err) {
      key = (err as Error).name === 'TimeoutError' ? 'timeout' : 'network';
    }
    latencies[progress.done] = performance.now() - t0;
    statusCounts[key] = (statusCounts[key] ?? 0) + 1;
    if (ok) progress.accepted++;
    else progress.failed++;
    progress.done++;
    opts.onProgress?.({ ...progress });
  };

  // one listener on the caller's signal; every waiting worker listens to ours
  const stop = new AbortController();
  setMaxListeners(0, stop.signal);
  const onAbort = () => stop.abort();
  if (opts.signal?.aborted) stop.abort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  const start = performance.now();
  const interval = 1000 / opts.ratePerSecond;
  const worker = async () => {
    while (!stop.signal.aborted) {
      const i = next++;
      if (i >= opts.posts) return;
      const wait = start + i * interval - performance.now();
      if (wait > 0) {
        try {
          await sleep(wait, undefined, { signal: stop.signal });
        } catch {
          return; // aborted
        }
      }
      await post(nextBody());
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, opts.posts) }, worker));
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }

  const sorted = latencies.slice(0, progress.done).sort();
  return {
    posts: progress.done,
    accepted: progress.accepted,
    failed: progress.failed,
    statusCounts,
    duplicatesSent,
    messagesSent,
    latencyMs: { p50: percentile(sorted, 0.5), p95: percentile(sorted, 0.95), p99: percentile(sorted, 0.99), max: percentile(sorted, 1) },
    seconds: Math.round((performance.now() - start) / 10) / 100,
  };
}
