// Once per `npm test`: find a PostgreSQL (TEST_DATABASE_URL, else DATABASE_URL, else an embedded one started
// here), build a migrated template database, and hand its name to the test files. Each test file then copies
// the template into a database of its own (test/helpers/db.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { startEmbedded, type EmbeddedDatabase } from '../../src/db/embedded.ts';
import { migrate } from '../../src/db/migrate.ts';
import { makeLogger } from '../../src/log.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    adminUrl: string;
    templateDb: string;
  }
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = '/' + database;
  return u.toString();
}

async function adminQuery(url: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

export default async function setup(project: TestProject) {
  const log = makeLogger('test-setup', { ...process.env, WAHOOK_LOG_LEVEL: 'warn' });
  let embedded: EmbeddedDatabase | undefined;
  let tmp: string | undefined;
  let adminUrl = process.env.TEST_DATABASE_URL ?? process.env.DATABASE_URL;
  if (!adminUrl) {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'wahook-test-pg-'));
    embedded = await startEmbedded(tmp, log, { database: 'postgres', persistent: false });
    adminUrl = embedded.adminUrl;
  }
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  const version = (await c.query<{ server_version: string }>('show server_version')).rows[0]!.server_version;
  await c.end();
  process.stdout.write(`wahook tests: PostgreSQL ${version} (${embedded ? 'embedded' : 'from TEST_DATABASE_URL/DATABASE_URL'})\n`);

  // The four wahook roles are cluster-wide: make them once (as `wahook setup-roles` does), so the template
  // database gets its grants and policies and the security tests can switch to them.
  await adminQuery(adminUrl, `do $$ declare r text; begin
    foreach r in array array['wahook_receiver', 'wahook_worker', 'wahook_admin', 'wahook_monitor'] loop
      if not exists (select from pg_roles where rolname = r) then execute format('create role %I login', r); end if;
    end loop; end $$`);

  const templateDb = `wahook_tpl_${process.pid}`;
  await adminQuery(adminUrl, `drop database if exists ${templateDb} with (force)`);
  await adminQuery(adminUrl, `create database ${templateDb}`);
  await migrate(withDatabase(adminUrl, templateDb), log);
  // as `wahook setup-roles` does: role settings, then grants and policies for the roles
  await adminQuery(withDatabase(adminUrl, templateDb), 'select * from wahook.setup_roles()');
  project.provide('adminUrl', adminUrl);
  project.provide('templateDb', templateDb);

  return async () => {
    await adminQuery(adminUrl, `drop database if exists ${templateDb} with (force)`).catch(() => undefined);
    if (embedded) await embedded.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  };
}
