// Task wahook_maintenance (daily, from the crontab): wahook.maintain_partitions() makes the partitions ahead,
// moves rows out of the default partitions, re-applies the autovacuum settings, drops partitions past their
// retention and purges old dedupe keys, all in one transaction that records itself in wahook.maintenance_log.
// A failed step is recorded there (and in wahook.partition_config.last_error) and committed; this task then
// throws, so graphile-worker retries it with backoff and the failure shows in the job's last_error.
// Then housekeeping (sql/080_housekeeping.sql): operational logs past their retention, unused job queues.
import type { JobHelpers, Task } from 'graphile-worker';
import type { Logger } from '../src/log.ts';

interface MaintenanceAction {
  parent: string | null;
  partition: string | null;
  action: string;
  rows: string | null;
  detail: string | null;
}

export function makeWahookMaintenance(deps: { log: Logger }): Task {
  return async (_payload: unknown, helpers: JobHelpers) => {
    // No payload: the crontab adds only its own _cron fields.
    const r = await helpers.withPgClient((client) =>
      client.query<MaintenanceAction>('select * from wahook.maintain_partitions()'),
    );
    const actions = r.rows;
    const skipped = actions.find((a) => a.action === 'skipped_concurrent_run' || a.action === 'skipped_replica');
    if (skipped) {
      deps.log.info('maintenance skipped', { reason: skipped.action });
      return;
    }
    const count = (action: string) => actions.filter((a) => a.action === action).length;
    const sum = (action: string) => actions.filter((a) => a.action === action).reduce((n, a) => n + Number(a.rows ?? 0), 0);
    for (const a of actions.filter((x) => x.action === 'kept' || x.action === 'expired_in_default')) {
      deps.log.warn(`partition ${a.action === 'kept' ? 'kept past its retention' : 'rows past the retention in the default partition'}`, {
        partition: a.partition,
        rows: a.rows,
        detail: a.detail,
      });
    }
    deps.log.info('maintenance done', {
      partitions_created: actions.filter((a) => a.action === 'created').map((a) => a.partition),
      partitions_dropped: actions.filter((a) => a.action === 'dropped').map((a) => a.partition),
      rows_moved_from_default: sum('moved'),
      partitions_tuned: count('tuned'),
      partitions_kept: count('kept'),
      dedupe_keys_purged: sum('purged'),
      errors: count('error'),
    });
    // Then housekeeping: operational logs past their retention, unused graphile-worker queues.
    const purged = await helpers.withPgClient((client) =>
      client.query<{ table_name: string; deleted: string }>('select * from wahook.purge_operational_logs()'),
    );
    const queues = await helpers.withPgClient((client) => client.query<{ n: string }>('select wahook.gc_job_queues() as n'));
    deps.log.info('housekeeping done', {
      ...Object.fromEntries(purged.rows.map((r) => [`${r.table_name.replace('wahook.', '')}_deleted`, Number(r.deleted)])),
      job_queues_removed: Number(queues.rows[0]?.n ?? 0),
    });
    const errors = actions.filter((a) => a.action === 'error');
    if (errors.length > 0) {
      throw new Error(
        `partition maintenance failed (recorded in wahook.maintenance_log): ` +
          errors.map((e) => `${e.parent ?? ''}${e.partition ? ` ${e.partition}` : ''}: ${e.detail}`).join('; '),
      );
    }
  };
}
