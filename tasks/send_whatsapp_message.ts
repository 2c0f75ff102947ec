// Task send_whatsapp_message: send one outbox row (payload {id}) to the Graph API.
// 1. wahook.prepare_send decides: send now, be the breaker's half-open probe, wait (breaker open, paused,
//    pacing, reconciling an unknown outcome: no attempt spent), or nothing to do (already accepted);
//    it records the attempt before the call.
// 2. the call goes through this number's opossum breaker;
// 3. success: wahook.record_send_success stores the wamid; failure: wahook.record_send_failure classifies the
//    Graph error, pauses or opens the breaker, and the job retries, waits, or goes to the DLQ.
import type { JobHelpers, Task } from 'graphile-worker';
import { PermanentError, RetryLaterError, TransientError } from '../src/errors.ts';
import type { Logger } from '../src/log.ts';
import type { Metrics } from '../src/metrics/registry.ts';
import { isBreakerOpen, type BreakerRegistry } from '../src/whatsapp/breakers.ts';
import { GraphApiError } from '../src/whatsapp/client.ts';
import { runAttempt } from '../src/worker/jobs.ts';

export function assertSendPayload(payload: unknown): asserts payload is { id: number | string } {
  const p = payload as { id?: unknown } | null;
  if (typeof p !== 'object' || p === null || !(typeof p.id === 'number' || (typeof p.id === 'string' && /^\d+$/.test(p.id)))) {
    throw new Error(`send_whatsapp_message: payload must be {id}, got ${JSON.stringify(payload)}`);
  }
}

interface Prepared {
  decision: 'send' | 'probe' | 'done' | 'wait' | 'gone';
  wait_until: Date | null;
  reason: string | null;
  request: unknown;
  phone_number_id: string | null;
  slot_at: Date | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function makeSendWhatsappMessage(deps: {
  breakers: BreakerRegistry | null;
  log: Logger;
  metrics?: Metrics;
}): Task {
  return async (payload: unknown, helpers: JobHelpers) => {
    assertSendPayload(payload);
    const id = String(payload.id);
    await runAttempt(helpers, deps.log, async (client) => {
      if (!deps.breakers) {
        throw new RetryLaterError('WHATSAPP_ACCESS_TOKEN is not set: sending is paused', 5 * 60_000, 'NO_ACCESS_TOKEN');
      }
      const prep = (await client.query<Prepared>('select * from wahook.prepare_send($1::bigint, $2)', [id, `job:${helpers.job.id}`])).rows[0]!;
      if (prep.decision === 'gone' || prep.decision === 'done') {
        deps.metrics?.sends.inc({ outcome: prep.decision === 'done' ? 'already_sent' : 'gone' });
        return;
      }
      if (prep.decision === 'wait') {
        deps.metrics?.sends.inc({ outcome: 'waiting' });
        throw new RetryLaterError(`not sending yet: ${prep.reason}`, Math.max(50, prep.wait_until!.getTime() - Date.now()), 'SEND_WAIT');
      }
      const phone = prep.phone_number_id!;
      const probe = prep.decision === 'probe';
      if (prep.slot_at && prep.slot_at.getTime() > Date.now()) await sleep(prep.slot_at.getTime() - Date.now());
      const breaker = deps.breakers.get(phone);
      if (probe && !breaker.closed) breaker.close(); // Postgres chose this job as the probe
      try {
        const result = await breaker.fire(prep.request);
        await client.query('select wahook.record_send_success($1::bigint, $2)', [id, result.wamid]);
        deps.metrics?.sends.inc({ outcome: 'accepted' });
        deps.log.info('message accepted by the Graph API', { outbox_id: id, wamid: result.wamid, probe });
      } catch (err) {
        if (isBreakerOpen(err)) {
          // no call was made: not an attempt, and nothing to reconcile
          await client.query('select wahook.send_not_attempted($1::bigint)', [id]);
          deps.metrics?.sends.inc({ outcome: 'breaker_open' });
          throw new RetryLaterError('circuit breaker open', 1000, 'BREAKER_OPEN');
        }
        const g = err instanceof GraphApiError ? err : null;
        const message = err instanceof Error ? err.message : String(err);
        const f = (await client.query<{ graph_class: string; error_class: 'transient' | 'permanent' | 'wait'; wait_until: Date | null; alert: boolean }>(
          'select * from wahook.record_send_failure($1::bigint, $2, $3, $4, $5, $6)',
          [id, g?.httpStatus ?? null, g?.graphCode ?? null, message, g?.retryAfterSeconds ?? null, probe],
        )).rows[0]!;
        deps.metrics?.sends.inc({ outcome: f.graph_class });
        const code = g?.graphCode ?? (g?.httpStatus ? `HTTP_${g.httpStatus}` : 'NETWORK');
        if (f.alert) {
          deps.log.error('the Graph API refuses this phone number: a person must act', { phone_number_id: phone, class: f.graph_class, code, error: message });
        }
        if (f.error_class === 'wait') throw new RetryLaterError(message, Math.max(50, f.wait_until!.getTime() - Date.now()), code, { cause: err });
        if (f.error_class === 'permanent') throw new PermanentError(message, code, { cause: err });
        throw new TransientError(message, code, { cause: err });
      }
    }, { outbox_id: id });
  };
}
