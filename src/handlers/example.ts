// The built-in example handlers, used when WAHOOK_HANDLERS is unset: they log what arrives.
// Copy this file to start your own (see README, "Add a handler").
import type { Handlers } from '../worker/types.ts';

export const exampleHandlers: Handlers = {
  async message(event, { log }) {
    const p = event.payload as { type?: string; text?: { body?: string } };
    log.info('inbound message', {
      event: event.id,
      from: event.waId,
      name: event.contact?.profile?.name,
      type: p.type,
      text: p.text?.body,
    });
  },
  async status(event, { log }) {
    log.info('status', { event: event.id, wamid: event.wamid, status: (event.payload as { status?: string }).status });
  },
  async error(event, { log }) {
    log.warn('WhatsApp reported an error', { event: event.id, code: (event.payload as { code?: number }).code });
  },
  async other(event, { log }) {
    log.info('account notification', { event: event.id, field: event.field });
  },
};
