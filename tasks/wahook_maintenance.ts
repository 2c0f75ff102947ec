// Task wahook_maintenance (daily, from the crontab): wahook.maintain_partitions() makes the partitions ahead,
// moves rows out of the default partitions, re-applies the autovacuum settings, drops partitions past their
// retention and purges old dedupe keys, in one transaction that records itself in wahook.maintenance_log; then
// housekeeping (sql/080_housekeeping.sql): operational logs past their retention, unused job queues.
// A failed partition step is recorded and committed by the database; this task then throws (after the
// housekeeping), so graphile-worker retries it with backoff and the failure shows in the job's last_error.
import type { JobHelpers, Task } from 'graphile-worker';
import { runPartitionMaintenance } from '../src/db/maintenance.ts';
import type { Logger } from '../src/log.ts';

export function makeWahookMaintenance(deps: { log: Logger }): Task {
  return async (_payload: unknown, helpers: JobHelpers) => {
    // No payload: the crontab adds only its own _cron fields.
    const failure = await helpers
      .withPgClient((client) => runPartitionMaintenance(client, deps.log))
      .then(() => undefined, (err: unknown) => err);
    const purged = await helpers.withPgClient((client) =>
      client.query<{ table_name: string; deleted: string }>('select * from wahook.purge_operational_logs()'),
    );
    const queues = await helpers.withPgClient((client) => client.query<{ n: string }>('select wahook.gc_job_queues() as n'));
    deps.log.info('housekeeping done', {
      ...Object.fromEntries(purged.rows.map((r) => [`${r.table_name.replace('wahook.', '')}_deleted`, Number(r.deleted)])),
      job_queues_removed: Number(queues.rows[0]?.n ?? 0),
    });
    if (failure) throw failure;
  };
}
