import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.ts';

const receiverEnv = { WHATSAPP_APP_SECRET: 'a', WHATSAPP_VERIFY_TOKEN: 't' };

function problems(env: NodeJS.ProcessEnv, receiver = true): string[] {
  try {
    loadConfig(env, { receiver });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('configuration', () => {
  it('reads defaults', () => {
    const c = loadConfig(receiverEnv, { receiver: true });
    expect(c.port).toBe(3000);
    expect(c.databaseUrl).toBeUndefined();
    expect(c.appSecrets).toEqual(['a']);
    expect(c.maxBodyBytes).toBeGreaterThanOrEqual(3 * 1024 * 1024);
  });

  it('names each missing receiver variable', () => {
    const p = problems({});
    expect(p.some((m) => m.startsWith('WHATSAPP_APP_SECRET is required'))).toBe(true);
    expect(p.some((m) => m.startsWith('WHATSAPP_VERIFY_TOKEN is required'))).toBe(true);
    expect(problems({}, false)).toEqual([]);
  });

  it('splits secrets for rotation and refuses empty entries', () => {
    expect(loadConfig({ ...receiverEnv, WHATSAPP_APP_SECRET: 'new, old' }, { receiver: true }).appSecrets).toEqual(['new', 'old']);
    expect(problems({ ...receiverEnv, WHATSAPP_APP_SECRET: 'new,,old' })[0]).toMatch(/^WHATSAPP_APP_SECRET has an empty entry/);
  });

  it('names malformed values, without echoing a database password', () => {
    expect(problems({ ...receiverEnv, PORT: 'eighty' })[0]).toMatch(/^PORT must be a whole number/);
    expect(problems({ ...receiverEnv, PORT: '70000' })[0]).toMatch(/^PORT must be a whole number/);
    expect(problems({ ...receiverEnv, DATABASE_URL: 'mysql://u:hunter2@h/db' })[0]).toMatch(/^DATABASE_URL must be a postgres: or postgresql: URL/);
    const bad = problems({ ...receiverEnv, DATABASE_URL: 'not a url hunter2' });
    expect(bad[0]).toMatch(/^DATABASE_URL is not a valid URL/);
    expect(bad.join(' ')).not.toContain('hunter2');
    expect(problems({ ...receiverEnv, WAHOOK_HANDLERS: './no/such/file.ts' })[0]).toMatch(/^WAHOOK_HANDLERS names a file that does not exist/);
    expect(problems({ ...receiverEnv, WAHOOK_MAX_BODY_BYTES: '1000' })[0]).toMatch(/^WAHOOK_MAX_BODY_BYTES must be a whole number from 3145728/);
  });
});
