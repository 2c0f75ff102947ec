// Partition maintenance (wahook.maintain_partitions): premake, retention, rows moved out of the default partition,
// one run at a time, autovacuum settings, configuration checks; the `wahook partitions` command and the daily task.
// Each test gets its own database copied from the migrated template (migrate already ran the maintenance once).
import { afterEach, describe, expect, it } from 'vitest';
import pg from 'pg';
import type { JobHelpers } from 'graphile-worker';
import { partitionsCommand, PartitionsUsageError } from '../src/cli/partitions.ts';
import type { Logger } from '../src/log.ts';
import { makeWahookMaintenance } from '../tasks/wahook_maintenance.ts';
import { createTestDatabase, type TestDatabase } from './helpers/db.ts';

interface Action {
  parent: string | null;
  partition: string | null;
  action: string;
  rows: string | null;
  detail: string | null;
}

const dbs: TestDatabase[] = [];
afterEach(async () => {
  await Promise.all(dbs.splice(0).map((d) => d.drop()));
});

async function freshDb(): Promise<TestDatabase> {
  const db = await createTestDatabase();
  dbs.push(db);
  return db;
}

/** The UTC month `offset` months from now, as YYYYMM (partition suffix) and as its first instant. */
function month(offset: number): { key: string; start: string } {
  const now = new Date();
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1));
  const key = `${d.getUTCFullYear()}${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
  return { key, start: d.toISOString() };
}

/** A moment in the middle of that month. */
function midMonth(offset: number): string {
  return new Date(new Date(month(offset).start).getTime() + 14 * 86_400_000).toISOString();
}

async function partitionsOf(q: pg.Pool | pg.Client, parent: string): Promise<string[]> {
  const r = await q.query<{ relname: string }>(
    `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = $1::regclass order by 1`,
    [parent],
  );
  return r.rows.map((x) => x.relname);
}

async function maintain(q: pg.Pool | pg.Client): Promise<Action[]> {
  return (await q.query<Action>('select * from wahook.maintain_partitions()')).rows;
}

function named(actions: Action[], action: string, parent?: string): string[] {
  return actions
    .filter((a) => a.action === action && (parent === undefined || a.parent === parent))
    .map((a) => a.partition!)
    .sort();
}

async function insertEvent(q: pg.Pool | pg.Client, receivedAt: string, key: string, state = 'pending'): Promise<void> {
  await q.query(
    `insert into wahook.wa_events (received_at, log_id, kind, field, dedupe_key, payload, state)
     values ($1, 1, 'other', 'test', $2, '{}', $3)`,
    [receivedAt, key, state],
  );
}

async function reloptions(q: pg.Pool | pg.Client, table: string): Promise<string[]> {
  const r = await q.query<{ reloptions: string[] | null }>('select reloptions from pg_class where oid = $1::regclass', [table]);
  return r.rows[0]!.reloptions ?? [];
}

async function configured(q: pg.Pool | pg.Client, parent: string): Promise<string[]> {
  const r = await q.query<{ opt: string }>(
    `select e.key || '=' || e.value as opt from wahook.partition_config as pc, jsonb_each_text(pc.storage_parameters) as e
      where pc.parent = $1 order by 1`,
    [parent],
  );
  return r.rows.map((x) => x.opt);
}

function recordingLogger(): Logger & { records: Array<{ level: string; message: string; fields?: Record<string, unknown> }> } {
  const records: Array<{ level: string; message: string; fields?: Record<string, unknown> }> = [];
  const log = {
    records,
    debug: (message: string, fields?: Record<string, unknown>) => void records.push({ level: 'debug', message, fields }),
    info: (message: string, fields?: Record<string, unknown>) => void records.push({ level: 'info', message, fields }),
    warn: (message: string, fields?: Record<string, unknown>) => void records.push({ level: 'warn', message, fields }),
    error: (message: string, fields?: Record<string, unknown>) => void records.push({ level: 'error', message, fields }),
    child: () => log,
  };
  return log;
}

describe('premake', () => {
  it('makes this month and premake months ahead for each table, and a second run creates nothing', async () => {
    const db = await freshDb();
    // the template's migrate ran the maintenance with the seeded premake of 3
    for (const [parent, table] of [['wahook.wa_events', 'wa_events'], ['wahook.webhook_logs', 'webhook_logs']] as const) {
      const parts = await partitionsOf(db.pool, parent);
      expect(parts).toEqual(
        [`${table}_default`, ...[0, 1, 2, 3].map((i) => `${table}_p${month(i).key}`)].sort(),
      );
    }
    await db.pool.query(`update wahook.partition_config set premake = 5 where parent = 'wahook.wa_events'`);
    const first = await maintain(db.pool);
    expect(first.filter((a) => a.action === 'error')).toEqual([]);
    expect(named(first, 'created')).toEqual([`wahook.wa_events_p${month(4).key}`, `wahook.wa_events_p${month(5).key}`]);
    expect(await partitionsOf(db.pool, 'wahook.wa_events')).not.toContain(`wa_events_p${month(6).key}`);

    const second = await maintain(db.pool);
    expect(named(second, 'created')).toEqual([]);
    expect(named(second, 'dropped')).toEqual([]);
    expect(named(second, 'moved')).toEqual([]);
    expect(second.filter((a) => a.action === 'error')).toEqual([]);

    const log = await db.pool.query<{ outcome: string; created: number }>(
      `select outcome, (details ->> 'created')::int as created from wahook.maintenance_log
        where task = 'partitions' order by id desc limit 2`,
    );
    expect(log.rows).toEqual([{ outcome: 'ok', created: 0 }, { outcome: 'ok', created: 2 }]);
    const cfg = await db.pool.query(
      `select last_run_at is not null as ran, last_success_at = last_run_at as succeeded, last_error from wahook.partition_config order by parent`,
    );
    expect(cfg.rows).toEqual([
      { ran: true, succeeded: true, last_error: null },
      { ran: true, succeeded: true, last_error: null },
    ]);
  });

  it('partition_status lists each partition and the next missing month within premake', async () => {
    const db = await freshDb();
    const before = await db.pool.query(`select distinct parent, next_missing_month from wahook.partition_status() order by 1`);
    expect(before.rows).toEqual([
      { parent: 'wahook.wa_events', next_missing_month: null },
      { parent: 'wahook.webhook_logs', next_missing_month: null },
    ]);
    await db.pool.query(`update wahook.partition_config set premake = 4 where parent = 'wahook.wa_events'`);
    const after = await db.pool.query<{ m: string }>(
      `select distinct to_char(next_missing_month, 'YYYYMM') as m from wahook.partition_status() where parent = 'wahook.wa_events'`,
    );
    expect(after.rows).toEqual([{ m: month(4).key }]);
    const rows = await db.pool.query(
      `select partition, is_default, rows_exact, range_from, total_bytes > 0 as has_size from wahook.partition_status()
        where parent = 'wahook.wa_events' order by is_default, range_from`,
    );
    expect(rows.rows.map((r) => r.partition)).toEqual([
      ...[0, 1, 2, 3].map((i) => `wahook.wa_events_p${month(i).key}`),
      'wahook.wa_events_default',
    ]);
    expect(rows.rows[0]).toMatchObject({ is_default: false, rows_exact: false, has_size: true, range_from: new Date(month(0).start) });
    expect(rows.rows[4]).toMatchObject({ is_default: true, rows_exact: true, range_from: null });
  });
});

describe('retention', () => {
  it('drops only partitions wholly older than the retention, never the default or the current month', async () => {
    const db = await freshDb();
    // partitions of a year ago (maintenance run as if it were then), and a few more recent months
    const past = (await db.pool.query<Action>(`select * from wahook.maintain_partitions(now() - interval '12 months')`)).rows;
    expect(named(past, 'created', 'wahook.wa_events')).toEqual([-12, -11, -10, -9].map((i) => `wahook.wa_events_p${month(i).key}`));
    expect(named(past, 'dropped')).toEqual([]);
    for (const i of [-8, -7, -6]) {
      await db.pool.query(`select wahook.make_month_partition('wahook.wa_events', $1::date)`, [month(i).start.slice(0, 10)]);
    }
    for (const i of [-4, -3, -2]) {
      await db.pool.query(`select wahook.make_month_partition('wahook.webhook_logs', $1::date)`, [month(i).start.slice(0, 10)]);
    }
    await insertEvent(db.pool, midMonth(-7), 'o:done-7', 'done');
    await insertEvent(db.pool, midMonth(-8), 'o:pending-8', 'pending');
    await insertEvent(db.pool, midMonth(-9), 'o:discarded-9', 'discarded');

    const now = await maintain(db.pool);
    expect(now.filter((a) => a.action === 'error')).toEqual([]);
    // wa_events keeps 6 months: month -7 and older go (whatever the day of the month), month -6 stays
    expect(named(now, 'dropped', 'wahook.wa_events')).toEqual(
      [-12, -11, -10, -9, -7].map((i) => `wahook.wa_events_p${month(i).key}`).sort(),
    );
    // a partition past the retention that still holds an unfinished event is kept, and says so
    expect(now.filter((a) => a.action === 'kept')).toEqual([
      expect.objectContaining({ parent: 'wahook.wa_events', partition: `wahook.wa_events_p${month(-8).key}`, rows: '1' }),
    ]);
    // webhook_logs keeps 3 months: month -4 and older go, month -3 stays
    expect(named(now, 'dropped', 'wahook.webhook_logs')).toEqual(
      [-12, -11, -10, -9, -4].map((i) => `wahook.webhook_logs_p${month(i).key}`).sort(),
    );
    expect(await partitionsOf(db.pool, 'wahook.wa_events')).toEqual(
      ['wa_events_default', ...[-8, -6, 0, 1, 2, 3].map((i) => `wa_events_p${month(i).key}`)].sort(),
    );
    expect(await partitionsOf(db.pool, 'wahook.webhook_logs')).toEqual(
      ['webhook_logs_default', ...[-3, -2, 0, 1, 2, 3].map((i) => `webhook_logs_p${month(i).key}`)].sort(),
    );
    // detached and dropped, not merely detached
    const leftover = await db.pool.query(`select to_regclass($1) as t`, [`wahook.wa_events_p${month(-7).key}`]);
    expect(leftover.rows[0].t).toBeNull();
    const events = await db.pool.query(`select dedupe_key from wahook.wa_events where field = 'test' order by 1`);
    expect(events.rows.map((r) => r.dedupe_key)).toEqual(['o:pending-8']);

    const log = await db.pool.query(
      `select details -> 'dropped' as dropped, details -> 'kept' as kept from wahook.maintenance_log where task = 'partitions' order by id desc limit 1`,
    );
    expect(log.rows[0]).toEqual({ dropped: 10, kept: 1 });

    const again = await maintain(db.pool);
    expect(named(again, 'dropped')).toEqual([]);
    expect(named(again, 'kept')).toEqual([`wahook.wa_events_p${month(-8).key}`]);
  });

  it('a retention of null keeps everything', async () => {
    const db = await freshDb();
    await db.pool.query(`update wahook.partition_config set retention = null where parent = 'wahook.webhook_logs'`);
    await db.pool.query(`select wahook.make_month_partition('wahook.webhook_logs', $1::date)`, [month(-30).start.slice(0, 10)]);
    const actions = await maintain(db.pool);
    expect(named(actions, 'dropped')).toEqual([]);
    expect(await partitionsOf(db.pool, 'wahook.webhook_logs')).toContain(`webhook_logs_p${month(-30).key}`);
  });
});

describe('the default partition', () => {
  it('moves rows that landed there into their month, creating it; rows past the retention stay and are reported', async () => {
    const db = await freshDb();
    await insertEvent(db.pool, midMonth(-2), 'o:lost-2');
    await insertEvent(db.pool, midMonth(-2), 'o:lost-2b');
    await insertEvent(db.pool, midMonth(9), 'o:future+9');
    await insertEvent(db.pool, midMonth(-9), 'o:ancient-9');
    const where = async (key: string) =>
      (await db.pool.query(`select tableoid::regclass::text as t from wahook.wa_events where dedupe_key = $1`, [key])).rows[0].t;
    expect(await where('o:lost-2')).toBe('wahook.wa_events_default');

    const actions = await maintain(db.pool);
    expect(actions.filter((a) => a.action === 'error')).toEqual([]);
    expect(named(actions, 'created', 'wahook.wa_events')).toEqual(
      [`wahook.wa_events_p${month(-2).key}`, `wahook.wa_events_p${month(9).key}`].sort(),
    );
    expect(actions.filter((a) => a.action === 'moved').map((a) => [a.partition, a.rows])).toEqual([
      [`wahook.wa_events_p${month(-2).key}`, '2'],
      [`wahook.wa_events_p${month(9).key}`, '1'],
    ]);
    expect(actions.filter((a) => a.action === 'expired_in_default').map((a) => [a.partition, a.rows])).toEqual([
      ['wahook.wa_events_default', '1'],
    ]);
    expect(await where('o:lost-2')).toBe(`wahook.wa_events_p${month(-2).key}`);
    expect(await where('o:lost-2b')).toBe(`wahook.wa_events_p${month(-2).key}`);
    expect(await where('o:future+9')).toBe(`wahook.wa_events_p${month(9).key}`);
    expect(await where('o:ancient-9')).toBe('wahook.wa_events_default');
    const log = await db.pool.query(
      `select details -> 'moved_rows' as moved, details -> 'expired_in_default_rows' as expired from wahook.maintenance_log order by id desc limit 1`,
    );
    expect(log.rows[0]).toEqual({ moved: 3, expired: 1 });
    const status = await db.pool.query(`select rows from wahook.partition_status() where partition = 'wahook.wa_events_default'`);
    expect(status.rows[0].rows).toBe('1');
    // the moved rows' new partition got the configured autovacuum settings
    expect((await reloptions(db.pool, `wahook.wa_events_p${month(-2).key}`)).sort()).toEqual(await configured(db.pool, 'wahook.wa_events'));

    const again = await maintain(db.pool);
    expect(named(again, 'created')).toEqual([]);
    expect(named(again, 'moved')).toEqual([]);
  });
});

describe('one run at a time', () => {
  it('a second run while the first holds the lock returns skipped at once; both succeed and the work is done once', async () => {
    const db = await freshDb();
    await db.pool.query(`update wahook.partition_config set premake = 4`);
    const a = new pg.Client({ connectionString: db.url });
    const b = new pg.Client({ connectionString: db.url });
    await a.connect();
    await b.connect();
    try {
      await a.query('begin');
      const first = await maintain(a);
      expect(named(first, 'created')).toEqual([`wahook.wa_events_p${month(4).key}`, `wahook.webhook_logs_p${month(4).key}`]);
      // a's transaction is still open: b must not wait for it
      const second = await Promise.race([
        maintain(b),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('second run blocked')), 5000)),
      ]);
      expect(second).toEqual([expect.objectContaining({ action: 'skipped_concurrent_run', parent: null, partition: null })]);
      await a.query('commit');

      const log = await db.pool.query(`select outcome from wahook.maintenance_log where task = 'partitions' order by id desc limit 2`);
      expect(log.rows.map((r) => r.outcome).sort()).toEqual(['ok', 'skipped_concurrent_run']);
      const third = await maintain(b);
      expect(third.map((x) => x.action)).toContain('purged');
      expect(named(third, 'created')).toEqual([]);

      // and two runs started together: whichever way they interleave, each partition is made exactly once
      await db.pool.query(`update wahook.partition_config set premake = 6`);
      const both = (await Promise.all([maintain(a), maintain(b)])).flat();
      expect(both.filter((x) => x.action === 'error')).toEqual([]);
      expect(named(both, 'created')).toEqual(
        [5, 6].flatMap((i) => [`wahook.wa_events_p${month(i).key}`, `wahook.webhook_logs_p${month(i).key}`]).sort(),
      );
    } finally {
      await a.end();
      await b.end();
    }
  });

  it('does nothing on a replica', async () => {
    const db = await freshDb();
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      await c.query('begin');
      await insertEvent(c, midMonth(-2), 'o:replica');
      await c.query(`update wahook.partition_config set premake = 5`);
      const logsBefore = (await c.query(`select count(*)::int as n from wahook.maintenance_log`)).rows[0].n;
      // pg_is_in_recovery() cannot be made true on a primary: stand in for it, inside this rolled-back transaction
      await c.query(`create or replace function wahook.is_replica() returns boolean language sql volatile as 'select true'`);
      const actions = await maintain(c);
      expect(actions).toEqual([expect.objectContaining({ action: 'skipped_replica', parent: null, partition: null })]);
      expect(await partitionsOf(c, 'wahook.wa_events')).not.toContain(`wa_events_p${month(4).key}`);
      expect(await partitionsOf(c, 'wahook.wa_events')).not.toContain(`wa_events_p${month(-2).key}`);
      expect((await c.query(`select count(*)::int as n from wahook.maintenance_log`)).rows[0].n).toBe(logsBefore);
    } finally {
      await c.query('rollback');
      await c.end();
    }
    // the stand-in is gone with the rollback: the real check says this is a primary
    expect((await db.pool.query('select wahook.is_replica() as r')).rows[0].r).toBe(false);
  });
});

describe('autovacuum settings', () => {
  it('are on every partition, the default ones included, and re-applied when they drift or the configuration changes', async () => {
    const db = await freshDb();
    for (const parent of ['wahook.wa_events', 'wahook.webhook_logs']) {
      const want = await configured(db.pool, parent);
      expect(want.length).toBeGreaterThan(0);
      for (const p of await partitionsOf(db.pool, parent)) {
        expect((await reloptions(db.pool, `wahook.${p}`)).sort(), p).toEqual(want);
      }
    }
    // the partitioned parents carry none (PostgreSQL refuses them there)
    expect(await reloptions(db.pool, 'wahook.wa_events')).toEqual([]);
    // a partition made directly, outside a maintenance run, gets them when it is created
    await db.pool.query(`select wahook.make_month_partition('wahook.webhook_logs', $1::date)`, [month(8).start.slice(0, 10)]);
    expect((await reloptions(db.pool, `wahook.webhook_logs_p${month(8).key}`)).sort()).toEqual(await configured(db.pool, 'wahook.webhook_logs'));

    // drift: someone reset one partition and changed a default partition
    const current = `wahook.wa_events_p${month(0).key}`;
    await db.pool.query(`alter table ${current} reset (autovacuum_vacuum_scale_factor)`);
    await db.pool.query(`alter table wahook.webhook_logs_default set (autovacuum_vacuum_scale_factor = 0.2)`);
    const actions = await maintain(db.pool);
    expect(named(actions, 'tuned')).toEqual([current, 'wahook.webhook_logs_default'].sort());
    expect((await reloptions(db.pool, current)).sort()).toEqual(await configured(db.pool, 'wahook.wa_events'));
    expect((await reloptions(db.pool, 'wahook.webhook_logs_default')).sort()).toEqual(await configured(db.pool, 'wahook.webhook_logs'));
    expect(named(await maintain(db.pool), 'tuned')).toEqual([]);

    // a configuration change reaches every partition of that table on the next run
    await db.pool.query(
      `update wahook.partition_config set storage_parameters = storage_parameters || '{"autovacuum_vacuum_scale_factor": 0.08}'
        where parent = 'wahook.wa_events'`,
    );
    const changed = await maintain(db.pool);
    expect(named(changed, 'tuned')).toEqual((await partitionsOf(db.pool, 'wahook.wa_events')).map((p) => `wahook.${p}`).sort());
    expect(await reloptions(db.pool, 'wahook.wa_events_default')).toContain('autovacuum_vacuum_scale_factor=0.08');
  });

  it('are set on the hot plain tables', async () => {
    const db = await freshDb();
    expect(await reloptions(db.pool, 'wahook.dedupe_keys')).toEqual(
      expect.arrayContaining(['autovacuum_vacuum_scale_factor=0.05', 'autovacuum_analyze_scale_factor=0.05']),
    );
    expect(await reloptions(db.pool, 'wahook.whatsapp_messages')).toEqual(
      expect.arrayContaining(['fillfactor=90', 'autovacuum_vacuum_scale_factor=0.05']),
    );
    expect(await reloptions(db.pool, 'wahook.webhook_dlq')).toEqual(expect.arrayContaining(['autovacuum_vacuum_scale_factor=0.05']));
  });

  it('refuses a storage parameter outside the allow-list with WH010, naming the key', async () => {
    const db = await freshDb();
    await expect(
      db.pool.query(`update wahook.partition_config set storage_parameters = '{"autovacuum_vacuum_scale_factr": 0.1}' where parent = 'wahook.wa_events'`),
    ).rejects.toMatchObject({ code: 'WH010', message: expect.stringContaining('autovacuum_vacuum_scale_factr') });
    await expect(
      db.pool.query(`select wahook.apply_storage_parameters('wahook.dedupe_keys', '{"user_catalog_table": true}')`),
    ).rejects.toMatchObject({ code: 'WH010', message: expect.stringContaining('user_catalog_table') });
    await expect(
      db.pool.query(`insert into wahook.partition_config (parent, storage_parameters) values ('wahook.wa_events_x', '[1]')`),
    ).rejects.toMatchObject({ code: 'WH010' });
    // not partitioned by month on a timestamptz, or a negative retention: WH011
    await expect(
      db.pool.query(`insert into wahook.partition_config (parent) values ('wahook.dedupe_keys')`),
    ).rejects.toMatchObject({ code: 'WH011' });
    await expect(
      db.pool.query(`update wahook.partition_config set retention = '-1 month' where parent = 'wahook.wa_events'`),
    ).rejects.toMatchObject({ code: 'WH011' });
    expect(await reloptions(db.pool, 'wahook.dedupe_keys')).not.toEqual(expect.arrayContaining([expect.stringMatching(/user_catalog/)]));
  });

  it('a bad configuration that bypassed the check is an error for that table only, recorded and committed', async () => {
    const db = await freshDb();
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      // session_replication_role = replica skips ordinary triggers, as a restore or a careless script might
      await c.query(`set session_replication_role = replica`);
      await c.query(`update wahook.partition_config set storage_parameters = '{"bogus": 1}' where parent = 'wahook.webhook_logs'`);
    } finally {
      await c.end();
    }
    await db.pool.query(`update wahook.partition_config set premake = 4 where parent = 'wahook.wa_events'`);
    const actions = await maintain(db.pool);
    expect(actions.filter((a) => a.action === 'error')).toEqual([
      expect.objectContaining({ parent: 'wahook.webhook_logs', detail: expect.stringMatching(/^WH010: .*bogus/) }),
    ]);
    expect(named(actions, 'created')).toEqual([`wahook.wa_events_p${month(4).key}`]);
    const cfg = await db.pool.query(`select parent, last_error, last_success_at = last_run_at as ok from wahook.partition_config order by parent`);
    expect(cfg.rows).toEqual([
      { parent: 'wahook.wa_events', last_error: null, ok: true },
      { parent: 'wahook.webhook_logs', last_error: expect.stringContaining('bogus'), ok: false },
    ]);
    const log = await db.pool.query(`select outcome, details -> 'errors' as errors from wahook.maintenance_log order by id desc limit 1`);
    expect(log.rows[0]).toEqual({ outcome: 'error', errors: { 'wahook.webhook_logs': expect.stringContaining('WH010') } });
  });
});

describe('dedupe keys', () => {
  it('maintenance purges keys past dedupe.retention and logs the count', async () => {
    const db = await freshDb();
    await db.pool.query(
      `insert into wahook.dedupe_keys (key, event_id, event_received_at, first_seen_at)
       select 'm:old' || g, g, now() - interval '10 days', now() - interval '10 days' from generate_series(1, 25) as g
       union all
       select 'm:new' || g, g, now() - interval '1 day', now() - interval '1 day' from generate_series(1, 5) as g`,
    );
    const actions = await maintain(db.pool);
    expect(actions.filter((a) => a.action === 'purged')).toEqual([
      expect.objectContaining({ parent: 'wahook.dedupe_keys', rows: '25' }),
    ]);
    const log = await db.pool.query(`select details -> 'dedupe_keys_purged' as n from wahook.maintenance_log order by id desc limit 1`);
    expect(log.rows[0].n).toBe(25);
    const left = await db.pool.query(`select count(*)::int as n from wahook.dedupe_keys where key like 'm:%'`);
    expect(left.rows[0].n).toBe(5);
  });
});

describe('wahook partitions', () => {
  async function run(db: TestDatabase, args: string[]): Promise<string> {
    const out: string[] = [];
    await partitionsCommand(args, db.url, (l) => out.push(l));
    return out.join('\n');
  }

  it('status prints a table of partitions and a line per table', async () => {
    const db = await freshDb();
    await insertEvent(db.pool, midMonth(-9), 'o:in-default');
    const text = await run(db, ['status']);
    const lines = text.split('\n');
    expect(lines[0]).toMatch(/^table\s+partition\s+range\s+size\s+rows\s+default$/);
    const current = lines.find((l) => l.includes(`wahook.wa_events_p${month(0).key}`));
    expect(current).toMatch(new RegExp(`^wahook\\.wa_events\\s+wahook\\.wa_events_p${month(0).key}\\s+${month(0).start.slice(0, 10)} \\.\\. ${month(1).start.slice(0, 10)}\\s+\\d+ kB`));
    expect(lines.find((l) => l.includes('wahook.wa_events_default'))).toMatch(/\(everything else\)\s+\d+ kB\s+1\s+yes$/);
    expect(text).toContain('wahook.wa_events: no month missing through premake 3; rows in default: 1;');
    expect(text).toMatch(/wahook\.webhook_logs: no month missing through premake 3; rows in default: 0; last maintained/);

    const parsed = JSON.parse(await run(db, ['status', '--json'])) as { partitions: Array<{ partition: string }> };
    expect(parsed.partitions.map((p) => p.partition)).toContain(`wahook.wa_events_p${month(3).key}`);
  });

  it('maintain prints what it did', async () => {
    const db = await freshDb();
    await db.pool.query(`update wahook.partition_config set premake = 4 where parent = 'wahook.webhook_logs'`);
    const lines = (await run(db, ['maintain'])).split('\n');
    expect(lines[0]).toMatch(/^parent\s+partition\s+action\s+rows\s+detail$/);
    expect(lines.some((l) => new RegExp(`^wahook\\.webhook_logs\\s+wahook\\.webhook_logs_p${month(4).key}\\s+created`).test(l))).toBe(true);
    expect(lines.at(-1)).toMatch(/^created 1, dropped 0, kept past retention 0, moved 0 rows out of default, tuned 0, purged 0 dedupe keys, errors 0$/);
  });

  it('refuses bad arguments with PartitionsUsageError naming the problem', async () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /which partitions command/],
      [['list'], /unknown partitions command "list"/],
      [['status', '--verbose'], /unknown option --verbose/],
      [['maintain', 'now'], /takes no arguments \(got "now"\)/],
    ];
    for (const [args, message] of cases) {
      const err = await partitionsCommand(args, 'postgres://nobody@127.0.0.1:1/none', () => undefined).catch((e: unknown) => e);
      expect(err, args.join(' ')).toBeInstanceOf(PartitionsUsageError);
      expect((err as Error).message).toMatch(message);
    }
  });
});

describe('task wahook_maintenance', () => {
  function helpers(pool: pg.Pool): JobHelpers {
    return {
      withPgClient: async <T>(fn: (client: pg.PoolClient) => Promise<T>) => {
        const client = await pool.connect();
        try {
          return await fn(client);
        } finally {
          client.release();
        }
      },
    } as unknown as JobHelpers;
  }

  it('runs the maintenance, logs a summary, and throws after recording a failure', async () => {
    const db = await freshDb();
    await db.pool.query(`update wahook.partition_config set premake = 4 where parent = 'wahook.wa_events'`);
    const log = recordingLogger();
    const task = makeWahookMaintenance({ log });
    await task({}, helpers(db.pool));
    const done = log.records.find((r) => r.message === 'maintenance done');
    expect(done?.fields).toMatchObject({
      partitions_created: [`wahook.wa_events_p${month(4).key}`],
      partitions_dropped: [],
      dedupe_keys_purged: 0,
      errors: 0,
    });

    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    await c.query(`set session_replication_role = replica`);
    await c.query(`update wahook.partition_config set storage_parameters = '{"bogus": 1}' where parent = 'wahook.wa_events'`);
    await c.end();
    await expect(task({}, helpers(db.pool))).rejects.toThrow(/partition maintenance failed .*wahook\.wa_events.*bogus/);
    const last = await db.pool.query(`select outcome from wahook.maintenance_log order by id desc limit 1`);
    expect(last.rows[0].outcome).toBe('error');
  });
});
