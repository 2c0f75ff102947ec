// The receiver: a thin Express app built from small install steps. It verifies, stores and answers;
// everything else happens in Postgres and the worker.
import express, { type ErrorRequestHandler, type Express, type Request, type Response } from 'express';
import type pg from 'pg';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/registry.ts';
import type { IngestBatcher } from './batcher.ts';
import { verifySignature } from './signature.ts';

export interface ReceiverDeps {
  appSecrets: readonly string[];
  verifyToken: string;
  maxBodyBytes: number;
  pool: pg.Pool;
  batcher: IngestBatcher;
  metrics: Metrics;
  log: Logger;
  /** hashes of the committed migrations the database must have applied to be ready */
  requiredMigrations: readonly string[];
  /** false once shutdown began: /readyz then answers 503 so load balancers stop sending */
  isAccepting(): boolean;
}

export const WEBHOOK_PATH = '/webhooks/whatsapp';

export function makeApp(deps: ReceiverDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple'); // hub.mode etc. stay flat keys
  installHealth(app, deps);
  installMetrics(app, deps);
  installHandshake(app, deps);
  installWebhook(app, deps);
  installErrorHandler(app, deps);
  return app;
}

function installHealth(app: Express, deps: ReceiverDeps): void {
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    if (!deps.isAccepting()) {
      res.status(503).json({ status: 'shutting_down' });
      return;
    }
    try {
      const r = await deps.pool.query<{ applied: number }>('select wahook.schema_ready($1::text[]) as applied', [
        deps.requiredMigrations,
      ]);
      const applied = r.rows[0]?.applied ?? 0;
      if (applied < deps.requiredMigrations.length) {
        res.status(503).json({ status: 'migrations_pending', applied, required: deps.requiredMigrations.length });
        return;
      }
      res.json({ status: 'ready' });
    } catch (err) {
      deps.log.warn('readiness check failed', { error: err as Error });
      res.status(503).json({ status: 'database_unavailable' });
    }
  });
}

function installMetrics(app: Express, deps: ReceiverDeps): void {
  app.get('/metrics', async (_req, res) => {
    res.set('Content-Type', deps.metrics.registry.contentType);
    res.send(await deps.metrics.registry.metrics());
  });
}

function installHandshake(app: Express, deps: ReceiverDeps): void {
  app.get(WEBHOOK_PATH, (req: Request, res: Response) => {
    const q = req.query as Record<string, unknown>;
    const mode = q['hub.mode'];
    const token = q['hub.verify_token'];
    const challenge = q['hub.challenge'];
    if (mode === 'subscribe' && typeof token === 'string' && token === deps.verifyToken && typeof challenge === 'string') {
      deps.metrics.webhookRequests.inc({ method: 'GET', outcome: 'handshake_ok' });
      res.status(200).type('text/plain').send(challenge);
      return;
    }
    deps.metrics.webhookRequests.inc({ method: 'GET', outcome: 'handshake_forbidden' });
    deps.log.warn('webhook handshake refused', { mode: typeof mode === 'string' ? mode : undefined });
    res.status(403).type('text/plain').send('Forbidden');
  });
}

function installWebhook(app: Express, deps: ReceiverDeps): void {
  // Raw bytes only on this route: the signature is over the exact body, and any content type is accepted.
  const raw = express.raw({ type: () => true, limit: deps.maxBodyBytes });
  app.post(WEBHOOK_PATH, raw, async (req: Request, res: Response) => {
    const body: Buffer = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const check = verifySignature(body, req.get('x-hub-signature-256'), deps.appSecrets);
    if (!check.ok) {
      const outcome = check.reason === 'missing' ? 'missing_signature' : 'invalid_signature';
      deps.metrics.webhookRequests.inc({ method: 'POST', outcome });
      deps.log.warn('webhook refused: signature ' + check.reason, { bytes: body.length, ip: req.ip });
      res.status(401).json({ error: `signature ${check.reason}` });
      return;
    }
    try {
      const result = await deps.batcher.submit({ body, keyIndex: check.keyIndex, fingerprint: check.fingerprint });
      deps.metrics.webhookRequests.inc({ method: 'POST', outcome: 'accepted' });
      deps.metrics.notifications.inc({ result: 'stored' }, result.notifications - result.duplicates);
      deps.metrics.notifications.inc({ result: 'duplicate' }, result.duplicates);
      if (result.parseStatus !== 'ok') {
        deps.log.warn('stored a webhook that could not be fanned out', { log_id: result.logId, parse_status: result.parseStatus });
      }
      res.status(200).json({
        received: true,
        log_id: result.logId,
        parse_status: result.parseStatus,
        notifications: result.notifications,
        duplicates: result.duplicates,
      });
    } catch (err) {
      // Not stored: never 200. Meta retries for up to 7 days.
      deps.metrics.webhookRequests.inc({ method: 'POST', outcome: 'unavailable' });
      deps.log.error('could not store webhook; answering 503', { error: err as Error, bytes: body.length });
      res.status(503).set('Retry-After', '30').json({ error: 'storage unavailable, retry later' });
    }
  });
}

function installErrorHandler(app: Express, deps: ReceiverDeps): void {
  const handler: ErrorRequestHandler = (err, req, res, _next) => {
    const e = err as { type?: string; status?: number; statusCode?: number };
    const status = e.status ?? e.statusCode ?? 500;
    if (e.type === 'entity.too.large') {
      deps.metrics.webhookRequests.inc({ method: req.method, outcome: 'too_large' });
      deps.log.warn('webhook refused: body too large', { limit: deps.maxBodyBytes });
      res.status(413).json({ error: `body larger than ${deps.maxBodyBytes} bytes` });
      return;
    }
    if (status >= 400 && status < 500) {
      res.status(status).json({ error: 'bad request' });
      return;
    }
    deps.log.error('request failed', { path: req.path, error: err as Error });
    res.status(500).json({ error: 'internal error' });
  };
  app.use(handler);
}
