// A stand-in for Meta's Graph API send endpoint, for tests and local runs: `POST /{phone_number_id}/messages`
// checked like Meta checks it (token, body shape), answered with a wamid or with Meta's error envelope, failures
// injected on demand (rates, codes, Retry-After, latency, outages), and the signed status webhooks that follow an
// accepted send (sent → delivered → read, optionally duplicated and out of order) posted to a receiver.
// A control API on the same server (`/_sim/…`) serves other processes. Loopback-only and bounded by default.
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeLogger, type Logger } from '../log.ts';
import { sign } from '../receiver/signature.ts';
import { metaJson, statusWebhook, type DeliveryStatus } from './payloads.ts';

export interface SimulatorWebhookOptions {
  url: string;
  appSecret: string;
  /** default all three, posted in this order */
  statuses?: Array<'sent' | 'delivered' | 'read'>;
  /** pause before each status webhook */
  delayMs?: number;
  /** 0..1: post some status webhooks twice */
  duplicateRate?: number;
  /** post a send's status webhooks out of order */
  shuffle?: boolean;
}

export interface FailureRule {
  /** 0..1, default 1: the share of the requests this rule applies to that fail */
  errorRate?: number;
  /** Graph error code, default 131000 */
  code?: number;
  /** default from the code: 429 for 4/80007/130429, 401 for 190, 400 for permanent and account codes, 500 otherwise */
  httpStatus?: number;
  /** adds a Retry-After header */
  retryAfterSeconds?: number;
  /** extra latency for the requests this rule applies to (failing or not: errorRate 0 gives a slow API) */
  latencyMs?: number;
  /** apply to the next N requests only */
  times?: number;
  /** epoch ms: every request fails with 503 and code 131000 (unless set) until then */
  outageUntil?: number;
  /** only requests from this sender */
  phoneNumberId?: string;
}

export interface SentMessage {
  wamid: string;
  phoneNumberId: string;
  to: string;
  type: string;
  body: unknown;
  bizOpaqueCallbackData?: string;
  at: number;
}

export interface SimulatorStats {
  requests: number;
  accepted: number;
  failed: number;
  byCode: Record<string, number>;
  webhooks: { queued: number; posted: number; failed: number; dropped: number };
}

export interface GraphApiSimulatorOptions {
  accessToken: string;
  host?: string;
  port?: number;
  webhook?: SimulatorWebhookOptions;
  /** latency added to every send */
  latencyMs?: number;
  log?: Logger;
  random?: () => number;
}

export const MESSAGE_TYPES = [
  'text', 'template', 'interactive', 'image', 'document', 'audio', 'video', 'sticker', 'location', 'reaction', 'contacts',
] as const;
const MEDIA_TYPES = new Set(['image', 'document', 'audio', 'video', 'sticker']);
const STATUS_ORDER: DeliveryStatus[] = ['sent', 'delivered', 'read'];

const MAX_SEND_BYTES = 1024 * 1024;
const MAX_CONTROL_BYTES = 64 * 1024;
const MAX_SENT = 100_000; // oldest dropped beyond this
const MAX_RULES = 1_000;
const MAX_QUEUED_WEBHOOK_SENDS = 10_000; // sends whose status webhooks wait; more are dropped (logged)
const WEBHOOK_CONCURRENCY = 8; // sends whose webhooks are posted at once; one send's statuses go one by one
const WEBHOOK_ATTEMPTS = 4;
const WEBHOOK_RETRY_BASE_MS = 100;
const WEBHOOK_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------------------------
// Graph errors

const RATE_LIMIT_CODES = new Set([4, 80007, 130429]);
const CLIENT_ERROR_CODES = new Set([
  // permanent for the message
  100, 131008, 131009, 131021, 131026, 131047, 131050, 131051, 131053, 130403,
  // the account cannot send
  0, 10, 368, 131031, 131042,
  // limits Meta answers with 400
  131048, 131049, 131056,
]);

const TITLES: Record<number, string> = {
  0: 'AuthException',
  1: 'An unknown error occurred',
  2: 'Service temporarily unavailable',
  4: 'Application request limit reached',
  10: 'Permission denied',
  100: 'Invalid parameter',
  190: 'Invalid OAuth access token - Cannot parse access token',
  368: 'Temporarily blocked for policies violations',
  80007: 'Rate limit issues',
  130403: 'Recipient not in allowed list',
  130429: 'Rate limit hit',
  131000: 'Something went wrong',
  131008: 'Required parameter is missing',
  131009: 'Parameter value is not valid',
  131016: 'Service unavailable',
  131021: 'Recipient cannot be sender',
  131026: 'Message undeliverable',
  131031: 'Business Account locked',
  131042: 'Business eligibility payment issue',
  131047: 'Re-engagement message',
  131048: 'Spam rate limit hit',
  131049: 'Meta chose not to deliver',
  131050: 'User has stopped marketing messages',
  131051: 'Unsupported message type',
  131053: 'Media upload error',
  131056: '(Business Account, Consumer Account) pair rate limit hit',
  131057: 'Account in maintenance mode',
  133004: 'Server temporarily unavailable',
};

/** The HTTP status Meta answers a Graph error code with (the sender should decide on the code, not this). */
export function defaultHttpStatus(code: number): number {
  if (RATE_LIMIT_CODES.has(code)) return 429;
  if (code === 190) return 401;
  if (CLIENT_ERROR_CODES.has(code) || (code >= 200 && code <= 299) || (code >= 132000 && code <= 132016)) return 400;
  return 500;
}

function graphError(code: number, details?: string, message = TITLES[code] ?? 'Simulated failure') {
  return {
    error: {
      message: `(#${code}) ${message}`,
      type: 'OAuthException',
      code,
      ...(code === 130429 ? { error_subcode: 2494055 } : {}),
      error_data: { messaging_product: 'whatsapp', details: details ?? message },
      fbtrace_id: randomBytes(9).toString('base64url'),
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Checks

type SendCheck = { ok: true; to: string; type: string; bizOpaqueCallbackData?: string } | { ok: false; problem: string };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isText = (v: unknown): v is string => typeof v === 'string' && v !== '';

/** The body checks Meta makes on a send, each failure named the way its error message names it. */
export function checkSendBody(body: unknown): SendCheck {
  const bad = (problem: string): SendCheck => ({ ok: false, problem });
  if (!isObject(body)) return bad('The request body must be a JSON object.');
  if (body.messaging_product === undefined) return bad('The parameter messaging_product is required.');
  if (body.messaging_product !== 'whatsapp') return bad("Param messaging_product must be 'whatsapp'.");
  if (body.recipient_type !== undefined && body.recipient_type !== 'individual') return bad("Param recipient_type must be 'individual'.");
  if (body.to === undefined) return bad('The parameter to is required.');
  if (typeof body.to !== 'string' || !/^\+?\d{5,15}$/.test(body.to)) return bad('Param to must be a phone number or WhatsApp ID (digits).');
  const type = body.type ?? 'text'; // Meta's default
  if (typeof type !== 'string' || !(MESSAGE_TYPES as readonly string[]).includes(type)) {
    return bad(`Param type must be one of ${MESSAGE_TYPES.join(', ')}.`);
  }
  const obj = body[type];
  if (obj === undefined) return bad(`The parameter ${type} is required.`);
  if (type === 'contacts') {
    if (!Array.isArray(obj) || obj.length === 0) return bad("Param contacts must be a non-empty array.");
  } else if (!isObject(obj)) {
    return bad(`Param ${type} must be an object.`);
  } else if (type === 'text') {
    if (!isText(obj.body) || obj.body.length > 4096) return bad("Param text['body'] must be a non-empty string of at most 4096 characters.");
  } else if (type === 'template') {
    if (!isText(obj.name)) return bad("Param template['name'] is required.");
    if (!isObject(obj.language) || !isText(obj.language.code)) return bad("Param template['language']['code'] is required.");
  } else if (type === 'interactive') {
    if (!isText(obj.type)) return bad("Param interactive['type'] is required.");
    if (!isObject(obj.action)) return bad("Param interactive['action'] is required.");
  } else if (MEDIA_TYPES.has(type)) {
    if (!isText(obj.id) && !isText(obj.link)) return bad(`Param ${type} must have an id or a link.`);
  } else if (type === 'location') {
    if (typeof obj.latitude !== 'number' || typeof obj.longitude !== 'number') return bad('Param location must have numeric latitude and longitude.');
  } else if (type === 'reaction') {
    if (!isText(obj.message_id) || typeof obj.emoji !== 'string') return bad("Param reaction must have message_id and emoji.");
  }
  if (body.context !== undefined && (!isObject(body.context) || !isText(body.context.message_id))) {
    return bad("Param context['message_id'] must be a message id.");
  }
  const biz = body.biz_opaque_callback_data;
  if (biz !== undefined && (typeof biz !== 'string' || biz.length > 512)) {
    return bad('Param biz_opaque_callback_data must be a string of at most 512 characters.');
  }
  return { ok: true, to: body.to, type, ...(biz !== undefined ? { bizOpaqueCallbackData: biz } : {}) };
}

const RULE_FIELDS: Record<keyof FailureRule, (v: unknown) => boolean> = {
  errorRate: (v) => typeof v === 'number' && v >= 0 && v <= 1,
  code: (v) => Number.isInteger(v) && (v as number) >= 0,
  httpStatus: (v) => Number.isInteger(v) && (v as number) >= 400 && (v as number) <= 599,
  retryAfterSeconds: (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 86_400,
  latencyMs: (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 60_000,
  times: (v) => Number.isInteger(v) && (v as number) >= 1,
  outageUntil: (v) => typeof v === 'number' && Number.isFinite(v),
  phoneNumberId: (v) => typeof v === 'string' && /^\d+$/.test(v),
};
const RULE_EXPECTS: Record<keyof FailureRule, string> = {
  errorRate: 'a number from 0 to 1',
  code: 'a whole number ≥ 0',
  httpStatus: 'a whole number from 400 to 599',
  retryAfterSeconds: 'a whole number of seconds from 0 to 86400',
  latencyMs: 'a whole number of milliseconds from 0 to 60000',
  times: 'a whole number ≥ 1',
  outageUntil: 'a time in epoch milliseconds',
  phoneNumberId: 'a phone number id (digits)',
};

/** Checks a failure rule (from code or from the control API); throws a RangeError naming the bad field. */
export function parseFailureRule(input: unknown): FailureRule {
  if (!isObject(input)) throw new RangeError('a failure rule is a JSON object');
  for (const [key, value] of Object.entries(input)) {
    if (!(key in RULE_FIELDS)) throw new RangeError(`unknown failure rule field "${key}" (known: ${Object.keys(RULE_FIELDS).join(', ')})`);
    const k = key as keyof FailureRule;
    if (value !== undefined && !RULE_FIELDS[k](value)) throw new RangeError(`failure rule field ${key} must be ${RULE_EXPECTS[k]}`);
  }
  return { ...input } as FailureRule;
}

// ---------------------------------------------------------------------------------------------------------------
// The server

interface ActiveRule {
  rule: FailureRule;
  remaining: number | undefined;
}

interface QueuedSend {
  message: SentMessage;
  done: () => void;
}

type Reply = { status: number; body?: unknown; headers?: Record<string, string> };

function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= limit) chunks.push(c); // past the limit: keep draining, stop keeping
    });
    req.on('end', () => resolve(size <= limit ? Buffer.concat(chunks) : undefined));
    req.on('error', reject);
    req.on('close', () => {
      if (!req.complete) reject(new Error('the client went away before the body arrived'));
    });
  });
}

function parseJson(raw: Buffer): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(raw.toString('utf8')) as unknown };
  } catch {
    return { ok: false };
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

export class GraphApiSimulator {
  private readonly accessToken: string;
  private readonly host: string;
  private readonly port: number;
  private readonly webhook: SimulatorWebhookOptions | undefined;
  private readonly latencyMs: number;
  private readonly log: Logger;
  private readonly random: () => number;
  private readonly abort = new AbortController();
  private readonly sentMessages: SentMessage[] = [];
  private rules: ActiveRule[] = [];
  private server: http.Server | undefined;
  private baseUrl: string | undefined;
  private stopped: Promise<void> | undefined;
  private seq = 0;
  private counts = { requests: 0, accepted: 0, failed: 0 };
  private byCode: Record<string, number> = {};
  private hooks = { queued: 0, posted: 0, failed: 0, dropped: 0 };
  private readonly waiting: QueuedSend[] = [];
  private readonly pending = new Set<Promise<void>>();
  private posting = 0;

  constructor(opts: GraphApiSimulatorOptions) {
    if (!opts.accessToken) throw new RangeError('GraphApiSimulator needs an accessToken');
    if (opts.port !== undefined && !(Number.isInteger(opts.port) && opts.port >= 0 && opts.port <= 65535)) {
      throw new RangeError('GraphApiSimulator port must be a whole number from 0 to 65535');
    }
    const w = opts.webhook;
    if (w) {
      if (!URL.canParse(w.url) || !/^https?:$/.test(new URL(w.url).protocol)) throw new RangeError('webhook url must be an http or https URL');
      if (!w.appSecret) throw new RangeError('webhook appSecret is required');
      if (w.duplicateRate !== undefined && !(w.duplicateRate >= 0 && w.duplicateRate <= 1)) throw new RangeError('webhook duplicateRate must be from 0 to 1');
      if (w.delayMs !== undefined && !(w.delayMs >= 0 && w.delayMs <= 60_000)) throw new RangeError('webhook delayMs must be from 0 to 60000');
      for (const s of w.statuses ?? []) if (!STATUS_ORDER.includes(s)) throw new RangeError(`unknown status "${s}"`);
    }
    this.accessToken = opts.accessToken;
    this.host = opts.host ?? '127.0.0.1';
    this.port = opts.port ?? 0;
    this.webhook = w;
    this.latencyMs = Math.max(0, opts.latencyMs ?? 0);
    this.log = opts.log ?? makeLogger('simulator');
    this.random = opts.random ?? Math.random;
    setMaxListeners(0, this.abort.signal); // every delayed response and webhook post listens; both are bounded
  }

  get url(): string {
    if (this.baseUrl === undefined) throw new Error('GraphApiSimulator is not started');
    return this.baseUrl;
  }

  get sent(): SentMessage[] {
    return this.sentMessages;
  }

  get requestCount(): number {
    return this.counts.requests;
  }

  stats(): SimulatorStats {
    return { ...this.counts, byCode: { ...this.byCode }, webhooks: { ...this.hooks } };
  }

  inject(rule: FailureRule): void {
    const r = parseFailureRule(rule);
    if (this.rules.length >= MAX_RULES) throw new RangeError(`at most ${MAX_RULES} failure rules`);
    this.rules.push({ rule: r, remaining: r.times });
  }

  clearFailures(): void {
    this.rules = [];
  }

  async flushWebhooks(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  async start(): Promise<string> {
    if (this.server) throw new Error('GraphApiSimulator already started');
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.requestTimeout = 30_000;
    server.headersTimeout = 10_000;
    server.maxConnections = 1_000;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const { port } = server.address() as AddressInfo;
    this.baseUrl = `http://${this.host.includes(':') ? `[${this.host}]` : this.host}:${port}`;
    if (!isLoopback(this.host)) this.log.warn('simulator listens beyond loopback: its /_sim control API has no authentication', { host: this.host });
    return this.baseUrl;
  }

  stop(): Promise<void> {
    return (this.stopped ??= (async () => {
      this.abort.abort();
      for (const q of this.waiting.splice(0)) q.done();
      const server = this.server;
      if (!server) return;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    })());
  }

  // --- requests ---------------------------------------------------------------------------------------------

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const path = new URL(req.url ?? '/', 'http://simulator').pathname;
      const reply = path.startsWith('/_sim/') ? await this.control(req, path) : await this.graph(req, path);
      const payload = reply.body === undefined ? '' : JSON.stringify(reply.body);
      res.writeHead(reply.status, {
        ...(payload ? { 'Content-Type': 'application/json; charset=utf-8' } : {}),
        'Content-Length': Buffer.byteLength(payload),
        ...reply.headers,
      });
      res.end(payload);
    } catch (err) {
      if (this.abort.signal.aborted || !req.complete) {
        res.destroy(); // stopping, or the client went away mid-request: nobody to answer
        return;
      }
      this.log.error('simulator request failed', { error: err as Error });
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(graphError(1)));
    }
  }

  private delay(ms: number): Promise<void> {
    return ms > 0 ? sleep(ms, undefined, { signal: this.abort.signal }) : Promise.resolve();
  }

  private fail(code: number, httpStatus = defaultHttpStatus(code), details?: string, headers?: Record<string, string>): Reply {
    this.counts.failed++;
    this.byCode[code] = (this.byCode[code] ?? 0) + 1;
    // a parameter error says which parameter in its message, as Meta's do
    return { status: httpStatus, body: graphError(code, details, code === 100 && details ? details : undefined), headers };
  }

  private async graph(req: http.IncomingMessage, path: string): Promise<Reply> {
    const m = /^\/(?:v\d+(?:\.\d+)?\/)?([^/]+)\/messages\/?$/.exec(path);
    if (!m) return { status: 404, body: graphError(100, `Unknown path components: ${path}`, 'Unknown path components') };
    if (req.method !== 'POST') return { status: 400, body: graphError(100, `Unsupported ${req.method} request.`, `Unsupported ${req.method} request`) };
    this.counts.requests++;
    const phoneNumberId = m[1]!;
    if (Number(req.headers['content-length'] ?? 0) > MAX_SEND_BYTES) {
      req.resume();
      return { ...this.fail(100, 413, `The request body is larger than ${MAX_SEND_BYTES} bytes.`), headers: { Connection: 'close' } };
    }
    const raw = await readBody(req, MAX_SEND_BYTES);
    await this.delay(this.latencyMs);
    if (req.headers.authorization !== `Bearer ${this.accessToken}`) {
      return this.fail(190, 401, 'The access token is missing, malformed or not the one the simulator was given.');
    }
    if (raw === undefined) return this.fail(100, 413, `The request body is larger than ${MAX_SEND_BYTES} bytes.`);
    if (!/^\d+$/.test(phoneNumberId)) return this.fail(100, 400, `Object with ID '${phoneNumberId}' does not exist: a phone number id is digits.`);
    const parsed = parseJson(raw);
    if (!parsed.ok) return this.fail(100, 400, 'The request body is not valid JSON.');
    const check = checkSendBody(parsed.value);
    if (!check.ok) return this.fail(100, 400, check.problem);

    const injected = await this.injectedFailure(phoneNumberId);
    if (injected) return injected;

    const wamid = `wamid.SIMOUT${(++this.seq).toString(36).toUpperCase()}${randomBytes(6).toString('hex').toUpperCase()}`;
    const message: SentMessage = {
      wamid,
      phoneNumberId,
      to: check.to,
      type: check.type,
      body: parsed.value,
      ...(check.bizOpaqueCallbackData !== undefined ? { bizOpaqueCallbackData: check.bizOpaqueCallbackData } : {}),
      at: Date.now(),
    };
    this.sentMessages.push(message);
    if (this.sentMessages.length > MAX_SENT + 1_000) this.sentMessages.splice(0, this.sentMessages.length - MAX_SENT);
    this.counts.accepted++;
    this.queueStatuses(message);
    const waId = check.to.replace(/^\+/, '');
    return { status: 200, body: { messaging_product: 'whatsapp', contacts: [{ input: check.to, wa_id: waId }], messages: [{ id: wamid }] } };
  }

  private async injectedFailure(phoneNumberId: string): Promise<Reply | undefined> {
    const now = Date.now();
    this.rules = this.rules.filter((r) => r.remaining !== 0 && !(r.rule.outageUntil !== undefined && now >= r.rule.outageUntil));
    const active = this.rules.find((r) => r.rule.phoneNumberId === undefined || r.rule.phoneNumberId === phoneNumberId);
    if (!active) return undefined;
    const rule = active.rule;
    if (active.remaining !== undefined) active.remaining--;
    await this.delay(rule.latencyMs ?? 0);
    const rate = rule.errorRate ?? 1;
    const fires = rule.outageUntil !== undefined || rate >= 1 || (rate > 0 && this.random() < rate);
    if (!fires) return undefined;
    const code = rule.code ?? 131000;
    const status = rule.httpStatus ?? (rule.outageUntil !== undefined ? 503 : defaultHttpStatus(code));
    const headers = rule.retryAfterSeconds !== undefined ? { 'Retry-After': String(rule.retryAfterSeconds) } : undefined;
    return this.fail(code, status, rule.outageUntil !== undefined ? 'Simulated outage.' : 'Simulated failure (injected).', headers);
  }

  private async control(req: http.IncomingMessage, path: string): Promise<Reply> {
    const route = `${req.method} ${path.replace(/\/$/, '')}`;
    switch (route) {
      case 'GET /_sim/sent':
        return { status: 200, body: this.sentMessages };
      case 'GET /_sim/stats':
        return { status: 200, body: this.stats() };
      case 'GET /_sim/failures':
        return { status: 200, body: this.rules.map((r) => ({ ...r.rule, remaining: r.remaining })) };
      case 'DELETE /_sim/failures':
        this.clearFailures();
        return { status: 204 };
      case 'POST /_sim/failures': {
        const raw = await readBody(req, MAX_CONTROL_BYTES);
        if (raw === undefined) return { status: 413, body: { error: 'rule too large' } };
        const parsed = parseJson(raw);
        if (!parsed.ok) return { status: 400, body: { error: 'body is not valid JSON' } };
        try {
          this.inject(parsed.value as FailureRule);
        } catch (err) {
          return { status: 400, body: { error: (err as Error).message } };
        }
        return { status: 201, body: { rules: this.rules.length } };
      }
      default:
        req.resume();
        return { status: 404, body: { error: `no such control route: ${route}` } };
    }
  }

  // --- status webhooks --------------------------------------------------------------------------------------

  private queueStatuses(message: SentMessage): void {
    if (!this.webhook) return;
    if (this.waiting.length >= MAX_QUEUED_WEBHOOK_SENDS) {
      this.hooks.dropped++;
      this.log.warn('status webhook queue full: dropping the statuses of a send', { wamid: message.wamid });
      return;
    }
    let done!: () => void;
    const finished = new Promise<void>((resolve) => (done = resolve));
    this.pending.add(finished);
    void finished.then(() => this.pending.delete(finished));
    this.waiting.push({ message, done });
    this.hooks.queued++;
    this.pump();
  }

  private pump(): void {
    while (this.posting < WEBHOOK_CONCURRENCY && this.waiting.length > 0 && !this.abort.signal.aborted) {
      const job = this.waiting.shift()!;
      this.posting++;
      this.deliverStatuses(job.message)
        .catch((err: unknown) => {
          if (!this.abort.signal.aborted) this.log.error('status webhooks failed', { wamid: job.message.wamid, error: err as Error });
        })
        .finally(() => {
          this.posting--;
          job.done();
          this.pump();
        });
    }
  }

  /** The bodies of one send's status webhooks, in the order they will be posted. */
  private statusBodies(message: SentMessage, w: SimulatorWebhookOptions): Buffer[] {
    const wanted = w.statuses ?? STATUS_ORDER;
    const base = Math.floor(message.at / 1000);
    const bodies: Buffer[] = [];
    for (const status of STATUS_ORDER.filter((s) => wanted.includes(s))) {
      const body = Buffer.from(
        metaJson(
          statusWebhook(message.phoneNumberId, {
            wamid: message.wamid,
            status,
            recipientId: message.to.replace(/^\+/, ''),
            timestamp: base + STATUS_ORDER.indexOf(status),
            messageType: message.type,
            ...(message.bizOpaqueCallbackData !== undefined ? { bizOpaqueCallbackData: message.bizOpaqueCallbackData } : {}),
          }),
        ),
      );
      bodies.push(body);
      if (w.duplicateRate && this.random() < w.duplicateRate) bodies.push(body);
    }
    if (w.shuffle) {
      for (let i = bodies.length - 1; i > 0; i--) {
        const j = Math.floor(this.random() * (i + 1));
        [bodies[i], bodies[j]] = [bodies[j]!, bodies[i]!];
      }
    }
    return bodies;
  }

  private async deliverStatuses(message: SentMessage): Promise<void> {
    const w = this.webhook!;
    for (const body of this.statusBodies(message, w)) {
      await this.delay(w.delayMs ?? 0);
      await this.postWebhook(w, body, message.wamid);
    }
  }

  private async postWebhook(w: SimulatorWebhookOptions, body: Buffer, wamid: string): Promise<void> {
    let lastError = '';
    for (let attempt = 1; attempt <= WEBHOOK_ATTEMPTS; attempt++) {
      try {
        const res = await fetch(w.url, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'X-Hub-Signature-256': sign(body, w.appSecret), 'User-Agent': 'facebookexternalua' },
          body: new Uint8Array(body),
          signal: AbortSignal.any([this.abort.signal, AbortSignal.timeout(WEBHOOK_TIMEOUT_MS)]),
        });
        await res.arrayBuffer();
        if (res.ok) {
          this.hooks.posted++;
          return;
        }
        lastError = `HTTP ${res.status}`;
      } catch (err) {
        if (this.abort.signal.aborted) throw err;
        lastError = (err as Error).message;
      }
      if (attempt < WEBHOOK_ATTEMPTS) await this.delay(WEBHOOK_RETRY_BASE_MS * 2 ** (attempt - 1));
    }
    this.hooks.failed++;
    this.log.warn('status webhook not delivered', { wamid, attempts: WEBHOOK_ATTEMPTS, error: lastError });
  }
}
