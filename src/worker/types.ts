// The handler API: what an operator's WAHOOK_HANDLERS module exports and what each handler receives.
import type { PoolClient } from 'pg';
import type { Logger } from '../log.ts';

export type EventKind = 'message' | 'status' | 'error' | 'other';

/** One notification from a webhook, as stored in wahook.wa_events. */
export interface WaEvent<P = Record<string, unknown>> {
  /** wahook.wa_events.id (bigint, as a string) */
  id: string;
  receivedAt: Date;
  kind: EventKind;
  /** the change's field: "messages", "message_template_status_update", … */
  field: string;
  wabaId: string | null;
  phoneNumberId: string | null;
  /** the customer: message.from or status.recipient_id */
  waId: string | null;
  wamid: string | null;
  /** Meta's timestamp of the notification */
  metaTs: Date | null;
  /** the notification itself: the message, the status, the error, or the whole change for other fields */
  payload: P;
  /** the value.contacts entry of the sender (messages only) */
  contact: { profile?: { name?: string }; wa_id?: string } | null;
  /** 1 on the first attempt */
  attempt: number;
}

export interface HandlerContext {
  /**
   * A client inside the event's processing transaction: what you write here commits together with the event
   * being marked done, or rolls back with it when the handler throws.
   */
  db: PoolClient;
  log: Logger;
  maxAttempts: number;
  /**
   * Queue a WhatsApp message in this transaction (the outbox): it is sent after the commit, through the circuit
   * breaker, never twice once accepted. `message` is the Graph API message without `to`, e.g.
   * `{ type: 'text', text: { body: 'Hi' } }`. Returns the outbox id (wahook.whatsapp_messages.id).
   */
  send(to: string, message: OutboundMessage, options?: { phoneNumberId?: string }): Promise<string>;
  /** `send` to the customer of this event, from the phone number that received it. */
  reply(message: OutboundMessage): Promise<string>;
}

/** A Graph API message body without messaging_product and to: {type: 'text', text: {body}} and the like. */
export type OutboundMessage = { type: string } & Record<string, unknown>;

export type Handler = (event: WaEvent, ctx: HandlerContext) => void | Promise<void>;

/** Export any of these (named, or as the default export's properties). A handler that throws makes the job retry. */
export interface Handlers {
  message?: Handler;
  status?: Handler;
  error?: Handler;
  other?: Handler;
}
