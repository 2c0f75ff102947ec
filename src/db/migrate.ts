// `wahook migrate`: graphile-worker's schema, then our committed graphile-migrate migrations, then the
// idempotent code in sql/ (functions, views), then partition maintenance (wahook.maintain_partitions).
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrate as graphileMigrate } from 'graphile-migrate';
import { runMigrations as workerMigrations } from 'graphile-worker';
import pg from 'pg';
import type { Logger } from '../log.ts';
import { runPartitionMaintenance } from './maintenance.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MIGRATIONS_DIR = path.join(ROOT, 'migrations');
export const SQL_DIR = path.join(ROOT, 'sql');

export type MigrateStep = 'worker-schema' | 'migrations' | 'sql' | 'partitions';
export const ALL_STEPS: MigrateStep[] = ['worker-schema', 'migrations', 'sql', 'partitions'];

/** The hashes of the committed migrations, in order: what a database must have applied to be current. */
export function committedMigrations(): string[] {
  const dir = path.join(MIGRATIONS_DIR, 'committed');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .sort()
    .map((f) => {
      const hash = /^--! Hash: (\S+)$/m.exec(readFileSync(path.join(dir, f), 'utf8'));
      if (!hash) throw new Error(`migrations/committed/${f} has no "--! Hash:" header`);
      return hash[1]!;
    });
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, application_name: 'wahook migrate' });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Re-apply every file in sql/ in name order, in one transaction, one migrate at a time. */
export async function applySqlFiles(url: string, log: Logger): Promise<void> {
  const files = readdirSync(SQL_DIR).filter((f) => f.endsWith('.sql')).sort();
  await withClient(url, async (client) => {
    await client.query('begin');
    try {
      await client.query("select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('wahook.apply_sql'))");
      for (const file of files) {
        try {
          await client.query(readFileSync(path.join(SQL_DIR, file), 'utf8'));
        } catch (err) {
          throw new Error(`sql/${file}: ${(err as Error).message}`, { cause: err });
        }
      }
      await client.query('commit');
    } catch (err) {
      await client.query('rollback');
      throw err;
    }
  });
  log.info('applied sql/', { files: files.length });
}

export async function migrate(url: string, log: Logger, steps: MigrateStep[] = ALL_STEPS): Promise<void> {
  if (steps.includes('worker-schema')) {
    await workerMigrations({ connectionString: url, logger: undefined });
    log.info('graphile-worker schema is current');
  }
  if (steps.includes('migrations')) {
    await graphileMigrate({ connectionString: url, migrationsFolder: MIGRATIONS_DIR }, false, false);
    // graphile-migrate keeps its pool open for 200 ms after use and exits the process if a connection of that
    // pool fails meanwhile (say, the database restarts). Let it close before going on.
    await new Promise((resolve) => setTimeout(resolve, 250));
    log.info('migrations are current', { committed: committedMigrations().length });
  }
  if (steps.includes('sql')) await applySqlFiles(url, log);
  if (steps.includes('partitions')) {
    // The same maintenance as the daily task: partitions for this month and partition_config.premake months
    // ahead, rows moved out of the default partitions, autovacuum settings, retention, dedupe-key purge.
    await withClient(url, (c) => runPartitionMaintenance(c, log));
  }
}
