// One prom-client Registry per process. Labels are bounded: never a phone number or message id.
import client from 'prom-client';

export function makeMetrics() {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'wahook_process_' });
  const webhookRequests = new client.Counter({
    name: 'wahook_webhook_requests_total',
    help: 'Webhook HTTP requests by method and outcome',
    labelNames: ['method', 'outcome'] as const,
    registers: [registry],
  });
  const notifications = new client.Counter({
    name: 'wahook_webhook_notifications_total',
    help: 'Notifications found in accepted webhooks: stored (new) or duplicate (already stored)',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const ingestBatchSize = new client.Histogram({
    name: 'wahook_ingest_batch_size',
    help: 'POST bodies committed together in one ingest transaction (group commit)',
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [registry],
  });
  const ingestPending = new client.Gauge({
    name: 'wahook_ingest_pending_bodies',
    help: 'POST bodies received and not yet committed: waiting for an ingest transaction or inside one',
    registers: [registry],
  });
  const ingestSeconds = new client.Histogram({
    name: 'wahook_ingest_duration_seconds',
    help: 'Time of one ingest transaction, from the call to the commit',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const eventsProcessed = new client.Counter({
    name: 'wahook_events_processed_total',
    help: 'Event attempts by kind and outcome: done, failed (will retry), waiting (no attempt spent), dead_lettered, skipped',
    labelNames: ['kind', 'outcome'] as const,
    registers: [registry],
  });
  const sends = new client.Counter({
    name: 'wahook_sends_total',
    help: 'Outbound send attempts by outcome: accepted, already_sent, waiting, breaker_open, or the Graph error class',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const breakersOpen = new client.Gauge({
    name: 'wahook_breakers_open',
    help: 'Circuit breakers of this worker process that are open or half-open (one per sending phone number)',
    registers: [registry],
  });
  return { registry, webhookRequests, notifications, ingestBatchSize, ingestPending, ingestSeconds, eventsProcessed, sends, breakersOpen };
}

export type Metrics = ReturnType<typeof makeMetrics>;
