// `wahook partitions status | maintain`: the DBA's view of the monthly partitions and a way to run the daily
// maintenance now. Both go through the SQL API (wahook.partition_status, wahook.maintain_partitions).
import pg from 'pg';
import type { MaintenanceAction } from '../db/maintenance.ts';
import { formatTable } from './table.ts';

export class PartitionsUsageError extends Error {}

export const PARTITIONS_USAGE = `usage: wahook partitions <command>

  status    [--json]   every partition of each table in wahook.partition_config: range, size, rows, default?;
                       per table the next month without a partition and the rows in the default partition
  maintain  [--json]   run the maintenance now (the worker runs it daily): make partitions ahead, move rows out of
                       the default partition, re-apply autovacuum settings, drop partitions past the retention,
                       purge old dedupe keys; prints what it did

Settings: wahook.partition_config (premake, retention, storage_parameters). See docs/DATABASE.md.`;

interface StatusRow {
  parent: string;
  partition: string;
  range_from: Date | number | null;
  range_to: Date | number | null;
  size: string;
  rows: string | null;
  rows_exact: boolean;
  is_default: boolean;
  next_missing_month: Date | null;
  premake: number;
  retention: unknown;
}


function parse(args: string[]): { sub: string; json: boolean } {
  const [sub, ...rest] = args;
  if (sub === undefined) throw new PartitionsUsageError('which partitions command? (status or maintain)');
  if (sub !== 'status' && sub !== 'maintain') throw new PartitionsUsageError(`unknown partitions command "${sub}"`);
  let json = false;
  for (const a of rest) {
    if (a === '--json') json = true;
    else if (a.startsWith('-')) throw new PartitionsUsageError(`unknown option ${a} for partitions ${sub}`);
    else throw new PartitionsUsageError(`partitions ${sub} takes no arguments (got "${a}")`);
  }
  return { sub, json };
}

export async function partitionsCommand(args: string[], databaseUrl: string, out: (line: string) => void): Promise<void> {
  const { sub, json } = parse(args);
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'wahook partitions' });
  await client.connect();
  try {
    if (sub === 'status') return await status(client, json, out);
    return await maintain(client, json, out);
  } finally {
    await client.end();
  }
}

/** A UTC month start as 2026-12-01; any other instant in full. */
function instant(v: Date | number | null): string {
  if (v === null) return '';
  if (typeof v === 'number') return v > 0 ? 'MAXVALUE' : 'MINVALUE';
  const iso = v.toISOString();
  return iso.endsWith('T00:00:00.000Z') ? iso.slice(0, 10) : iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function month(v: Date): string {
  return v.toISOString().slice(0, 7);
}

async function status(client: pg.Client, json: boolean, out: (line: string) => void): Promise<void> {
  const parts = (await client.query<StatusRow>(
    `select s.*, pg_catalog.pg_size_pretty(s.total_bytes) as size from wahook.partition_status() as s`,
  )).rows;
  const configs = (await client.query<{ parent: string; last_success_at: Date | null; last_run_at: Date | null; last_error: string | null }>(
    'select parent, last_run_at, last_success_at, last_error from wahook.partition_config order by parent',
  )).rows;
  if (json) {
    out(JSON.stringify({ partitions: parts, tables: configs }, null, 2));
    return;
  }
  if (parts.length === 0) {
    out('no partitioned tables are configured (wahook.partition_config is empty)');
    return;
  }
  out(formatTable(
    parts.map((p) => ({
      table: p.parent,
      partition: p.partition,
      range: p.is_default ? '(everything else)' : `${instant(p.range_from)} .. ${instant(p.range_to)}`,
      size: p.size,
      rows: p.rows === null ? '?' : p.rows_exact ? p.rows : `~${p.rows}`,
      default: p.is_default ? 'yes' : '',
    })),
    ['table', 'partition', 'range', 'size', 'rows', 'default'],
  ));
  out('rows: ~ planner estimate (? before the first vacuum or analyze); exact for the default partition');
  out('');
  for (const cfg of configs) {
    const mine = parts.filter((p) => p.parent === cfg.parent);
    const first = mine[0];
    if (!first) {
      out(`${cfg.parent}: no such partitioned table`);
      continue;
    }
    const inDefault = mine.filter((p) => p.is_default).reduce((n, p) => n + Number(p.rows ?? 0), 0);
    const missing = first.next_missing_month
      ? `next missing month ${month(first.next_missing_month)} (within premake ${first.premake})`
      : `no month missing through premake ${first.premake}`;
    const last = cfg.last_success_at ? `last maintained ${instant(cfg.last_success_at)}` : 'never maintained';
    out(`${cfg.parent}: ${missing}; rows in default: ${inDefault}; ${last}${cfg.last_error ? `; LAST ERROR: ${cfg.last_error}` : ''}`);
  }
}

async function maintain(client: pg.Client, json: boolean, out: (line: string) => void): Promise<void> {
  const actions = (await client.query<MaintenanceAction>('select * from wahook.maintain_partitions()')).rows;
  if (json) {
    out(JSON.stringify(actions, null, 2));
  } else {
    const skipped = actions.find((a) => a.action.startsWith('skipped'));
    if (skipped) {
      out(`skipped: ${skipped.detail ?? skipped.action}`);
      return;
    }
    out(formatTable(actions as unknown as Array<Record<string, unknown>>, ['parent', 'partition', 'action', 'rows', 'detail']));
    const count = (action: string) => actions.filter((a) => a.action === action).length;
    const sum = (action: string) => actions.filter((a) => a.action === action).reduce((n, a) => n + Number(a.rows ?? 0), 0);
    out(
      `created ${count('created')}, dropped ${count('dropped')}, kept past retention ${count('kept')}, ` +
        `moved ${sum('moved')} rows out of default, tuned ${count('tuned')}, purged ${sum('purged')} dedupe keys, ` +
        `errors ${count('error')}`,
    );
  }
  const errors = actions.filter((a) => a.action === 'error');
  if (errors.length > 0) {
    throw new Error(
      'partition maintenance failed (recorded in wahook.maintenance_log): ' +
        errors.map((e) => `${e.parent ?? ''}${e.partition ? ` ${e.partition}` : ''}: ${e.detail}`).join('; '),
    );
  }
}
