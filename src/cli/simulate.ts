// `wahook simulate api | traffic`: run the Graph API simulator until a signal, or send signed webhook traffic to
// a receiver with a progress bar and a summary. Bad flags throw SimulateUsageError naming the flag (exit 2);
// a traffic run with failed POSTs sets process.exitCode = 1.
import type { Logger } from '../log.ts';
import { WEBHOOK_PATH } from '../receiver/app.ts';
import { GraphApiSimulator } from '../simulator/graphApi.ts';
import { generateTraffic, MAX_POSTS, type TrafficProgress, type TrafficSummary } from '../simulator/traffic.ts';

export const SIMULATE_USAGE = `usage: wahook simulate api|traffic [flags]

  wahook simulate api        a Graph API stand-in (POST /{phone_number_id}/messages) that posts signed status
                             webhooks back and fails on demand; runs until Ctrl-C
    --port N                 port (default 3030; 0 picks a free one)
    --host H                 address (default 127.0.0.1)
    --token T                access token senders must present (default $WHATSAPP_ACCESS_TOKEN, else "simulator-token")
    --webhook-url URL        where status webhooks go (default http://localhost:$PORT${WEBHOOK_PATH}, PORT default 3000)
    --app-secret S           secret that signs them (default the first entry of $WHATSAPP_APP_SECRET)
    --no-webhooks            post no status webhooks
    --error-rate R           share of sends that fail with code 131000 (0..1, default 0)
    --latency-ms N           latency added to every send (default 0)

  wahook simulate traffic    signed inbound message webhooks, as Meta posts them, to a receiver
    --posts N                POSTs to make (required, 1..${MAX_POSTS})
    --rate R                 POSTs per second (default 50)
    --conversations C        distinct customers (default 10)
    --per-post K             messages per POST (1..1000, default 1)
    --duplicates R           share of POSTs that resend an earlier one byte for byte (0..1, default 0)
    --concurrency N          requests in flight at most (default 16)
    --url URL                webhook URL (default http://localhost:$PORT${WEBHOOK_PATH}, PORT default 3000)
    --app-secret S           signing secret (default the first entry of $WHATSAPP_APP_SECRET)
  Exits non-zero when any POST failed.`;

const DEFAULT_API_PORT = 3030;
const DEFAULT_RATE = 50;

export class SimulateUsageError extends Error {
  override name = 'SimulateUsageError';
}

// --- flags --------------------------------------------------------------------------------------------------

type FlagKind = 'value' | 'switch';

class Flags {
  private readonly values = new Map<string, string | true>();

  constructor(args: string[], known: Record<string, FlagKind>, command: string) {
    for (let i = 0; i < args.length; i++) {
      const arg = args[i]!;
      const m = /^(--[a-z][a-z-]*)(?:=(.*))?$/s.exec(arg);
      if (!m) throw new SimulateUsageError(`unexpected argument "${arg}" for wahook simulate ${command} (flags start with --)`);
      const name = m[1]!;
      const kind = known[name];
      if (!kind) throw new SimulateUsageError(`unknown flag ${name} for wahook simulate ${command} (known: ${Object.keys(known).join(', ')})`);
      if (this.values.has(name)) throw new SimulateUsageError(`${name} is given twice`);
      if (kind === 'switch') {
        if (m[2] !== undefined) throw new SimulateUsageError(`${name} takes no value`);
        this.values.set(name, true);
        continue;
      }
      const value = m[2] ?? args[++i];
      if (value === undefined || (m[2] === undefined && value.startsWith('--'))) throw new SimulateUsageError(`${name} needs a value`);
      this.values.set(name, value);
    }
  }

  has(name: string): boolean {
    return this.values.has(name);
  }

  string(name: string): string | undefined {
    const v = this.values.get(name);
    if (v === '') throw new SimulateUsageError(`${name} expects a non-empty value`);
    return typeof v === 'string' ? v : undefined;
  }

  number(name: string, opts: { min: number; max: number; integer?: boolean; above?: boolean }): number | undefined {
    const raw = this.string(name);
    if (raw === undefined) return undefined;
    const n = Number(raw);
    const ok =
      raw.trim() !== '' && Number.isFinite(n) && (opts.integer ? Number.isInteger(n) : true) && (opts.above ? n > opts.min : n >= opts.min) && n <= opts.max;
    if (!ok) {
      const what = opts.integer ? 'a whole number' : 'a number';
      const range = opts.above ? `above ${opts.min} and at most ${opts.max}` : `from ${opts.min} to ${opts.max}`;
      throw new SimulateUsageError(`${name} expects ${what} ${range} (got "${raw}")`);
    }
    return n;
  }

  url(name: string): string | undefined {
    const raw = this.string(name);
    if (raw === undefined) return undefined;
    let u: URL | undefined;
    try {
      u = new URL(raw);
    } catch {
      // reported below
    }
    if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) throw new SimulateUsageError(`${name} expects an http or https URL (got "${raw}")`);
    return raw;
  }
}

function firstSecret(env: NodeJS.ProcessEnv): string | undefined {
  const first = (env.WHATSAPP_APP_SECRET ?? '').split(',')[0]?.trim();
  return first ? first : undefined;
}

function defaultWebhookUrl(env: NodeJS.ProcessEnv): string {
  return `http://localhost:${env.PORT?.trim() || 3000}${WEBHOOK_PATH}`;
}

function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const handler = (signal: NodeJS.Signals) => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
      resolve(signal);
    };
    process.on('SIGINT', handler);
    process.on('SIGTERM', handler);
  });
}

// --- api ----------------------------------------------------------------------------------------------------

async function simulateApi(args: string[], env: NodeJS.ProcessEnv, log: Logger): Promise<void> {
  const f = new Flags(
    args,
    {
      '--port': 'value', '--host': 'value', '--token': 'value', '--webhook-url': 'value', '--app-secret': 'value',
      '--no-webhooks': 'switch', '--error-rate': 'value', '--latency-ms': 'value',
    },
    'api',
  );
  const port = f.number('--port', { min: 0, max: 65535, integer: true }) ?? DEFAULT_API_PORT;
  const errorRate = f.number('--error-rate', { min: 0, max: 1 }) ?? 0;
  const latencyMs = f.number('--latency-ms', { min: 0, max: 60_000, integer: true }) ?? 0;
  const givenToken = f.string('--token') ?? (env.WHATSAPP_ACCESS_TOKEN?.trim() || undefined);
  const token = givenToken ?? 'simulator-token';
  const noWebhooks = f.has('--no-webhooks');
  if (noWebhooks && (f.has('--webhook-url') || f.has('--app-secret'))) {
    throw new SimulateUsageError('--no-webhooks cannot be combined with --webhook-url or --app-secret');
  }
  const webhookUrl = f.url('--webhook-url') ?? defaultWebhookUrl(env);
  const appSecret = f.string('--app-secret') ?? firstSecret(env);
  if (f.has('--webhook-url') && !appSecret) {
    throw new SimulateUsageError('--webhook-url needs --app-secret (or WHATSAPP_APP_SECRET) to sign the status webhooks');
  }
  const webhooksOn = !noWebhooks && appSecret !== undefined;

  const sim = new GraphApiSimulator({
    accessToken: token,
    host: f.string('--host') ?? '127.0.0.1',
    port,
    latencyMs,
    log: log.child('simulator'),
    ...(webhooksOn ? { webhook: { url: webhookUrl, appSecret: appSecret! } } : {}),
  });
  if (errorRate > 0) sim.inject({ errorRate, code: 131000 });
  const url = await sim.start();
  const signal = untilSignal();
  process.stdout.write(`
Graph API simulator listening on ${url}

  Point wahook at it:  WHATSAPP_API_BASE_URL=${url}/v21.0${givenToken ? '' : `  WHATSAPP_ACCESS_TOKEN=${token}`}
  Sends:               POST ${url}/v21.0/{phone_number_id}/messages  (Authorization: Bearer <token>)
  Status webhooks:     ${webhooksOn ? `${webhookUrl} (sent, delivered, read; signed with ${f.has('--app-secret') ? '--app-secret' : 'the first WHATSAPP_APP_SECRET'})` : 'off (give --webhook-url and --app-secret, or set WHATSAPP_APP_SECRET)'}
  Injected failures:   ${errorRate > 0 ? `${errorRate * 100}% of sends fail with code 131000` : 'none'}${latencyMs > 0 ? `; ${latencyMs} ms latency per send` : ''}
  Control API:         GET ${url}/_sim/sent   GET ${url}/_sim/stats   POST|DELETE ${url}/_sim/failures
                       e.g. curl -X POST ${url}/_sim/failures -d '{"code":130429,"retryAfterSeconds":5,"times":3}'

Press Ctrl-C to stop.
`);
  const received = await signal;
  const stats = sim.stats();
  log.info('stopping the Graph API simulator', { signal: received, requests: stats.requests, accepted: stats.accepted, failed: stats.failed });
  await sim.stop();
}

// --- traffic ------------------------------------------------------------------------------------------------

function progressReporter(stream: NodeJS.WriteStream): { update(p: TrafficProgress): void; end(p: TrafficProgress | undefined): void } {
  const tty = stream.isTTY === true;
  const started = Date.now();
  let last = started;
  const line = (p: TrafficProgress) => {
    const share = p.total === 0 ? 1 : p.done / p.total;
    const width = 24;
    const filled = Math.round(share * width);
    const rate = p.done / Math.max(0.001, (Date.now() - started) / 1000);
    const counts = `${p.done}/${p.total} POSTs  ${p.accepted} accepted  ${p.failed} failed  ${rate.toFixed(0)}/s`;
    return tty
      ? `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(share * 100).toFixed(0).padStart(3)}%  ${counts}`
      : `traffic: ${(share * 100).toFixed(0)}%  ${counts}`;
  };
  const draw = (p: TrafficProgress) => stream.write(tty ? `\r${line(p)}\x1b[K` : `${line(p)}\n`);
  return {
    update(p) {
      const now = Date.now();
      if (now - last < (tty ? 100 : 2000)) return;
      last = now;
      draw(p);
    },
    end(p) {
      if (p) draw(p);
      if (tty) stream.write('\n');
    },
  };
}

export function formatSummary(s: TrafficSummary): string {
  const rows: Array<[string, string]> = [
    ['POSTs', String(s.posts)],
    ['accepted', String(s.accepted)],
    ['failed', String(s.failed)],
    ['duplicates', String(s.duplicatesSent)],
    ['messages', String(s.messagesSent)],
    ...Object.entries(s.statusCounts)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]): [string, string] => [/^\d+$/.test(k) ? `HTTP ${k}` : k, String(v)]),
    ['latency p50', `${s.latencyMs.p50} ms`],
    ['latency p95', `${s.latencyMs.p95} ms`],
    ['latency p99', `${s.latencyMs.p99} ms`],
    ['latency max', `${s.latencyMs.max} ms`],
    ['seconds', String(s.seconds)],
    ['rate', `${(s.posts / Math.max(0.001, s.seconds)).toFixed(1)} POSTs/s`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const v = Math.max(...rows.map(([, val]) => val.length));
  return rows.map(([k, val]) => `  ${k.padEnd(w)}  ${val.padStart(v)}`).join('\n');
}

async function simulateTraffic(args: string[], env: NodeJS.ProcessEnv, log: Logger): Promise<void> {
  const f = new Flags(
    args,
    {
      '--posts': 'value', '--rate': 'value', '--conversations': 'value', '--per-post': 'value', '--duplicates': 'value',
      '--concurrency': 'value', '--url': 'value', '--app-secret': 'value',
    },
    'traffic',
  );
  const posts = f.number('--posts', { min: 1, max: MAX_POSTS, integer: true });
  if (posts === undefined) throw new SimulateUsageError(`--posts is required: the number of POSTs to make (1..${MAX_POSTS})`);
  const ratePerSecond = f.number('--rate', { min: 0, max: 100_000, above: true }) ?? DEFAULT_RATE;
  const conversations = f.number('--conversations', { min: 1, max: 100_000, integer: true }) ?? 10;
  const messagesPerPost = f.number('--per-post', { min: 1, max: 1000, integer: true }) ?? 1;
  const duplicateRate = f.number('--duplicates', { min: 0, max: 1 }) ?? 0;
  const concurrency = f.number('--concurrency', { min: 1, max: 1024, integer: true }) ?? 16;
  const webhookUrl = f.url('--url') ?? defaultWebhookUrl(env);
  const appSecret = f.string('--app-secret') ?? firstSecret(env);
  if (!appSecret) throw new SimulateUsageError('--app-secret is required when WHATSAPP_APP_SECRET is not set: the secret the receiver checks');

  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const bar = progressReporter(process.stderr);
  let lastProgress: TrafficProgress | undefined;
  log.info('sending webhook traffic', { url: webhookUrl, posts, rate: ratePerSecond, conversations, perPost: messagesPerPost });
  let summary: TrafficSummary;
  try {
    summary = await generateTraffic({
      webhookUrl, appSecret, posts, ratePerSecond, conversations, messagesPerPost, duplicateRate, concurrency,
      signal: stop.signal,
      onProgress: (p) => {
        lastProgress = p;
        bar.update(p);
      },
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    bar.end(lastProgress);
  }
  process.stdout.write(`\n${formatSummary(summary)}\n`);
  if (stop.signal.aborted) process.stderr.write(`stopped by a signal after ${summary.posts} of ${posts} POSTs\n`);
  if (summary.failed > 0) {
    process.stderr.write(`${summary.failed} of ${summary.posts} POSTs failed\n`);
    process.exitCode = 1;
  }
}

export async function simulateCommand(args: string[], env: NodeJS.ProcessEnv, log: Logger): Promise<void> {
  const [sub, ...rest] = args;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(SIMULATE_USAGE + '\n');
    return;
  }
  switch (sub) {
    case 'api':
      return simulateApi(rest, env, log);
    case 'traffic':
      return simulateTraffic(rest, env, log);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(SIMULATE_USAGE + '\n');
      return;
    default:
      throw new SimulateUsageError(`unknown simulate command "${sub}": expected api or traffic`);
  }
}
