// What a handlers module may import from wahook (types only, plus the logger shape).
export type { EventKind, Handler, HandlerContext, Handlers, OutboundMessage, WaEvent } from './worker/types.ts';
export type { Logger } from './log.ts';
export { PermanentError, RetryLaterError, TransientError } from './errors.ts';
export type { ErrorClass, WahookErrorFields } from './errors.ts';
