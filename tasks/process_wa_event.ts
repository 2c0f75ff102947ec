// Task process_wa_event: one notification. Payload {id, at} names a wahook.wa_events row.
// 1. claim it (visible as 'processing', attempts + 1; a done event is skipped, so a redelivered job is harmless);
// 2. in one transaction: the built-in effect (wahook.apply_event), the user's handler, mark done;
// 3. on error: roll back, record the error ('retrying') and throw, so graphile-worker retries with backoff.
import type { JobHelpers, Task } from 'graphile-worker';
import type { Logger } from '../src/log.ts';
import type { Metrics } from '../src/metrics/registry.ts';
import type { Handlers, WaEvent } from '../src/worker/types.ts';

export interface ProcessWaEventPayload {
  id: string | number;
  at: string;
}

export function assertProcessWaEventPayload(payload: unknown): asserts payload is ProcessWaEventPayload {
  const p = payload as Partial<ProcessWaEventPayload> | null;
  if (
    typeof p !== 'object' || p === null ||
    !(typeof p.id === 'number' || (typeof p.id === 'string' && /^\d+$/.test(p.id))) ||
    typeof p.at !== 'string' || Number.isNaN(Date.parse(p.at))
  ) {
    throw new Error(`process_wa_event: payload must be {id, at}, got ${JSON.stringify(payload)}`);
  }
}

interface EventRow {
  id: string;
  received_at: Date;
  kind: WaEvent['kind'];
  field: string;
  waba_id: string | null;
  phone_number_id: string | null;
  wa_id: string | null;
  wamid: string | null;
  meta_ts: Date | null;
  payload: Record<string, unknown>;
  contact: WaEvent['contact'];
  attempts: number;
}

export function makeProcessWaEvent(deps: { handlers: Handlers; log: Logger; metrics?: Metrics }): Task {
  return async (payload: unknown, helpers: JobHelpers) => {
    assertProcessWaEventPayload(payload);
    const { id, at } = payload;
    await helpers.withPgClient(async (client) => {
      const claimed = await client.query<EventRow>('select * from wahook.claim_event($1::bigint, $2::timestamptz)', [id, at]);
      const row = claimed.rows[0];
      if (!row) {
        deps.metrics?.eventsProcessed.inc({ kind: 'unknown', outcome: 'skipped' });
        deps.log.info('event already done or gone; nothing to do', { event: String(id) });
        return;
      }
      const event: WaEvent = {
        id: row.id,
        receivedAt: row.received_at,
        kind: row.kind,
        field: row.field,
        wabaId: row.waba_id,
        phoneNumberId: row.phone_number_id,
        waId: row.wa_id,
        wamid: row.wamid,
        metaTs: row.meta_ts,
        payload: row.payload,
        contact: row.contact,
        attempt: row.attempts,
      };
      const handler = deps.handlers[event.kind];
      try {
        await client.query('begin');
        await client.query('select wahook.apply_event($1::bigint, $2::timestamptz)', [id, at]);
        if (handler) {
          await handler(event, { db: client, log: deps.log.child(event.kind), maxAttempts: helpers.job.max_attempts });
        }
        await client.query('select wahook.complete_event($1::bigint, $2::timestamptz)', [id, at]);
        await client.query('commit');
        deps.metrics?.eventsProcessed.inc({ kind: event.kind, outcome: 'done' });
      } catch (err) {
        await client.query('rollback').catch(() => undefined);
        const message = err instanceof Error ? err.message : String(err);
        await client
          .query('select wahook.fail_event($1::bigint, $2::timestamptz, $3)', [id, at, message])
          .catch((e: Error) => deps.log.error('could not record event failure', { event: event.id, error: e }));
        deps.metrics?.eventsProcessed.inc({ kind: event.kind, outcome: 'failed' });
        deps.log.warn('event failed; will retry', {
          event: event.id,
          kind: event.kind,
          attempt: helpers.job.attempts,
          max_attempts: helpers.job.max_attempts,
          error: message,
        });
        throw err;
      }
    });
  };
}
