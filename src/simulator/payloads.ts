// Builders of Meta-shaped webhook JSON, shared by the Graph API simulator (status webhooks) and the traffic
// generator (inbound messages). Serialised the way Meta does it (`metaJson`): non-ASCII as \uXXXX and `/` as `\/`,
// so a receiver that re-serialises instead of checking the raw bytes fails against the simulator as it would
// against Meta.

export const DEFAULT_WABA_ID = '200000000000002';
export const DEFAULT_DISPLAY_PHONE_NUMBER = '15550001111';
export const DEFAULT_PHONE_NUMBER_ID = '100000000000001';

export type DeliveryStatus = 'sent' | 'delivered' | 'read';

export interface StatusUpdate {
  wamid: string;
  status: DeliveryStatus;
  recipientId: string;
  /** epoch seconds */
  timestamp: number;
  bizOpaqueCallbackData?: string;
  /** the sent message's type: a template opens a paid conversation, a free-form reply a service one */
  messageType?: string;
}

export interface InboundContact {
  waId: string;
  name: string;
}

/** One entry of `value.messages`, already in Meta's shape (`from`, `id`, `timestamp`, `type`, …). */
export type InboundMessage = Record<string, unknown> & { from: string; id: string; timestamp: string; type: string };

/** JSON as Meta writes it: `\/` for `/` and `\uXXXX` for every non-ASCII UTF-16 unit. Both only occur inside
 * strings, so the replacements cannot touch the JSON structure. */
export function metaJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/\//g, '\\/')
    .replace(/[\u0080-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function envelope(phoneNumberId: string, value: Record<string, unknown>) {
  return {
    object: 'whatsapp_business_account',
    entry: [
      {
        id: DEFAULT_WABA_ID,
        changes: [
          {
            field: 'messages',
            value: {
              messaging_product: 'whatsapp',
              metadata: { display_phone_number: DEFAULT_DISPLAY_PHONE_NUMBER, phone_number_id: phoneNumberId },
              ...value,
            },
          },
        ],
      },
    ],
  };
}

/** A statuses webhook holding one status update, as Meta posts it after a send. */
export function statusWebhook(phoneNumberId: string, s: StatusUpdate): object {
  const template = s.messageType === 'template';
  const status: Record<string, unknown> = {
    id: s.wamid,
    status: s.status,
    timestamp: String(s.timestamp),
    recipient_id: s.recipientId,
  };
  if (s.status !== 'read') {
    status.pricing = template
      ? { billable: true, pricing_model: 'PMP', type: 'regular', category: 'utility' }
      : { billable: false, pricing_model: 'PMP', type: 'free_customer_service', category: 'service' };
  }
  if (s.bizOpaqueCallbackData !== undefined) status.biz_opaque_callback_data = s.bizOpaqueCallbackData;
  return envelope(phoneNumberId, { statuses: [status] });
}

/** A messages webhook: one change holding every message, with the contacts of their senders. */
export function messagesWebhook(phoneNumberId: string, contacts: InboundContact[], messages: InboundMessage[]): object {
  return envelope(phoneNumberId, {
    contacts: contacts.map((c) => ({ profile: { name: c.name }, wa_id: c.waId })),
    messages,
  });
}
