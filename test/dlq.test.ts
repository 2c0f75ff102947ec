// Retries, the dead-letter queue, its schedule (time travel in the database, not sleeps), replay, discard,
// ordering under failure, and the accounting identity.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import path from 'node:path';
import { PermanentError, RetryLaterError } from '../src/errors.ts';
import type { RunningReceiver } from '../src/receiver/server.ts';
import { dlqCommand } from '../src/cli/dlq.ts';
import { makeMetrics } from '../src/metrics/registry.ts';
import { createTestDatabase, waitFor, type TestDatabase } from './helpers/db.ts';
import { FIXTURE_SECRET } from './helpers/fixtures.ts';
import { childEnv, spawnWahook } from './helpers/process.ts';
import { testReceiver } from './helpers/receiver.ts';
import { plantOrphanedJob, sendSigned, settled, startTestWorker, textMessage, webhook, type TestWorker } from './helpers/worker.ts';

let db: TestDatabase;
let receiver: RunningReceiver;
let tw: TestWorker;
let seq = 0;
const metrics = makeMetrics();

beforeAll(async () => {
  db = await createTestDatabase();
  // fast retries and a small budget, so a test sees the whole life of a job in a second or two
  await db.pool.query(`update wahook.settings set value = '3' where key = 'process_wa_event.max_attempts'`);
  await db.pool.query(`update wahook.settings set value = '"50 milliseconds"' where key = 'retry.base_delay'`);
  receiver = await testReceiver(db.url);
  tw = await startTestWorker(db.url, {}, metrics);
});
afterAll(async () => {
  await tw?.worker.stop();
  await receiver?.close();
  await db?.drop();
});
beforeEach(() => {
  tw.behaviour = {};
});

/** Send one 'other' notification (a template update) with a unique body; returns its event id. */
async function sendOther(tag: string): Promise<string> {
  const body = Buffer.from(JSON.stringify({
    object: 'whatsapp_business_account',
    entry: [{ id: '200000000000002', time: 1767225900 + seq++, changes: [{ field: 'message_template_status_update', value: { event: 'APPROVED', tag } }] }],
  }));
  await sendSigned(receiver.webhookUrl, body);
  const r = await db.pool.query(`select id from wahook.wa_events where payload -> 'value' ->> 'tag' = $1`, [tag]);
  return r.rows[0].id;
}

async function event(id: string) {
  return (await db.pool.query('select state, attempts, last_error from wahook.wa_events where id = $1', [id])).rows[0];
}

async function dlqFor(eventId: string) {
  return (await db.pool.query('select * from wahook.webhook_dlq where event_id = $1 order by id', [eventId])).rows;
}

async function jobsOfEvent(eventId: string) {
  return query(`select id from graphile_worker._private_jobs where (payload::jsonb ->> 'id') = $1 and task_id =
                  (select id from graphile_worker._private_tasks where identifier = 'process_wa_event')`, [eventId]);
}

async function query<T = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
  return (await db.pool.query(sql, params)).rows as T[];
}

/** The payload wahook.ingest gives an event's job (the receive time to the microsecond, as it is matched). */
async function eventJobPayload(eventId: string): Promise<Record<string, unknown>> {
  const r = await query<{ p: Record<string, unknown> }>(`select json_build_object('id', id, 'at', received_at) as p from wahook.wa_events where id = $1`, [eventId]);
  return r[0]!.p;
}

/** An 'other' event whose handler fails until its DLQ entry is retried by the processor; the retry resolves it. */
async function resolvedByDlqRetry(tag: string) {
  let fixed = false;
  tw.behaviour.other = () => {
    if (!fixed) throw new Error('not yet');
  };
  const id = await sendOther(tag);
  await waitFor(async () => (await dlqFor(id)).length === 1);
  const [entry] = await dlqFor(id);
  fixed = true;
  await query(`select * from wahook.dlq_process((select next_retry_at from wahook.webhook_dlq where id = $1))`, [entry.id]);
  await waitFor(async () => (await dlqFor(id))[0].status === 'resolved');
  return { id, entry };
}

describe('retries', () => {
  it('a handler that fails twice then succeeds ends done after three attempts, with no DLQ entry', async () => {
    const calls = new Map<string, number>();
    tw.behaviour.other = (e) => {
      const n = (calls.get(e.id) ?? 0) + 1;
      calls.set(e.id, n);
      if (n < 3) throw new Error(`flaky ${n}`);
    };
    const id = await sendOther('flaky');
    await settled(db.pool);
    expect(await event(id)).toEqual({ state: 'done', attempts: 3, last_error: null });
    expect(await dlqFor(id)).toEqual([]);
  });

  it('a handler that always fails ends in the DLQ with its error after the budget, retried with growing delays', async () => {
    const seen: number[] = [];
    tw.behaviour.other = () => {
      seen.push(Date.now());
      const e = new Error('database of the CRM is down') as Error & { code: string };
      e.code = 'CRM_DOWN';
      throw e;
    };
    const id = await sendOther('always');
    await waitFor(async () => (await dlqFor(id)).length === 1);
    const [entry] = await dlqFor(id);
    expect(entry).toMatchObject({
      task: 'process_wa_event', status: 'pending', attempts: 3, error_class: 'transient', error_code: 'CRM_DOWN',
      last_error: 'database of the CRM is down', kind: 'other', dlq_attempts: 0,
    });
    expect(entry.payload).toEqual({ id: Number(id), at: expect.any(String) });
    expect(entry.first_failed_at.getTime()).toBeLessThan(entry.last_failed_at.getTime());
    // first DLQ retry 5 minutes after the entry, and an exact-time job for it
    expect(entry.next_retry_at.getTime() - entry.dead_lettered_at.getTime()).toBe(5 * 60_000);
    const jobs = await query<{ run_at: Date }>(`select run_at from graphile_worker.jobs where task_identifier = 'wahook_dlq_retry' and key = $1`, [`wahook_dlq_retry:${entry.id}`]);
    expect(jobs.map((j) => j.run_at.getTime())).toEqual([entry.next_retry_at.getTime()]);
    expect(await event(id)).toMatchObject({ state: 'dead', attempts: 3 });
    expect(seen).toHaveLength(3);
    // every outcome is counted (the DLQ move included)
    const counted = await metrics.eventsProcessed.get();
    const n = (outcome: string) => counted.values.find((v) => v.labels.kind === 'other' && v.labels.outcome === outcome)?.value ?? 0;
    expect(n('dead_lettered')).toBeGreaterThanOrEqual(1);
    expect(n('failed')).toBeGreaterThanOrEqual(2);
    // no job of this event is left in graphile-worker's table
    expect(await jobsOfEvent(id)).toEqual([]);
  });

  it('a PermanentError goes to the DLQ at once, without retries or automatic DLQ retries', async () => {
    let calls = 0;
    tw.behaviour.other = () => {
      calls++;
      throw new PermanentError('customer record is invalid', 'BAD_DATA');
    };
    const id = await sendOther('permanent');
    await waitFor(async () => (await dlqFor(id)).length === 1);
    const [entry] = await dlqFor(id);
    expect(entry).toMatchObject({ attempts: 1, error_class: 'permanent', error_code: 'BAD_DATA', next_retry_at: null });
    expect(calls).toBe(1);
  });

  it('plain JavaScript marks the class with a property on the Error', async () => {
    tw.behaviour.other = () => {
      throw Object.assign(new Error('no such customer'), { wahookClass: 'permanent', code: 404 });
    };
    const id = await sendOther('plain-js');
    await waitFor(async () => (await dlqFor(id)).length === 1);
    expect((await dlqFor(id))[0]).toMatchObject({ attempts: 1, error_class: 'permanent', error_code: '404' });
  });

  it('a wait (RetryLaterError) runs again later without spending an attempt', async () => {
    let calls = 0;
    tw.behaviour.other = () => {
      calls++;
      if (calls <= 4) throw new RetryLaterError('rate limited', 30, 130429);
    };
    const id = await sendOther('wait');
    await settled(db.pool);
    // five runs, but only the last counted: the budget of 3 was never at risk
    expect(calls).toBe(5);
    expect(await event(id)).toEqual({ state: 'done', attempts: 1, last_error: null });
    expect(await dlqFor(id)).toEqual([]);
  });
});

describe('DLQ schedule (time travel)', () => {
  it('retries an entry 5 min, 15 min, 1 h, 4 h and 12 h apart, then marks it exhausted, logging each step', async () => {
    tw.behaviour.other = () => {
      throw new Error('still broken');
    };
    const id = await sendOther('schedule');
    await waitFor(async () => (await dlqFor(id)).length === 1);
    const dlqId = (await dlqFor(id))[0].id;
    const schedule = ['5 minutes', '15 minutes', '1 hour', '4 hours', '12 hours'];
    for (const [i, delay] of schedule.entries()) {
      const [entry] = await query(`select status, next_retry_at, last_failed_at, dlq_attempts from wahook.webhook_dlq where id = $1`, [dlqId]);
      expect(entry).toMatchObject({ status: 'pending', dlq_attempts: i });
      const expected = await query<{ ok: boolean }>(`select $1::timestamptz - $2::timestamptz = $3::interval as ok`, [
        entry!.next_retry_at, entry!.last_failed_at, delay]);
      expect(expected[0]!.ok, `retry ${i + 1} is ${delay} after the last failure`).toBe(true);
      // (next_retry_at is read in SQL: a JavaScript Date would drop its microseconds)
      const next = `(select next_retry_at from wahook.webhook_dlq where id = ${Number(dlqId)})`;
      // a minute early: not due yet (other tests' entries may be; they are not this test's business)
      const early = await query(`select * from wahook.dlq_process(${next} - interval '1 minute')`);
      expect(early[0]).toMatchObject({ outcome: 'ok' });
      expect((await query(`select dlq_attempts from wahook.webhook_dlq where id = $1`, [dlqId]))[0]).toEqual({ dlq_attempts: i });
      // on time: the entry is queued, the worker retries it, it fails again
      const due = await query<{ enqueued: number }>(`select * from wahook.dlq_process(${next})`);
      expect(due[0]!.enqueued).toBeGreaterThanOrEqual(1);
      expect((await query(`select dlq_attempts from wahook.webhook_dlq where id = $1`, [dlqId]))[0]).toEqual({ dlq_attempts: i + 1 });
      await waitFor(async () => (await query(`select status from wahook.webhook_dlq where id = $1`, [dlqId]))[0]!.status !== 'retrying');
    }
    const [final] = await query(`select status, next_retry_at, dlq_attempts from wahook.webhook_dlq where id = $1`, [dlqId]);
    expect(final).toEqual({ status: 'exhausted', next_retry_at: null, dlq_attempts: 5 });
    const log = await query<{ outcome: string }>(`select outcome from wahook.dlq_processing_log where dlq_id = $1 order by id`, [dlqId]);
    expect(log.map((l) => l.outcome)).toEqual(['failed', 'failed', 'failed', 'failed', 'exhausted']);
    const runs = await query(`select count(*)::int as n from wahook.dlq_processing_log where kind = 'run'`);
    expect(runs[0]!.n).toBeGreaterThanOrEqual(10);
    expect(await event(id)).toMatchObject({ state: 'dead' });
  }, 60_000);

  it('a retry that succeeds resolves the entry and finishes the event', async () => {
    const { id, entry } = await resolvedByDlqRetry('resolves');
    expect(await event(id)).toMatchObject({ state: 'done' });
    const log = await query(`select outcome, duration_ms from wahook.dlq_processing_log where dlq_id = $1`, [entry.id]);
    expect(log).toEqual([{ outcome: 'succeeded', duration_ms: expect.any(String) }]);
  });

  it('the switch in wahook.settings turns automatic DLQ retries off at run time', async () => {
    await query(`update wahook.settings set value = 'false' where key = 'dlq.auto_retry'`);
    try {
      tw.behaviour.other = () => {
        throw new Error('broken');
      };
      const id = await sendOther('switch-off');
      await waitFor(async () => (await dlqFor(id)).length === 1);
      expect((await dlqFor(id))[0]).toMatchObject({ status: 'pending', next_retry_at: null });
      const run = await query(`select * from wahook.dlq_process(now() + interval '1 day')`);
      expect(run[0]).toMatchObject({ outcome: 'auto_retry_disabled', enqueued: 0 });
      const audit = await query(`select actor, action, before ->> 'value' as before, after ->> 'value' as after from wahook.audit_log where table_name = 'wahook.settings' and row_id = 'dlq.auto_retry' order by id`);
      expect(audit.at(-1)).toMatchObject({ action: 'update', before: 'true', after: 'false' });
    } finally {
      await query(`update wahook.settings set value = 'true' where key = 'dlq.auto_retry'`);
    }
  });
});

describe('replay and discard', () => {
  async function deadLettered(tag: string): Promise<{ eventId: string; dlqId: string }> {
    tw.behaviour.other = (e) => {
      if ((e.payload as { value: { tag: string } }).value.tag === tag) throw new PermanentError('needs a human', 'HUMAN');
    };
    const eventId = await sendOther(tag);
    await waitFor(async () => (await dlqFor(eventId)).length === 1);
    return { eventId, dlqId: (await dlqFor(eventId))[0].id };
  }

  it('replay --dry-run shows what would be replayed and changes nothing; replay runs it again with a fresh budget', async () => {
    const { eventId, dlqId } = await deadLettered('replay-me');
    const out: string[] = [];
    await dlqCommand(['replay', dlqId, '--dry-run', '--actor', 'ana@oncall'], db.url, {}, (s) => out.push(s));
    expect(out.join('\n')).toMatch(/would replay/);
    expect(out.join('\n')).toMatch(/dry run: 1 would be replayed; nothing changed/);
    expect((await dlqFor(eventId))[0].status).toBe('pending');

    tw.behaviour.other = () => undefined; // fixed
    out.length = 0;
    await dlqCommand(['replay', dlqId, '--actor', 'ana@oncall'], db.url, {}, (s) => out.push(s));
    expect(out.join('\n')).toMatch(/1 replayed by ana@oncall/);
    await settled(db.pool);
    expect(await event(eventId)).toMatchObject({ state: 'done', attempts: 1 });
    expect((await dlqFor(eventId))[0]).toMatchObject({ status: 'replayed', replayed_by: 'ana@oncall' });
    const audit = await query(`select actor, action from wahook.audit_log where row_id = $1 and action = 'dlq.replay'`, [String(dlqId)]);
    expect(audit).toEqual([{ actor: 'ana@oncall', action: 'dlq.replay' }]);
    // a replayed entry is not replayed twice
    const again = await query(`select status from wahook.dlq_replay(array[$1::bigint], 'ana@oncall')`, [dlqId]);
    expect(again).toEqual([{ status: 'skipped: replayed' }]);
  });

  it('replay --where selects by task and error code', async () => {
    const a = await deadLettered('where-a');
    const out: string[] = [];
    await dlqCommand(['replay', '--where', '--task', 'process_wa_event', '--code', 'HUMAN', '--dry-run', '--actor', 'bob'], db.url, {}, (s) => out.push(s));
    expect(out.join('\n')).toContain(String(a.dlqId));
    out.length = 0;
    await dlqCommand(['replay', '--where', '--code', 'NO_SUCH_CODE', '--actor', 'bob'], db.url, {}, (s) => out.push(s));
    expect(out).toEqual(['nothing to replay']);
  });

  it('discard needs a reason, records who and why, and marks the event discarded', async () => {
    const { eventId, dlqId } = await deadLettered('discard-me');
    await expect(dlqCommand(['discard', dlqId], db.url, {}, () => undefined)).rejects.toThrow(/discard needs --reason/);
    await expect(query(`select * from wahook.dlq_discard(array[$1::bigint], '', 'x')`, [dlqId])).rejects.toMatchObject({ code: 'WH005' });
    const out: string[] = [];
    await dlqCommand(['discard', dlqId, '--reason', 'test traffic', '--actor', 'carol'], db.url, {}, (s) => out.push(s));
    expect(out.join('\n')).toMatch(/1 discarded by carol/);
    expect((await dlqFor(eventId))[0]).toMatchObject({ status: 'discarded', discarded_by: 'carol', discard_reason: 'test traffic' });
    expect(await event(eventId)).toMatchObject({ state: 'discarded' });
    const audit = await query(`select actor, action from wahook.audit_log where table_name = 'wahook.webhook_dlq' and row_id = $1 order by id`, [String(dlqId)]);
    expect(audit.map((a) => a.action)).toEqual(['insert', 'update', 'dlq.discard']);
    expect(audit[1]).toMatchObject({ actor: 'carol' });
  });

  it('list and show print readable tables', async () => {
    const { dlqId } = await deadLettered('listed');
    const out: string[] = [];
    await dlqCommand(['list', '--code', 'HUMAN'], db.url, {}, (s) => out.push(s));
    expect(out[0]).toMatch(/^id\s+status\s+task\s+kind/);
    expect(out.join('\n')).toMatch(new RegExp(`^${dlqId}\\s+pending\\s+process_wa_event\\s+other`, 'm'));
    out.length = 0;
    await dlqCommand(['show', dlqId], db.url, {}, (s) => out.push(s));
    expect(out.join('\n')).toMatch(/last error:\n {2}needs a human/);
    expect(out.join('\n')).toMatch(/payload:/);
    await expect(dlqCommand(['list', '--older-than', 'soon'], db.url, {}, () => undefined)).rejects.toThrow(/--older-than takes a duration/);
  });
});

describe('ordering under failure', () => {
  it('a failing message holds its conversation only within its budget; then the rest go on, in order, and the entry records it', async () => {
    const handled: string[] = [];
    tw.behaviour.message = (e) => {
      if (e.wamid === 'wamid.HOLD1') throw new Error('cannot handle this one');
      handled.push(e.wamid!);
    };
    const from = '447700900777';
    await sendSigned(receiver.webhookUrl, webhook({ messages: [textMessage('wamid.HOLD1', 1767227001, from)] }));
    await waitFor(async () => (await query(`select state from wahook.wa_events where wamid = 'wamid.HOLD1'`))[0]?.state === 'retrying');
    await sendSigned(receiver.webhookUrl, webhook({ messages: [textMessage('wamid.HOLD2', 1767227002, from), textMessage('wamid.HOLD3', 1767227003, from)] }));
    await settled(db.pool);
    expect(handled.filter((w) => w.startsWith('wamid.HOLD'))).toEqual(['wamid.HOLD2', 'wamid.HOLD3']);
    const entry = (await query(`select d.* from wahook.webhook_dlq d join wahook.wa_events e on e.id = d.event_id where e.wamid = 'wamid.HOLD1'`))[0]!;
    expect(entry).toMatchObject({ attempts: 3, overtaken_by: 2, wa_id: from, kind: 'message' });
    // HOLD2 was handled only after HOLD1 left for the DLQ
    const times = await query<{ wamid: string; t: Date }>(
      `select e.wamid, coalesce(e.processed_at, e.updated_at) as t from wahook.wa_events e where e.wamid in ('wamid.HOLD1', 'wamid.HOLD2') order by e.id`);
    expect(times[1]!.t.getTime()).toBeGreaterThanOrEqual((entry.dead_lettered_at as Date).getTime());
  });
});

describe('a worker killed on the last attempt', () => {
  it('leaves a job the sweeper finds and moves to the DLQ', async () => {
    await query(`update wahook.settings set value = '1' where key = 'process_wa_event.max_attempts'`);
    // stop the in-process worker so the real one below takes the job
    await tw.worker.stop();
    const p = spawnWahook(['worker'], childEnv({
      DATABASE_URL: db.url,
      WAHOOK_HANDLERS: path.resolve('test/fixtures/handlers/hang-on-other.mjs'),
      WHATSAPP_APP_SECRET: FIXTURE_SECRET,
    }));
    try {
      await p.waitFor(/worker started/);
      const id = await sendOther('killed');
      await waitFor(async () => (await event(id)).state === 'processing');
      // while the worker lives, the sweeper leaves its job alone, however old the lock
      expect(await query(`select * from wahook.sweep(now() + interval '1 hour')`)).toEqual([]);
      p.child.kill('SIGKILL');
      await p.exited;
      await waitFor(async () => (await query(`select * from wahook.sweep(now() + interval '1 minute')`)).length === 1
        || (await dlqFor(id)).length === 1, 10_000, 'the sweeper to find the orphaned job');
      const [entry] = await dlqFor(id);
      expect(entry).toMatchObject({ error_class: 'crashed', error_code: 'WORKER_LOST', attempts: 1 });
      expect(await event(id)).toMatchObject({ state: 'dead' });
      expect(await jobsOfEvent(id)).toEqual([]);
    } finally {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await query(`update wahook.settings set value = '3' where key = 'process_wa_event.max_attempts'`);
      tw = await startTestWorker(db.url);
    }
  });
});

describe('a worker that died after its attempt committed', () => {
  it('leaves a job the sweeper removes without running the handler again or touching the event', async () => {
    let calls = 0;
    tw.behaviour.other = () => {
      calls++;
    };
    const id = await sendOther('committed-then-died');
    await settled(db.pool);
    expect(calls).toBe(1);
    const job = await plantOrphanedJob(db.pool, 'process_wa_event', await eventJobPayload(id));
    expect(await query(`select * from wahook.sweep(now() + interval '1 minute')`))
      .toEqual([{ job_id: job, task: 'process_wa_event', outcome: 'finished', dlq_id: null }]);
    expect(await query('select 1 from graphile_worker._private_jobs where id = $1', [job])).toEqual([]);
    expect(await event(id)).toMatchObject({ state: 'done' });
    expect(await dlqFor(id)).toEqual([]);
    expect(calls).toBe(1);
  });

  it('the same holds for an automatic DLQ retry that resolved its entry: the entry stays resolved', async () => {
    const { id, entry } = await resolvedByDlqRetry('dlq-committed-then-died');
    const [resolved] = await dlqFor(id);
    const job = await plantOrphanedJob(db.pool, 'process_wa_event', { ...(await eventJobPayload(id)), dlq_id: Number(entry.id) });
    expect(await query(`select * from wahook.sweep(now() + interval '1 minute')`))
      .toEqual([{ job_id: job, task: 'process_wa_event', outcome: 'finished', dlq_id: null }]);
    expect((await dlqFor(id))[0]).toMatchObject({ status: 'resolved', dlq_attempts: resolved.dlq_attempts, next_retry_at: null });
    expect(await event(id)).toMatchObject({ state: 'done' });
  });
});

describe('accounting', () => {
  it('accepted = done + pending + processing + retrying + in DLQ + discarded, with no dead event outside the DLQ', async () => {
    const [row] = await query<Record<string, string>>('select * from wahook.accounting()');
    const n = (k: string) => Number(row![k]);
    expect(n('accepted')).toBeGreaterThan(10);
    expect(n('in_dlq')).toBeGreaterThan(0);
    expect(n('discarded')).toBeGreaterThan(0);
    expect(n('done') + n('pending') + n('processing') + n('retrying') + n('in_dlq') + n('discarded')).toBe(n('accepted'));
    expect(n('lost')).toBe(0);
    expect(n('dead_without_dlq')).toBe(0);
    // the identity detects a lost event
    await query(`delete from wahook.wa_events where id = (select min(id) from wahook.wa_events where state = 'done')`);
    const [after] = await query<Record<string, string>>('select lost from wahook.accounting()');
    expect(Number(after!.lost)).toBe(1);
  });
});
