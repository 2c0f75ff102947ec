// A real receiver on a real port, against a test database.
import { makeLogger } from '../../src/log.ts';
import { startReceiver, type RunningReceiver } from '../../src/receiver/server.ts';
import { DEFAULT_MAX_BODY_BYTES } from '../../src/config.ts';
import { FIXTURE_SECRET } from './fixtures.ts';

export const VERIFY_TOKEN = 'test-verify-token';

export function quietLogger(scope = 'test') {
  return makeLogger(scope, { ...process.env, WAHOOK_LOG_LEVEL: process.env.WAHOOK_TEST_LOG_LEVEL ?? 'error' });
}

export async function testReceiver(databaseUrl: string, overrides: { appSecrets?: string[]; maxBodyBytes?: number } = {}): Promise<RunningReceiver> {
  return startReceiver(
    {
      databaseUrl,
      appSecrets: overrides.appSecrets ?? [FIXTURE_SECRET],
      verifyToken: VERIFY_TOKEN,
      maxBodyBytes: overrides.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
      port: 0,
      host: '127.0.0.1',
    },
    quietLogger('receiver'),
    { shutdownGraceMs: 2000 },
  );
}

export async function post(url: string, body: Buffer | string, signature?: string): Promise<Response> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (signature !== undefined) headers['x-hub-signature-256'] = signature;
  return fetch(url, { method: 'POST', body: typeof body === 'string' ? body : new Uint8Array(body), headers });
}
