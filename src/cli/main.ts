// The `wahook` command: start | migrate | receiver | worker | help.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { ConfigError, loadConfig, type Config } from '../config.ts';
import { startEmbedded } from '../db/embedded.ts';
import { isConnectionError } from '../db/pool.ts';
import { ALL_STEPS, migrate, type MigrateStep } from '../db/migrate.ts';
import { makeLogger, type Logger } from '../log.ts';
import { makeMetrics } from '../metrics/registry.ts';
import { startReceiver } from '../receiver/server.ts';
import { sign } from '../receiver/signature.ts';
import { startWorker } from '../worker/runner.ts';
import { dlqCommand, DlqUsageError, DLQ_USAGE } from './dlq.ts';
import { simulateCommand, SimulateUsageError, SIMULATE_USAGE } from './simulate.ts';
import { partitionsCommand, PartitionsUsageError, PARTITIONS_USAGE } from './partitions.ts';
import { setupRoles, embeddedRoleUrls } from '../db/roles.ts';
import { echoHandlers } from '../handlers/echo.ts';
import { GraphApiSimulator } from '../simulator/graphApi.ts';

const USAGE = `usage: wahook <command>

  start      development all-in-one: database (embedded unless DATABASE_URL is set), migrations,
             receiver and worker in one process; prints the webhook URL and a signed sample request
  migrate    bring the database up to date (graphile-worker schema, migrations, sql/, partitions)
             [--step worker-schema,migrations,sql,partitions] [--database-url URL]
  receiver   run the webhook receiver (needs WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN)
  worker     run the worker (graphile-worker: process_wa_event, DLQ processor, maintenance crontab)
  dlq        list | show | replay | discard dead-letter queue entries (wahook dlq --help)
  partitions status | maintain: monthly partitions, retention, vacuum settings (wahook partitions --help)
  setup-roles  create wahook_receiver, wahook_worker, wahook_admin, wahook_monitor and apply their grants
             (a DBA with CREATEROLE; no passwords are set) [--database-url URL]
  simulate   api | traffic: a Graph API stand-in, or signed inbound traffic (wahook simulate --help)

Configuration comes from the environment; see .env.example.`;

interface Db {
  url: string;
  stop(): Promise<void>;
}

async function database(config: Config, log: Logger): Promise<Db> {
  if (config.databaseUrl) return { url: config.databaseUrl, stop: async () => {} };
  const embedded = await startEmbedded(config.dataDir, log.child('postgres'));
  log.info('using embedded PostgreSQL (set DATABASE_URL to use your own)', { port: embedded.port });
  return embedded;
}

function onShutdown(log: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn('second signal: exiting now', { signal });
      process.exit(1);
    }
    stopping = true;
    log.info('shutting down', { signal });
    stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { error: err as Error });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

/**
 * For the long-running commands. graphile-worker 0.17 marks a finished job complete (or failed) without awaiting
 * it, so a database restart at that moment rejects a promise nobody waits for, and Node would exit. The job is
 * left locked; the sweeper (wahook.sweep, every 5 minutes) moves it on once its lock is free, and knows a job
 * whose work committed ('finished'). So a lost connection is logged and the process carries on. Anything else
 * unhandled is a bug: log it and exit, for the supervisor to start a clean process.
 */
function guardProcess(log: Logger): void {
  process.on('unhandledRejection', (reason: unknown) => {
    if (isConnectionError(reason)) {
      log.error('lost the database while recording a job\'s end; carrying on (the sweeper moves the job on)', { error: reason as Error });
      return;
    }
    log.error('unhandled error; exiting', { error: reason as Error });
    process.exit(1);
  });
}

/** graphile-worker gave up (it could not record a job's end for long): exit for the supervisor to restart. */
function exitOnWorkerFailure(log: Logger): (err: Error) => void {
  return (err) => {
    log.error('the worker stopped; exiting so that it is restarted', { error: err });
    process.exit(1);
  };
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i === -1) return undefined;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) throw new UsageError(`${name} needs a value`);
  return v;
}

class UsageError extends Error {}

/** Development secrets for `wahook start` when none are configured, kept under the data directory. */
function devSecrets(dataDir: string): { appSecret: string; verifyToken: string } {
  const file = path.join(dataDir, 'dev-secrets.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as { appSecret: string; verifyToken: string };
  mkdirSync(dataDir, { recursive: true });
  const s = { appSecret: randomBytes(24).toString('hex'), verifyToken: randomBytes(9).toString('base64url') };
  writeFileSync(file, JSON.stringify(s), { mode: 0o600 });
  return s;
}

function sampleCommand(webhookUrl: string, secret: string): string {
  const now = Math.floor(Date.now() / 1000);
  const body = JSON.stringify({
    object: 'whatsapp_business_account',
    entry: [{
      id: '200000000000002',
      changes: [{
        field: 'messages',
        value: {
          messaging_product: 'whatsapp',
          metadata: { display_phone_number: '15550001111', phone_number_id: '100000000000001' },
          contacts: [{ profile: { name: 'Ana' }, wa_id: '447700900123' }],
          messages: [{ from: '447700900123', id: `wamid.SAMPLE${now}`, timestamp: String(now), type: 'text', text: { body: 'Hello from wahook' } }],
        },
      }],
    }],
  });
  return `curl -sS -X POST '${webhookUrl}' -H 'Content-Type: application/json' -H 'X-Hub-Signature-256: ${sign(body, secret)}' --data-binary '${body}'`;
}

async function cmdStart(log: Logger): Promise<void> {
  const env = { ...process.env };
  const base = loadConfig(env, { receiver: false });
  if (!env.WHATSAPP_APP_SECRET || !env.WHATSAPP_VERIFY_TOKEN) {
    const dev = devSecrets(base.dataDir);
    env.WHATSAPP_APP_SECRET ||= dev.appSecret;
    env.WHATSAPP_VERIFY_TOKEN ||= dev.verifyToken;
    log.warn('WHATSAPP_APP_SECRET / WHATSAPP_VERIFY_TOKEN not set: using development values from the data directory');
  }
  // Without WHATSAPP_API_BASE_URL, sends go to a Graph API simulator in this process, which posts signed status
  // webhooks back: the whole loop runs locally, without Meta.
  const simulate = !env.WHATSAPP_API_BASE_URL;
  if (simulate) env.WHATSAPP_ACCESS_TOKEN ||= 'simulator-token';
  const config = loadConfig(env, { receiver: true });
  const db = await database(config, log);
  // Stopped in this order: receiver (stop accepting, finish requests), worker, simulator, database.
  const stops: { receiver?: () => Promise<void>; worker?: () => Promise<void>; sim?: () => Promise<void> } = {};
  const stopAll = async () => {
    for (const stop of [stops.receiver, stops.worker, stops.sim]) if (stop) await stop();
    await db.stop();
  };
  try {
    await migrate(db.url, log.child('migrate'));
    // On the embedded database wahook sets up its roles itself: the receiver and the worker run with least
    // privilege, as in production. With your own DATABASE_URL, give role URLs (WAHOOK_RECEIVER_DATABASE_URL, …).
    const roles = config.databaseUrl ? undefined : await embeddedRoleUrls(db.url, config.dataDir);
    const receiverUrl = config.receiverDatabaseUrl ?? roles?.receiver ?? db.url;
    const workerUrl = config.workerDatabaseUrl ?? roles?.worker ?? db.url;
    const metrics = makeMetrics();
    const receiver = await startReceiver({ ...config, databaseUrl: receiverUrl }, log.child('receiver'), { metrics });
    stops.receiver = () => receiver.close();
    let apiBaseUrl = config.apiBaseUrl;
    if (simulate) {
      const sim = new GraphApiSimulator({
        accessToken: config.accessToken!,
        webhook: { url: receiver.webhookUrl.replace('localhost', '127.0.0.1'), appSecret: config.appSecrets[0]!, delayMs: 200 },
        log: log.child('simulator'),
      });
      apiBaseUrl = await sim.start();
      stops.sim = () => sim.stop();
    }
    const worker = await startWorker({ ...config, apiBaseUrl, databaseUrl: workerUrl }, log.child('worker'), {
      metrics,
      handlers: config.handlersPath ? undefined : echoHandlers,
      onFatal: exitOnWorkerFailure(log),
    });
    stops.worker = () => worker.stop();
    onShutdown(log, stopAll);
    const secret = config.appSecrets[0]!;
    process.stdout.write(`
wahook is running.

  Webhook URL:   ${receiver.webhookUrl}
  Verify token:  ${config.verifyToken}
  Health:        ${receiver.url}/healthz   ${receiver.url}/readyz   ${receiver.url}/metrics
  Graph API:     ${simulate ? `${apiBaseUrl} (simulator; set WHATSAPP_API_BASE_URL and WHATSAPP_ACCESS_TOKEN for Meta)` : apiBaseUrl}
  Handlers:      ${config.handlersPath ?? 'built-in echo (answers each text message)'}
  Roles:         receiver as ${new URL(receiverUrl).username}, worker as ${new URL(workerUrl).username}

Send a signed sample webhook (the worker logs "inbound message" when it has processed it${simulate ? ', then the echo goes\nout through the simulator and its status webhooks come back: "message accepted", "status … read"' : ''}):

  ${sampleCommand(receiver.webhookUrl, secret)}

Press Ctrl-C to stop.
`);
  } catch (err) {
    await stopAll();
    throw err;
  }
}

async function cmdMigrate(args: string[], log: Logger): Promise<void> {
  const step = flag(args, '--step');
  const steps = step === undefined ? ALL_STEPS : (step.split(',') as MigrateStep[]);
  for (const s of steps) {
    if (!ALL_STEPS.includes(s)) throw new UsageError(`--step takes ${ALL_STEPS.join(', ')} (comma-separated), not "${s}"`);
  }
  const url = flag(args, '--database-url');
  const config = loadConfig(url ? { ...process.env, DATABASE_URL: url } : process.env, { receiver: false });
  const db = await database(config, log);
  try {
    await migrate(db.url, log, steps);
  } finally {
    await db.stop();
  }
}

async function cmdReceiver(log: Logger): Promise<void> {
  const config = loadConfig(process.env, { receiver: true });
  const db = await database(config, log);
  const receiver = await startReceiver({ ...config, databaseUrl: config.receiverDatabaseUrl ?? db.url }, log.child('receiver'));
  onShutdown(log, async () => {
    await receiver.close();
    await db.stop();
  });
}

async function cmdWorker(log: Logger): Promise<void> {
  const config = loadConfig(process.env, { receiver: false });
  const db = await database(config, log);
  const worker = await startWorker({ ...config, databaseUrl: config.workerDatabaseUrl ?? db.url }, log.child('worker'), {
    metrics: makeMetrics(),
    onFatal: exitOnWorkerFailure(log),
  });
  onShutdown(log, async () => {
    await worker.stop();
    await db.stop();
  });
}

/** An operator command on the database (DATABASE_URL: the owner, or a wahook_admin login). */
async function dbCommand(
  args: string[],
  usage: string,
  log: Logger,
  run: (url: string, out: (line: string) => void) => Promise<void>,
): Promise<void> {
  if (args.length === 0 || args[0] === '--help' || args[0] === 'help') {
    process.stdout.write(usage + '\n');
    return;
  }
  const config = loadConfig(process.env, { receiver: false });
  const db = await database(config, log);
  try {
    await run(db.url, (line) => process.stdout.write(line + '\n'));
  } finally {
    await db.stop();
  }
}

async function cmdSetupRoles(args: string[], log: Logger): Promise<void> {
  const url = flag(args, '--database-url');
  const config = loadConfig(url ? { ...process.env, DATABASE_URL: url } : process.env, { receiver: false });
  const db = await database(config, log);
  try {
    const created = await setupRoles(db.url);
    process.stdout.write(
      (created.length ? `created roles: ${created.join(', ')}\n` : 'the four wahook roles exist already\n') +
        `grants and row-level security policies applied.\n\n` +
        `Next: give the roles a way to log in (a password, or certificates), e.g.\n` +
        `  alter role wahook_receiver password '…';  alter role wahook_worker password '…';\n` +
        `and run the receiver with WAHOOK_RECEIVER_DATABASE_URL, the worker with WAHOOK_WORKER_DATABASE_URL.\n`,
    );
  } finally {
    await db.stop();
  }
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  const log = makeLogger();
  // operator commands print tables: only warnings and errors in the log
  const quiet = () => makeLogger('wahook', { ...process.env, WAHOOK_LOG_LEVEL: process.env.WAHOOK_LOG_LEVEL ?? 'warn' });
  try {
    if (command === 'start' || command === 'worker' || command === 'receiver') guardProcess(log);
    switch (command) {
      case 'start':
        return await cmdStart(log);
      case 'migrate':
        return await cmdMigrate(args, log);
      case 'receiver':
        return await cmdReceiver(log);
      case 'worker':
        return await cmdWorker(log);
      case 'partitions':
        return await dbCommand(args, PARTITIONS_USAGE, quiet(), (url, out) => partitionsCommand(args, url, out));
      case 'setup-roles':
        return await cmdSetupRoles(args, log);
      case 'simulate':
        return await simulateCommand(args, process.env, log);
      case 'dlq':
        return await dbCommand(args, DLQ_USAGE, quiet(), (url, out) => dlqCommand(args, url, process.env, out));
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE + '\n');
        return;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (
      err instanceof ConfigError || err instanceof UsageError || err instanceof DlqUsageError ||
      err instanceof SimulateUsageError || err instanceof PartitionsUsageError
    ) {
      process.stderr.write(`wahook: ${err.message}\n`);
      if (err instanceof UsageError) process.stderr.write(USAGE + '\n');
      if (err instanceof DlqUsageError) process.stderr.write(DLQ_USAGE + '\n');
      if (err instanceof SimulateUsageError) process.stderr.write(SIMULATE_USAGE + '\n');
      if (err instanceof PartitionsUsageError) process.stderr.write(PARTITIONS_USAGE + '\n');
      process.exit(2);
    }
    const code = (err as { code?: string }).code;
    if (typeof code === 'string' && /^WH\d{3}$/.test(code)) {
      process.stderr.write(`wahook: ${(err as Error).message}\n`);
      process.exit(2);
    }
    log.error(`${command} failed`, { error: err as Error });
    process.exit(1);
  }
}
