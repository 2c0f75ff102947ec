// An in-process worker whose handlers each test swaps, plus helpers to drive and watch it.
import pg from 'pg';
import { sign } from '../../src/receiver/signature.ts';
import { startWorker, type RunningWorker, type WorkerConfig } from '../../src/worker/runner.ts';
import type { Handlers } from '../../src/worker/types.ts';
import type { Metrics } from '../../src/metrics/registry.ts';
import { waitFor } from './db.ts';
import { FIXTURE_SECRET } from './fixtures.ts';
import { post, quietLogger } from './receiver.ts';

export interface TestWorker {
  worker: RunningWorker;
  /** the handlers the worker runs now; assign to change behaviour */
  behaviour: Handlers;
}

export async function startTestWorker(databaseUrl: string, extra: Partial<WorkerConfig> = {}, metrics?: Metrics): Promise<TestWorker> {
  const tw = { behaviour: {} as Handlers } as TestWorker;
  const handlers: Handlers = {
    message: (e, c) => tw.behaviour.message?.(e, c),
    status: (e, c) => tw.behaviour.status?.(e, c),
    error: (e, c) => tw.behaviour.error?.(e, c),
    other: (e, c) => tw.behaviour.other?.(e, c),
  };
  tw.worker = await startWorker({ databaseUrl, handlersPath: undefined, workerConcurrency: 4, ...extra }, quietLogger('worker'), {
    handlers,
    pollInterval: 200,
    metrics,
  });
  return tw;
}

/**
 * The state a worker leaves when it dies (or loses the database) after its attempt committed but before
 * graphile-worker deleted the job row: the job, still locked by a worker that no longer exists. Added and locked
 * in one transaction, so no live worker can take it first. Returns the job id.
 */
export async function plantOrphanedJob(pool: pg.Pool, task: string, payload: Record<string, unknown>): Promise<string> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    const job = await client.query<{ id: string }>('select id from graphile_worker.add_job($1, $2::json)', [task, JSON.stringify(payload)]);
    await client.query(`update graphile_worker._private_jobs set attempts = 1, locked_by = 'a-worker-that-died', locked_at = now() - interval '10 minutes'
                         where id = $1`, [job.rows[0]!.id]);
    await client.query('commit');
    return job.rows[0]!.id;
  } catch (err) {
    await client.query('rollback');
    throw err;
  } finally {
    client.release();
  }
}

/** Wait until no event is pending, processing or retrying. */
export async function settled(pool: pg.Pool, timeoutMs = 30_000): Promise<void> {
  const open = () =>
    pool.query(`select id, kind, wamid, state, attempts, next_attempt_at, last_error from wahook.wa_events
                 where state in ('pending', 'processing', 'retrying') order by id`);
  try {
    await waitFor(async () => (await open()).rows.length === 0, timeoutMs, 'events to settle');
  } catch (err) {
    const jobs = await pool.query(`select id, task_identifier, queue_name, run_at, attempts, max_attempts, locked_at, last_error
                                     from graphile_worker.jobs order by id`);
    throw new Error(`${(err as Error).message}\nopen events: ${JSON.stringify((await open()).rows)}\njobs: ${JSON.stringify(jobs.rows)}`);
  }
}

/** A Meta-shaped webhook body with one messages change. */
export function webhook(value: Record<string, unknown>): Buffer {
  return Buffer.from(JSON.stringify({
    object: 'whatsapp_business_account',
    entry: [{ id: '200000000000002', changes: [{ field: 'messages', value: { messaging_product: 'whatsapp', metadata: { phone_number_id: '100000000000001' }, ...value } }] }],
  }));
}

export function textMessage(wamid: string, ts: number, from = '447700900999') {
  return { from, id: wamid, timestamp: String(ts), type: 'text', text: { body: wamid } };
}

export async function sendSigned(webhookUrl: string, body: Buffer): Promise<void> {
  const res = await post(webhookUrl, body, sign(body, FIXTURE_SECRET));
  if (res.status !== 200) throw new Error(`receiver answered ${res.status}`);
}
