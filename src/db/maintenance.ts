// Running wahook.maintain_partitions and reading its answer, the same way for `wahook migrate` and the daily
// task: warnings for partitions kept past their retention, one summary line, and an error when a step failed
// (the database has recorded it in wahook.maintenance_log and committed that record).
import type { Logger } from '../log.ts';

export interface MaintenanceAction {
  parent: string | null;
  partition: string | null;
  action: string;
  rows: string | null;
  detail: string | null;
}

interface Queryable {
  query<R>(sql: string): Promise<{ rows: R[] }>;
}

export async function runPartitionMaintenance(client: Queryable, log: Logger): Promise<MaintenanceAction[]> {
  const actions = (await client.query<MaintenanceAction>('select * from wahook.maintain_partitions()')).rows;
  const skipped = actions.find((a) => a.action === 'skipped_concurrent_run' || a.action === 'skipped_replica');
  if (skipped) {
    log.info('maintenance skipped', { reason: skipped.action });
    return actions;
  }
  const of = (action: string) => actions.filter((a) => a.action === action);
  const sum = (action: string) => of(action).reduce((n, a) => n + Number(a.rows ?? 0), 0);
  for (const a of actions.filter((x) => x.action === 'kept' || x.action === 'expired_in_default')) {
    log.warn(a.action === 'kept' ? 'partition kept past its retention' : 'rows past the retention in the default partition', {
      partition: a.partition,
      rows: a.rows,
      detail: a.detail,
    });
  }
  log.info('maintenance done', {
    partitions_created: of('created').map((a) => a.partition),
    partitions_dropped: of('dropped').map((a) => a.partition),
    rows_moved_from_default: sum('moved'),
    partitions_tuned: of('tuned').length,
    partitions_kept: of('kept').length,
    dedupe_keys_purged: sum('purged'),
    errors: of('error').length,
  });
  const errors = of('error');
  if (errors.length > 0) {
    throw new Error(
      'partition maintenance failed (recorded in wahook.maintenance_log): ' +
        errors.map((e) => `${e.parent ?? ''}${e.partition ? ` ${e.partition}` : ''}: ${e.detail}`).join('; '),
    );
  }
  return actions;
}
