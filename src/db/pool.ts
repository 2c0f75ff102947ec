import pg from 'pg';
import type { Logger } from '../log.ts';

/** A pg pool that logs (and survives) errors of idle clients, e.g. when the database restarts. */
export function makePool(connectionString: string, log: Logger, options: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    application_name: 'wahook',
    ...options,
  });
  pool.on('error', (err) => log.warn('idle database connection failed', { error: err.message }));
  pool.on('connect', (client) => {
    client.on('error', (err) => log.warn('database connection failed', { error: err.message }));
  });
  return pool;
}

/** Errors that mean "the database is not reachable right now", as opposed to an error in a statement. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null;
  if (!e) return false;
  if (typeof e.code === 'string' && /^(08|57P|53)/.test(e.code)) return true;
  if (typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code)) return true; // ECONNREFUSED, ECONNRESET, ETIMEDOUT…
  return /timeout|terminat|Connection/i.test(e.message ?? '');
}
