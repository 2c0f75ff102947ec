// wahook.ingest and the partition functions, called directly in SQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './helpers/db.ts';
import { fixture } from './helpers/fixtures.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

async function ingest(client: pg.Pool | pg.PoolClient | pg.Client, bodies: Buffer[]) {
  const r = await client.query(
    'select * from wahook.ingest($1::bytea[], $2::smallint[], $3::text[])',
    [bodies, bodies.map(() => 0), bodies.map(() => 'fp')],
  );
  return r.rows as Array<{ idx: number; log_id: string; parse_status: string; notifications: number; duplicates: number }>;
}

function msg(wamid: string): Buffer {
  return Buffer.from(JSON.stringify({
    object: 'whatsapp_business_account',
    entry: [{ id: '1', changes: [{ field: 'messages', value: { metadata: { phone_number_id: '100000000000001' },
      messages: [{ from: '447700900123', id: wamid, timestamp: '1767225600', type: 'text', text: { body: 'x' } }] } }] }],
  }));
}

describe('wahook.ingest', () => {
  it('keeps the first of two identical bodies in one batch and counts the second as duplicates', async () => {
    const { body } = fixture('batch-mixed');
    const rows = await ingest(db.pool, [body, body]);
    expect(rows.map((r) => [r.idx, r.notifications, r.duplicates])).toEqual([[1, 3, 0], [2, 3, 3]]);
    const events = await db.pool.query('select log_id from wahook.wa_events where log_id = any($1::bigint[])', [rows.map((r) => r.log_id)]);
    expect(events.rows.every((e) => e.log_id === rows[0]!.log_id)).toBe(true);
    expect(events.rowCount).toBe(3);
  });

  it('dedupes across partitions: a key first seen last month still blocks its redelivery', async () => {
    // the first delivery landed in another month's partition
    await db.pool.query(
      `insert into wahook.dedupe_keys (key, event_id, event_received_at, first_seen_at)
       values ('m:wamid.LASTMONTH', 1, now() - interval '20 days', now() - interval '6 days')`,
    );
    const [row] = await ingest(db.pool, [msg('wamid.LASTMONTH')]);
    expect(row).toMatchObject({ notifications: 1, duplicates: 1 });
  });

  it('two connections ingesting the same notification at once store it once', async () => {
    const a = new pg.Client({ connectionString: db.url });
    const b = new pg.Client({ connectionString: db.url });
    await a.connect();
    await b.connect();
    try {
      await a.query('begin');
      await b.query('begin');
      await ingest(a, [msg('wamid.RACE1'), msg('wamid.RACE2')]);
      // b blocks on a's uncommitted keys (inserted in key order, so no deadlock), then finds them taken
      const pending = ingest(b, [msg('wamid.RACE2'), msg('wamid.RACE1')]);
      await new Promise((r) => setTimeout(r, 200));
      await a.query('commit');
      const rows = await pending;
      await b.query('commit');
      expect(rows.map((r) => r.duplicates)).toEqual([1, 1]);
      const n = await db.pool.query(`select count(*)::int as n from wahook.wa_events where wamid in ('wamid.RACE1', 'wamid.RACE2')`);
      expect(n.rows[0].n).toBe(2);
    } finally {
      await a.end();
      await b.end();
    }
  });

  it('purges dedupe keys after the retention window, and only those', async () => {
    await db.pool.query(
      `insert into wahook.dedupe_keys (key, event_id, event_received_at, first_seen_at)
       values ('m:wamid.OLD', 1, now() - interval '9 days', now() - interval '9 days'),
              ('m:wamid.RECENT', 2, now() - interval '7 days', now() - interval '7 days')`,
    );
    const r = await db.pool.query('select wahook.purge_dedupe_keys() as n');
    expect(Number(r.rows[0].n)).toBe(1);
    const left = await db.pool.query(`select key from wahook.dedupe_keys where key in ('m:wamid.OLD', 'm:wamid.RECENT')`);
    expect(left.rows.map((x) => x.key)).toEqual(['m:wamid.RECENT']);
  });

  it('refuses arrays of different lengths with code WH001', async () => {
    await expect(
      db.pool.query(`select * from wahook.ingest(array['\\x7b7d'::bytea], array[]::smallint[], array['fp'])`),
    ).rejects.toMatchObject({ code: 'WH001' });
  });
});
