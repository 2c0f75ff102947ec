// A small structured logger: one line per record, `time level scope message key=value…` (or JSON lines
// with WAHOOK_LOG_FORMAT=json). Values are never secrets: callers pass ids and counts, not bodies or tokens.

export type Level = 'debug' | 'info' | 'warn' | 'error';
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
  child(scope: string): Logger;
}

function render(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === 'string') return /^[\w.:/@-]*$/.test(value) && value !== '' ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? 'undefined';
}

export function makeLogger(scope = 'wahook', env: NodeJS.ProcessEnv = process.env): Logger {
  const min = order[(env.WAHOOK_LOG_LEVEL as Level) ?? 'info'] ?? order.info;
  const json = env.WAHOOK_LOG_FORMAT === 'json';
  const write = (level: Level, message: string, fields: Record<string, unknown> = {}) => {
    if (order[level] < min) return;
    const time = new Date().toISOString();
    const line = json
      ? JSON.stringify({ time, level, scope, message, ...fields }, (_k, v) => (v instanceof Error ? v.message : v))
      : [time, level.toUpperCase().padEnd(5), `[${scope}]`, message, ...Object.entries(fields).map(([k, v]) => `${k}=${render(v)}`)].join(' ');
    (level === 'error' || level === 'warn' ? process.stderr : process.stdout).write(line + '\n');
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    child: (s) => makeLogger(`${scope}:${s}`, env),
  };
}
