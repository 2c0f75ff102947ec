// Error classes a handler or task throws to say what should happen next. From plain JavaScript, set
// `wahookClass` ('transient' | 'permanent' | 'wait') on any Error instead; an unmarked error is transient.
//
//   transient  retry with exponential backoff and jitter until the attempt budget is spent, then the DLQ
//   permanent  the DLQ at once, no retries (a retry cannot help: bad data, a 4xx that will not change)
//   wait       run again later without spending an attempt (rate limit, open circuit breaker)

export type ErrorClass = 'transient' | 'permanent' | 'wait';

export interface WahookErrorFields {
  wahookClass?: ErrorClass;
  /** short machine-readable code, e.g. a Graph API error code; filterable in the DLQ */
  code?: string | number;
  /** for 'wait': how long, in milliseconds */
  retryAfterMs?: number;
}

export class TransientError extends Error {
  readonly wahookClass = 'transient' as const;
  constructor(message: string, public readonly code?: string | number, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TransientError';
  }
}

export class PermanentError extends Error {
  readonly wahookClass = 'permanent' as const;
  constructor(message: string, public readonly code?: string | number, options?: ErrorOptions) {
    super(message, options);
    this.name = 'PermanentError';
  }
}

export class RetryLaterError extends Error {
  readonly wahookClass = 'wait' as const;
  constructor(message: string, public readonly retryAfterMs: number, public readonly code?: string | number, options?: ErrorOptions) {
    super(message, options);
    this.name = 'RetryLaterError';
  }
}

export interface Classified {
  errorClass: ErrorClass;
  code: string | null;
  message: string;
  retryAfterMs: number | null;
}

const CLASSES: readonly string[] = ['transient', 'permanent', 'wait'];

export function classify(err: unknown): Classified {
  const e = (typeof err === 'object' && err !== null ? err : {}) as WahookErrorFields & { message?: unknown };
  const message = err instanceof Error ? err.message : typeof e.message === 'string' ? e.message : String(err);
  const errorClass = typeof e.wahookClass === 'string' && CLASSES.includes(e.wahookClass) ? e.wahookClass : 'transient';
  const code = typeof e.code === 'string' || typeof e.code === 'number' ? String(e.code) : null;
  const retryAfterMs =
    typeof e.retryAfterMs === 'number' && Number.isFinite(e.retryAfterMs) && e.retryAfterMs >= 0 ? e.retryAfterMs : null;
  return { errorClass, code, message: message || 'error without a message', retryAfterMs };
}
