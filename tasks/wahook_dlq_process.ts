// Task wahook_dlq_process (crontab, every 5 minutes): sweep jobs a crash left behind, then queue every DLQ
// entry whose retry is due. The run is recorded in wahook.dlq_processing_log.
import type { JobHelpers, Task } from 'graphile-worker';
import type { Logger } from '../src/log.ts';

export function makeWahookDlqProcess(deps: { log: Logger }): Task {
  return async (_payload: unknown, helpers: JobHelpers) => {
    const r = await helpers.withPgClient((client) =>
      client.query<{ run_id: string; outcome: string; swept: number; enqueued: number }>('select * from wahook.dlq_process()'),
    );
    const run = r.rows[0]!;
    const level = run.swept > 0 || run.enqueued > 0 ? 'info' : 'debug';
    deps.log[level]('DLQ processor run', { run: run.run_id, outcome: run.outcome, swept: run.swept, enqueued: run.enqueued });
  };
}
