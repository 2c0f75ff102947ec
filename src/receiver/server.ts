// Runs the receiver: HTTP server, pool, group-commit batcher, and a shutdown that stops accepting, finishes the
// requests in flight (their rows commit before they are answered) and closes within a few seconds.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config.ts';
import { committedMigrations } from '../db/migrate.ts';
import { makePool } from '../db/pool.ts';
import type { Logger } from '../log.ts';
import { makeMetrics, type Metrics } from '../metrics/registry.ts';
import { makeApp, WEBHOOK_PATH } from './app.ts';
import { IngestBatcher } from './batcher.ts';

export interface RunningReceiver {
  url: string;
  webhookUrl: string;
  port: number;
  metrics: Metrics;
  close(): Promise<void>;
}

export async function startReceiver(
  config: Pick<Config, 'appSecrets' | 'verifyToken' | 'maxBodyBytes' | 'port' | 'host'> & { databaseUrl: string },
  log: Logger,
  options: { shutdownGraceMs?: number; poolSize?: number; metrics?: Metrics } = {},
): Promise<RunningReceiver> {
  const pool = makePool(config.databaseUrl, log, { max: options.poolSize ?? 4 });
  const metrics = options.metrics ?? makeMetrics();
  const batcher = new IngestBatcher(pool, metrics, {
    maxBatch: 64,
    maxBatchBytes: 16 * 1024 * 1024,
    maxInFlight: Math.max(1, (options.poolSize ?? 4) - 1),
  });
  let accepting = true;
  const app = makeApp({
    appSecrets: config.appSecrets,
    verifyToken: config.verifyToken,
    maxBodyBytes: config.maxBodyBytes,
    pool,
    batcher,
    metrics,
    log,
    requiredMigrations: committedMigrations(),
    isAccepting: () => accepting,
  });
  const server = http.createServer(app);
  server.keepAliveTimeout = 65_000; // longer than typical load balancer idle timeouts
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = config.host === '0.0.0.0' || config.host === '::' ? 'localhost' : config.host;
  const url = `http://${host}:${port}`;
  log.info('receiver listening', { url, webhook: url + WEBHOOK_PATH });

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      accepting = false;
      const grace = options.shutdownGraceMs ?? 10_000;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Keep-alive connections become idle once their request is answered: close them as they do.
      server.closeIdleConnections();
      const reaper = setInterval(() => server.closeIdleConnections(), 50);
      const timer = setTimeout(() => {
        log.warn('shutdown grace period over; closing remaining connections', { grace_ms: grace });
        server.closeAllConnections();
      }, grace);
      await closed;
      clearTimeout(timer);
      clearInterval(reaper);
      await batcher.drain();
      await pool.end();
      log.info('receiver stopped');
    })());
  return { url, webhookUrl: url + WEBHOOK_PATH, port, metrics, close };
}
