// One opossum circuit breaker per sending phone number, created once per worker process. It fails fast locally
// (timeouts, error percentage over a rolling window); when it opens, it opens the shared breaker in Postgres
// (wahook.send_breakers) so every worker stops calling that number. Postgres stays the source of truth: a job
// that wahook.prepare_send lets through as the half-open probe closes the local breaker first.
import CircuitBreaker from 'opossum';
import type pg from 'pg';
import type { Logger } from '../log.ts';
import type { GraphApiClient, SendResult } from './client.ts';
import { GraphApiError } from './client.ts';

export interface BreakerOptions {
  timeoutMs: number;
  errorThresholdPercentage: number;
  volumeThreshold: number;
  resetTimeoutMs: number;
}

export type BreakerState = 'closed' | 'open' | 'half_open';

export class BreakerRegistry {
  private readonly breakers = new Map<string, CircuitBreaker<[unknown], SendResult>>();

  constructor(
    private readonly client: GraphApiClient,
    private readonly pool: pg.Pool,
    private readonly options: BreakerOptions,
    private readonly log: Logger,
    private readonly onStateChange?: (phoneNumberId: string, state: BreakerState) => void,
  ) {}

  get(phoneNumberId: string): CircuitBreaker<[unknown], SendResult> {
    let breaker = this.breakers.get(phoneNumberId);
    if (breaker) return breaker;
    breaker = new CircuitBreaker((request: unknown) => this.client.sendMessage(phoneNumberId, request), {
      timeout: this.options.timeoutMs,
      errorThresholdPercentage: this.options.errorThresholdPercentage,
      volumeThreshold: this.options.volumeThreshold,
      resetTimeout: this.options.resetTimeoutMs,
      // Only outages count: a 4xx (rate limit, bad request, permission) is an answer, not a failure of the number.
      errorFilter: (err: unknown) => err instanceof GraphApiError && err.httpStatus !== null && err.httpStatus < 500,
      name: `graph-api:${phoneNumberId}`,
    });
    breaker.on('open', () => {
      this.onStateChange?.(phoneNumberId, 'open');
      this.log.warn('circuit breaker opened', { phone_number_id: phoneNumberId });
      this.pool
        .query(`select wahook.open_breaker($1, pg_catalog.now() + $2::double precision * interval '1 millisecond', $3)`, [
          phoneNumberId, this.options.resetTimeoutMs, 'local breaker opened (error rate over threshold)'])
        .catch((err: Error) => this.log.error('could not share the open breaker', { phone_number_id: phoneNumberId, error: err }));
    });
    breaker.on('halfOpen', () => this.onStateChange?.(phoneNumberId, 'half_open'));
    breaker.on('close', () => {
      this.onStateChange?.(phoneNumberId, 'closed');
      this.log.info('circuit breaker closed', { phone_number_id: phoneNumberId });
    });
    this.breakers.set(phoneNumberId, breaker);
    return breaker;
  }

  shutdown(): void {
    for (const b of this.breakers.values()) b.shutdown();
    this.breakers.clear();
  }
}

/** opossum rejects without calling when its breaker is open (code EOPENBREAKER). */
export function isBreakerOpen(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === 'EOPENBREAKER';
}
