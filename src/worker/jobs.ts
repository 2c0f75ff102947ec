// Runs one attempt of a wahook job and records its failure in the database, where the decision is made
// (wahook.job_failed: retry with backoff, wait, or the DLQ). The attempt holds a session advisory lock on the job
// for its whole duration, on the connection it uses: if the worker dies, the connection closes, the lock goes,
// and the sweeper (wahook.sweep) knows the attempt crashed.
import type { JobHelpers } from 'graphile-worker';
import type { PoolClient } from 'pg';
import { classify, type Classified } from '../errors.ts';
import type { Logger } from '../log.ts';

export interface FailureOutcome {
  outcome: 'retry' | 'wait' | 'dead_lettered' | 'dlq_retry_failed' | 'dlq_exhausted' | 'gone' | 'finished';
  next_run_at: Date | null;
  dlq_id: string | null;
}

export async function recordFailure(client: PoolClient, jobId: string, c: Classified): Promise<FailureOutcome> {
  const r = await client.query<FailureOutcome>(
    `select outcome, next_run_at, dlq_id
       from wahook.job_failed($1::bigint, $2, $3, $4, $5::double precision * interval '1 millisecond')`,
    [jobId, c.errorClass, c.message, c.code, c.retryAfterMs],
  );
  return r.rows[0]!;
}

/**
 * Run fn for the current job. A thrown error is classified and recorded; the job is then requeued or
 * dead-lettered by the database, and this returns the outcome (null when fn succeeded or the job was not ours)
 * normally: graphile-worker has nothing left to do.
 * If recording fails too (the database went away), the original error is rethrown and graphile-worker's own
 * retry takes over; the sweeper moves the job to the DLQ if it runs out of attempts that way.
 */
export async function runAttempt(
  helpers: JobHelpers,
  log: Logger,
  fn: (client: PoolClient) => Promise<void>,
  describe: Record<string, unknown> = {},
): Promise<FailureOutcome | null> {
  const jobId = String(helpers.job.id);
  return helpers.withPgClient(async (client): Promise<FailureOutcome | null> => {
    const begun = await client.query<{ mine: boolean }>('select wahook.begin_attempt($1::bigint) as mine', [jobId]);
    try {
      // The sweeper may have taken this job for a crashed one before we got the lock: then it is not ours to run.
      if (!begun.rows[0]!.mine) {
        log.warn('job was moved by the sweeper before it started; skipping', { job: jobId, ...describe });
        return null;
      }
      await fn(client);
      return null;
    } catch (err) {
      await client.query('rollback').catch(() => undefined);
      const c = classify(err);
      let outcome: FailureOutcome;
      try {
        outcome = await recordFailure(client, jobId, c);
      } catch (recordErr) {
        log.error('could not record a failed attempt; graphile-worker will retry it', {
          job: jobId, error: c.message, record_error: recordErr as Error,
        });
        throw err;
      }
      const fields = {
        ...describe,
        job: jobId,
        task: helpers.job.task_identifier,
        attempt: helpers.job.attempts,
        max_attempts: helpers.job.max_attempts,
        class: c.errorClass,
        code: c.code ?? undefined,
        error: c.message,
        outcome: outcome.outcome,
        next_run_at: outcome.next_run_at?.toISOString(),
        dlq_id: outcome.dlq_id ?? undefined,
      };
      if (outcome.outcome === 'wait') log.info('attempt deferred', fields); // not a failure: rate limit, breaker, order
      else if (outcome.outcome === 'retry') log.warn('attempt failed', fields);
      else log.error('attempt failed; in the dead-letter queue', fields);
      return outcome;
    } finally {
      await client.query('select wahook.end_attempt($1::bigint)', [jobId]).catch(() => undefined);
    }
  });
}
