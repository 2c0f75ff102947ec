// Task wahook_dlq_retry: the exact-time retry of one DLQ entry (payload {dlq_id}), scheduled when the entry was
// created or its previous retry failed. Does nothing if the entry was replayed, discarded or already retried.
import type { JobHelpers, Task } from 'graphile-worker';
import type { Logger } from '../src/log.ts';

export function assertDlqRetryPayload(payload: unknown): asserts payload is { dlq_id: number | string } {
  const p = payload as { dlq_id?: unknown } | null;
  if (typeof p !== 'object' || p === null || !(typeof p.dlq_id === 'number' || (typeof p.dlq_id === 'string' && /^\d+$/.test(p.dlq_id)))) {
    throw new Error(`wahook_dlq_retry: payload must be {dlq_id}, got ${JSON.stringify(payload)}`);
  }
}

export function makeWahookDlqRetry(deps: { log: Logger }): Task {
  return async (payload: unknown, helpers: JobHelpers) => {
    assertDlqRetryPayload(payload);
    const r = await helpers.withPgClient((client) =>
      client.query<{ job: string | null }>('select wahook.dlq_enqueue_retry($1::bigint) as job', [payload.dlq_id]),
    );
    const job = r.rows[0]?.job;
    if (job) deps.log.info('DLQ entry queued for retry', { dlq_id: String(payload.dlq_id), job });
  };
}
