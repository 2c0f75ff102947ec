// The handlers `wahook start` runs when WAHOOK_HANDLERS is unset: log everything, and answer each text message
// with an echo, so a new user sees the whole round trip (inbound webhook → handler → outbox → Graph API
// simulator → status webhooks → delivery state). Only for development: `wahook worker` never echoes by default.
import type { Handlers } from '../worker/types.ts';
import { exampleHandlers } from './example.ts';

export const echoHandlers: Handlers = {
  ...exampleHandlers,
  async message(event, ctx) {
    await exampleHandlers.message!(event, ctx);
    const p = event.payload as { type?: string; text?: { body?: string } };
    if (p.type === 'text' && typeof p.text?.body === 'string') {
      const id = await ctx.reply({ type: 'text', text: { body: `You said: ${p.text.body}` } });
      ctx.log.info('echo queued', { outbox_id: id, to: event.waId });
    }
  },
};
