// `wahook dlq list | show | replay | discard`: the operator's view of the dead-letter queue. Every change goes
// through the SQL API (wahook.dlq_replay, wahook.dlq_discard), which records who did it in wahook.audit_log.
import os from 'node:os';
import pg from 'pg';
import { formatTable } from './table.ts';

export class DlqUsageError extends Error {}

export const DLQ_USAGE = `usage: wahook dlq <command>

  list     [--status S[,S]] [--task T] [--code C] [--older-than 1h] [--newer-than 1d] [--phone ID] [--limit N] [--json]
           entries, newest first (default status: pending,retrying,exhausted)
  show     ID                         one entry: error, payload, event, retry history, audit trail
  replay   ID… | --where [--task T] [--code C] [--older-than 1h] [--phone ID]   [--dry-run] [--actor NAME]
           back into the pipeline with a fresh attempt budget, in conversation order
  discard  ID… --reason TEXT [--actor NAME]
           give up on entries; their events show 'discarded'

The actor recorded in wahook.audit_log is --actor, else WAHOOK_ACTOR, else your login name.`;

interface Parsed {
  positional: string[];
  flags: Map<string, string | true>;
}

const VALUE_FLAGS = new Set(['--status', '--task', '--code', '--older-than', '--newer-than', '--phone', '--limit', '--reason', '--actor']);
const BOOL_FLAGS = new Set(['--json', '--dry-run', '--where']);

function parse(args: string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (VALUE_FLAGS.has(a)) {
      const v = args[++i];
      if (v === undefined || v.startsWith('--')) throw new DlqUsageError(`${a} needs a value`);
      flags.set(a, v);
    } else if (BOOL_FLAGS.has(a)) {
      flags.set(a, true);
    } else if (a.startsWith('--')) {
      throw new DlqUsageError(`unknown option ${a}`);
    } else {
      positional.push(a);
    }
  }
  return { positional, flags };
}

function str(p: Parsed, name: string): string | null {
  const v = p.flags.get(name);
  return typeof v === 'string' ? v : null;
}

function ids(p: Parsed): string[] {
  for (const id of p.positional) if (!/^\d+$/.test(id)) throw new DlqUsageError(`not a DLQ entry id: ${id}`);
  return p.positional;
}

/** "90s", "15m", "2h", "3d" or any PostgreSQL interval ("1 day 2 hours"). */
function interval(p: Parsed, name: string): string | null {
  const v = str(p, name);
  if (v === null) return null;
  const m = /^(\d+)\s*(s|m|h|d|w)$/.exec(v);
  if (m) return `${m[1]} ${{ s: 'seconds', m: 'minutes', h: 'hours', d: 'days', w: 'weeks' }[m[2] as 's']}`;
  if (/^[\d\s]+(second|minute|hour|day|week|month)s?([\d\s]+(second|minute|hour|day|week|month)s?)*$/i.test(v.trim())) return v;
  throw new DlqUsageError(`${name} takes a duration like 30m, 2h, 7d (got ${JSON.stringify(v)})`);
}

function actor(p: Parsed, env: NodeJS.ProcessEnv): string {
  return str(p, '--actor') ?? env.WAHOOK_ACTOR ?? os.userInfo().username;
}

export async function dlqCommand(args: string[], databaseUrl: string, env: NodeJS.ProcessEnv, out: (s: string) => void): Promise<void> {
  const [sub, ...rest] = args;
  const p = parse(rest);
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'wahook dlq' });
  await client.connect();
  try {
    switch (sub) {
      case 'list':
        return await list(client, p, out);
      case 'show':
        return await show(client, p, out);
      case 'replay':
        return await replay(client, p, env, out);
      case 'discard':
        return await discard(client, p, env, out);
      default:
        throw new DlqUsageError(sub === undefined ? 'which dlq command?' : `unknown dlq command "${sub}"`);
    }
  } finally {
    await client.end();
  }
}

async function list(client: pg.Client, p: Parsed, out: (s: string) => void): Promise<void> {
  const limit = str(p, '--limit') ?? '50';
  if (!/^\d+$/.test(limit)) throw new DlqUsageError('--limit takes a whole number');
  const statuses = (str(p, '--status') ?? 'pending,retrying,exhausted').split(',').map((s) => s.trim());
  const r = await client.query(
    `select d.id, d.status, d.task, d.kind, d.phone_number_id as phone, d.wa_id, d.error_class as class, d.error_code as code,
            d.attempts, d.dlq_attempts as dlq_tries, d.next_retry_at as next_retry, d.dead_lettered_at as since,
            d.overtaken_by as overtaken, d.last_error as error
       from wahook.webhook_dlq as d
      where d.id in (select wahook.dlq_select($1, $2, $3::interval, $4, $5::text[], $6::interval))
      order by d.dead_lettered_at desc, d.id desc
      limit $7`,
    [str(p, '--task'), str(p, '--code'), interval(p, '--older-than'), str(p, '--phone'), statuses, interval(p, '--newer-than'), limit],
  );
  if (p.flags.has('--json')) {
    out(JSON.stringify(r.rows, null, 2));
    return;
  }
  if (r.rows.length === 0) {
    out('no DLQ entries match');
    return;
  }
  out(formatTable(r.rows, ['id', 'status', 'task', 'kind', 'phone', 'class', 'code', 'attempts', 'dlq_tries', 'next_retry', 'since', 'overtaken', 'error']));
  out(`${r.rows.length} entr${r.rows.length === 1 ? 'y' : 'ies'}${r.rows.length === Number(limit) ? ` (first ${limit}; use --limit)` : ''}`);
}

async function show(client: pg.Client, p: Parsed, out: (s: string) => void): Promise<void> {
  const [id, ...more] = ids(p);
  if (id === undefined || more.length > 0) throw new DlqUsageError('show takes one DLQ entry id');
  const entry = (await client.query('select * from wahook.webhook_dlq where id = $1', [id])).rows[0];
  if (!entry) throw new DlqUsageError(`no DLQ entry ${id}`);
  const event = entry.event_id
    ? (await client.query('select id, kind, field, state, attempts, wamid, wa_id, meta_ts, received_at, payload from wahook.wa_events where id = $1 and received_at = $2', [entry.event_id, entry.event_received_at])).rows[0]
    : undefined;
  const history = (await client.query(
    `select started_at as at, outcome, duration_ms, error from wahook.dlq_processing_log where dlq_id = $1 order by id`, [id])).rows;
  const audit = (await client.query(
    `select at, actor, db_role, action from wahook.audit_log where table_name = 'wahook.webhook_dlq' and row_id = $1 and action like 'dlq.%' order by id`, [id])).rows;
  const { payload, last_error, ...fields } = entry;
  for (const [k, v] of Object.entries(fields)) {
    if (v !== null) out(`${k.padEnd(18)} ${v instanceof Date ? v.toISOString() : String(v)}`);
  }
  out(`\nlast error:\n  ${String(last_error ?? '').replace(/\n/g, '\n  ')}`);
  out(`\npayload:\n${JSON.stringify(payload, null, 2)}`);
  if (event) out(`\nevent:\n${JSON.stringify(event, null, 2)}`);
  out(`\nretries:\n${history.length ? formatTable(history, ['at', 'outcome', 'duration_ms', 'error']) : '  none yet'}`);
  out(`\noperator actions:\n${audit.length ? formatTable(audit, ['at', 'actor', 'db_role', 'action']) : '  none'}`);
}

async function replay(client: pg.Client, p: Parsed, env: NodeJS.ProcessEnv, out: (s: string) => void): Promise<void> {
  const dryRun = p.flags.has('--dry-run');
  const who = actor(p, env);
  let r: pg.QueryResult;
  if (p.flags.has('--where')) {
    if (p.positional.length > 0) throw new DlqUsageError('replay takes ids or --where filters, not both');
    r = await client.query('select * from wahook.dlq_replay_where($1, $2, $3, $4::interval, $5, $6)', [
      who, str(p, '--task'), str(p, '--code'), interval(p, '--older-than'), str(p, '--phone'), dryRun,
    ]);
  } else {
    const list = ids(p);
    if (list.length === 0) throw new DlqUsageError('replay takes DLQ entry ids, or --where with filters');
    r = await client.query('select * from wahook.dlq_replay($1::bigint[], $2, $3)', [list, who, dryRun]);
  }
  if (r.rows.length === 0) {
    out('nothing to replay');
    return;
  }
  out(formatTable(r.rows, ['dlq_id', 'task', 'event_id', 'status', 'job_id']));
  const n = r.rows.filter((x) => x.status === (dryRun ? 'would replay' : 'replayed')).length;
  out(dryRun ? `dry run: ${n} would be replayed; nothing changed` : `${n} replayed by ${who}`);
}

async function discard(client: pg.Client, p: Parsed, env: NodeJS.ProcessEnv, out: (s: string) => void): Promise<void> {
  const list = ids(p);
  const reason = str(p, '--reason');
  if (list.length === 0) throw new DlqUsageError('discard takes DLQ entry ids');
  if (!reason) throw new DlqUsageError('discard needs --reason');
  const who = actor(p, env);
  const r = await client.query('select * from wahook.dlq_discard($1::bigint[], $2, $3)', [list, reason, who]);
  out(formatTable(r.rows, ['dlq_id', 'status']));
  out(`${r.rows.filter((x) => x.status === 'discarded').length} discarded by ${who}`);
}
