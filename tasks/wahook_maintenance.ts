// Task wahook_maintenance (daily, from the crontab): next month's partitions and the dedupe-key purge.
import type { JobHelpers, Task } from 'graphile-worker';
import type { Logger } from '../src/log.ts';

export function makeWahookMaintenance(deps: { log: Logger }): Task {
  return async (_payload: unknown, helpers: JobHelpers) => {
    await helpers.withPgClient(async (client) => {
      const created = await client.query<{ p: string }>('select p from wahook.ensure_partitions() as p');
      const purged = await client.query<{ n: string }>('select wahook.purge_dedupe_keys() as n');
      deps.log.info('maintenance done', {
        partitions_created: created.rows.map((r) => r.p),
        dedupe_keys_purged: purged.rows[0]?.n,
      });
    });
  };
}
