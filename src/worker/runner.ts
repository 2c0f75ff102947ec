// Runs graphile-worker with the tasks in tasks/ and the maintenance crontab.
import { Logger as WorkerLogger, run, type Runner, type TaskList } from 'graphile-worker';
import { makeProcessWaEvent } from '../../tasks/process_wa_event.ts';
import { makeWahookDlqProcess } from '../../tasks/wahook_dlq_process.ts';
import { makeWahookDlqRetry } from '../../tasks/wahook_dlq_retry.ts';
import { makeWahookMaintenance } from '../../tasks/wahook_maintenance.ts';
import { makeSendWhatsappMessage } from '../../tasks/send_whatsapp_message.ts';
import type { Config } from '../config.ts';
import { BreakerRegistry } from '../whatsapp/breakers.ts';
import { GraphApiClient } from '../whatsapp/client.ts';
import { makePool } from '../db/pool.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/registry.ts';
import { loadHandlers } from './handlers.ts';
import type { Handlers } from './types.ts';

export const CRONTAB = [
  // every 5 minutes: sweep crashed attempts, queue due DLQ retries
  '*/5 * * * * wahook_dlq_process',
  // daily at 03:17 UTC; backfill one day if the worker was down at that time
  '17 3 * * * wahook_maintenance ?fill=1d',
].join('\n');

export interface RunningWorker {
  runner: Runner;
  stop(): Promise<void>;
}

export type WorkerConfig = Pick<Config, 'handlersPath' | 'workerConcurrency'> &
  Partial<Pick<Config, 'accessToken' | 'apiBaseUrl' | 'send'>> & { databaseUrl: string };

export async function startWorker(
  config: WorkerConfig,
  log: Logger,
  options: {
    metrics?: Metrics;
    pollInterval?: number;
    handlers?: Handlers;
    /** graphile-worker stopped by itself (it gives up when it cannot record a job's end): the process should exit */
    onFatal?: (err: Error) => void;
  } = {},
): Promise<RunningWorker> {
  const handlers = options.handlers ?? (await loadHandlers(config.handlersPath));
  // Each of the `concurrency` job loops holds one connection during an attempt (and for a moment a second, while
  // graphile-worker marks the last job done and fetches the next); plus LISTEN, cron and breaker updates. When the
  // pool runs dry a request waits: up to 30 s here, not the 5 s that suit the receiver, because a timeout makes
  // graphile-worker fail to record a job's end. A database that is down still fails at once.
  const pool = makePool(config.databaseUrl, log, { max: config.workerConcurrency + 4, connectionTimeoutMillis: 30_000 });
  const breakerStates = new Map<string, string>();
  const breakers = config.accessToken
    ? new BreakerRegistry(
        new GraphApiClient({
          baseUrl: config.apiBaseUrl ?? 'https://graph.facebook.com/v21.0',
          accessToken: config.accessToken,
          timeoutMs: config.send?.timeoutMs ?? 10_000,
        }),
        pool,
        config.send ?? { timeoutMs: 10_000, errorThresholdPercentage: 50, volumeThreshold: 5, resetTimeoutMs: 30_000 },
        log.child('breaker'),
        (phone, state) => {
          breakerStates.set(phone, state);
          options.metrics?.breakersOpen.set([...breakerStates.values()].filter((s) => s !== 'closed').length);
        },
      )
    : null;
  if (!breakers) log.warn('WHATSAPP_ACCESS_TOKEN is not set: outbound messages are queued but not sent until it is');
  const taskList: TaskList = {
    send_whatsapp_message: makeSendWhatsappMessage({ breakers, log: log.child('send'), metrics: options.metrics }),
    process_wa_event: makeProcessWaEvent({ handlers, log: log.child('event'), metrics: options.metrics }),
    wahook_maintenance: makeWahookMaintenance({ log: log.child('maintenance') }),
    wahook_dlq_process: makeWahookDlqProcess({ log: log.child('dlq') }),
    wahook_dlq_retry: makeWahookDlqRetry({ log: log.child('dlq') }),
  };
  const runner = await run({
    pgPool: pool,
    taskList,
    crontab: CRONTAB,
    concurrency: config.workerConcurrency,
    noHandleSignals: true,
    logger: workerLogger(log.child('graphile-worker')),
    pollInterval: options.pollInterval ?? 2000,
  });
  log.info('worker started', {
    concurrency: config.workerConcurrency,
    handlers: options.handlers ? 'given' : (config.handlersPath ?? 'built-in example'),
  });
  let stopping: Promise<void> | undefined;
  let ended = false;
  runner.promise.then(
    () => {
      ended = true;
      if (!stopping) options.onFatal?.(new Error('graphile-worker stopped unexpectedly'));
    },
    (err: unknown) => {
      ended = true;
      log.error('graphile-worker stopped on a fatal error', { error: err as Error });
      if (!stopping) options.onFatal?.(err as Error);
    },
  );
  return {
    runner,
    stop: () =>
      (stopping ??= (async () => {
        if (!ended) await runner.stop(); // a runner that stopped by itself refuses a second stop
        breakers?.shutdown();
        // graphile-worker 0.17 does not wait for its last "job complete" statements: let them finish first
        const deadline = Date.now() + 5000;
        while ((pool.waitingCount > 0 || pool.idleCount < pool.totalCount) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 20));
        }
        await pool.end();
        log.info('worker stopped');
      })()),
  };
}

/** graphile-worker's own messages, through our logger (and its level). */
function workerLogger(log: Logger): WorkerLogger {
  return new WorkerLogger(() => (level, message) => {
    if (level === 'error') log.error(message);
    else if (level === 'warning') log.warn(message);
    else if (level === 'info') log.info(message);
    else log.debug(message);
  });
}
