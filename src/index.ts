// What a handlers module may import from wahook (types only, plus the logger shape).
export type { EventKind, Handler, HandlerContext, Handlers, WaEvent } from './worker/types.ts';
export type { Logger } from './log.ts';
