// Task process_wa_event: one notification. Payload {id, at} names a wahook.wa_events row (plus dlq_id when the
// job is an automatic retry of a DLQ entry).
// 1. claim it (visible as 'processing', attempts + 1; a done event is skipped, so a redelivered job is harmless);
//    an inbound message whose conversation has an unfinished earlier message waits (no attempt spent);
// 2. in one transaction: the built-in effect (wahook.apply_event), the user's handler, mark done;
// 3. a thrown error is classified and recorded by runAttempt: retry with backoff, wait, or the DLQ.
import type { JobHelpers, Task } from 'graphile-worker';
import { PermanentError, RetryLaterError } from '../src/errors.ts';
import type { Logger } from '../src/log.ts';
import type { Metrics } from '../src/metrics/registry.ts';
import { runAttempt } from '../src/worker/jobs.ts';
import type { Handlers, OutboundMessage, WaEvent } from '../src/worker/types.ts';

export interface ProcessWaEventPayload {
  id: string | number;
  at: string;
  dlq_id?: string | number;
}

export function assertProcessWaEventPayload(payload: unknown): asserts payload is ProcessWaEventPayload {
  const p = payload as Partial<ProcessWaEventPayload> | null;
  const isId = (v: unknown) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));
  if (
    typeof p !== 'object' || p === null || !isId(p.id) ||
    typeof p.at !== 'string' || Number.isNaN(Date.parse(p.at)) ||
    (p.dlq_id !== undefined && !isId(p.dlq_id))
  ) {
    throw new Error(`process_wa_event: payload must be {id, at, dlq_id?}, got ${JSON.stringify(payload)}`);
  }
}

interface ClaimedRow {
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
  /** set when an earlier message of the conversation is unfinished */
  wait_until: Date | null;
}

export function makeProcessWaEvent(deps: { handlers: Handlers; log: Logger; metrics?: Metrics }): Task {
  return async (payload: unknown, helpers: JobHelpers) => {
    assertProcessWaEventPayload(payload);
    const { id, at } = payload;
    const dlqId = payload.dlq_id === undefined ? null : String(payload.dlq_id);
    let kind = 'unknown';
    const failed = await runAttempt(helpers, deps.log, async (client) => {
      const claimed = await client.query<ClaimedRow>('select * from wahook.claim_event($1::bigint, $2::timestamptz)', [id, at]);
      const row = claimed.rows[0];
      if (!row) {
        deps.metrics?.eventsProcessed.inc({ kind, outcome: 'skipped' });
        deps.log.info('event already done or gone; nothing to do', { event: String(id) });
        return;
      }
      kind = row.kind;
      const until = row.wait_until;
      if (until) {
        throw new RetryLaterError('waiting for an earlier message of this conversation', Math.max(100, until.getTime() - Date.now()), 'CONVERSATION_ORDER');
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
      const started = performance.now();
      const handler = deps.handlers[event.kind];
      await client.query('begin');
      await client.query('select wahook.apply_event($1::bigint, $2::timestamptz)', [id, at]);
      if (handler) {
        const send = async (to: string, message: OutboundMessage, options: { phoneNumberId?: string } = {}) => {
          const phoneNumberId = options.phoneNumberId ?? event.phoneNumberId;
          const r = await client.query<{ id: string }>(
            'select wahook.enqueue_message($1, $2, $3::jsonb, $4::bigint) as id',
            [phoneNumberId, to, JSON.stringify(message), event.id],
          );
          return r.rows[0]!.id;
        };
        await handler(event, {
          db: client,
          log: deps.log.child(event.kind),
          maxAttempts: helpers.job.max_attempts,
          send,
          reply: (message) => {
            if (!event.waId) throw new PermanentError(`event ${event.id} (${event.kind}) has no customer to reply to`, 'NO_RECIPIENT');
            return send(event.waId, message);
          },
        });
      }
      await client.query('select wahook.complete_event($1::bigint, $2::timestamptz)', [id, at]);
      if (dlqId !== null) {
        await client.query('select wahook.dlq_resolve($1::bigint, $2)', [dlqId, performance.now() - started]);
      }
      await client.query('commit');
      deps.metrics?.eventsProcessed.inc({ kind: event.kind, outcome: 'done' });
    }, { event: String(id), dlq_id: dlqId ?? undefined }).catch((err: unknown) => {
      deps.metrics?.eventsProcessed.inc({ kind, outcome: 'failed' });
      throw err;
    });
    if (failed) {
      const outcome = failed.outcome === 'wait' ? 'waiting' : failed.outcome === 'retry' ? 'failed' : 'dead_lettered';
      deps.metrics?.eventsProcessed.inc({ kind, outcome });
    }
  };
}
