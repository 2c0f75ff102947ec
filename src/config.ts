// Configuration, read from the environment and validated once at start-up. Every problem names its variable.
import { existsSync } from 'node:fs';
import path from 'node:path';

export interface Config {
  /** undefined: use the embedded PostgreSQL under dataDir */
  databaseUrl: string | undefined;
  /** role-specific connections (wahook_receiver, wahook_worker); undefined: databaseUrl */
  receiverDatabaseUrl: string | undefined;
  workerDatabaseUrl: string | undefined;
  port: number;
  host: string;
  appSecrets: string[];
  verifyToken: string;
  accessToken: string | undefined;
  apiBaseUrl: string;
  handlersPath: string | undefined;
  maxBodyBytes: number;
  workerConcurrency: number;
  dataDir: string;
  otelEndpoint: string | undefined;
  otelServiceName: string;
  /** Graph API calls: timeout, and the local (per process) opossum breaker; shared thresholds are in wahook.settings */
  send: { timeoutMs: number; errorThresholdPercentage: number; volumeThreshold: number; resetTimeoutMs: number };
}

export class ConfigError extends Error {
  constructor(public readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

export interface ConfigNeeds {
  /** the receiver needs WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN */
  receiver: boolean;
}

/** Meta sends up to 3 MB per POST; the default leaves room above that. */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;
export const MIN_MAX_BODY_BYTES = 3 * 1024 * 1024;

export function loadConfig(env: NodeJS.ProcessEnv, needs: ConfigNeeds): Config {
  const problems: string[] = [];
  const str = (name: string) => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  const int = (name: string, fallback: number, min: number, max: number) => {
    const raw = str(name);
    if (raw === undefined) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      problems.push(`${name} must be a whole number from ${min} to ${max} (got ${JSON.stringify(raw)})`);
      return fallback;
    }
    return Number(raw);
  };
  const url = (name: string, protocols: string[]) => {
    const raw = str(name);
    if (raw === undefined) return undefined;
    try {
      const u = new URL(raw);
      if (!protocols.includes(u.protocol)) {
        problems.push(`${name} must be a ${protocols.join(' or ')} URL (got scheme ${u.protocol})`);
      }
    } catch {
      // never echo the value: a database URL may hold a password
      problems.push(`${name} is not a valid URL`);
    }
    return raw;
  };

  const databaseUrl = url('DATABASE_URL', ['postgres:', 'postgresql:']);
  const receiverDatabaseUrl = url('WAHOOK_RECEIVER_DATABASE_URL', ['postgres:', 'postgresql:']);
  const workerDatabaseUrl = url('WAHOOK_WORKER_DATABASE_URL', ['postgres:', 'postgresql:']);
  const port = int('PORT', 3000, 0, 65535);
  const secretsRaw = str('WHATSAPP_APP_SECRET');
  const appSecrets = (secretsRaw ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (secretsRaw !== undefined && appSecrets.length !== secretsRaw.split(',').length) {
    problems.push('WHATSAPP_APP_SECRET has an empty entry: give one or more secrets separated by commas');
  }
  const verifyToken = str('WHATSAPP_VERIFY_TOKEN') ?? '';
  if (needs.receiver) {
    if (appSecrets.length === 0) problems.push('WHATSAPP_APP_SECRET is required: your Meta app secret (several, comma-separated, while rotating)');
    if (verifyToken === '') problems.push('WHATSAPP_VERIFY_TOKEN is required: the token you typed into the Meta webhook settings');
  }
  const apiBaseUrl = url('WHATSAPP_API_BASE_URL', ['http:', 'https:']) ?? 'https://graph.facebook.com/v21.0';
  const handlersPath = str('WAHOOK_HANDLERS');
  if (handlersPath !== undefined && !existsSync(path.resolve(handlersPath))) {
    problems.push(`WAHOOK_HANDLERS names a file that does not exist: ${handlersPath}`);
  }
  const maxBodyBytes = int('WAHOOK_MAX_BODY_BYTES', DEFAULT_MAX_BODY_BYTES, MIN_MAX_BODY_BYTES, 64 * 1024 * 1024);
  const workerConcurrency = int('WAHOOK_WORKER_CONCURRENCY', 10, 1, 200);
  const otelEndpoint = url('OTEL_EXPORTER_OTLP_ENDPOINT', ['http:', 'https:']);
  const send = {
    timeoutMs: int('WAHOOK_SEND_TIMEOUT_MS', 10_000, 100, 120_000),
    errorThresholdPercentage: int('WAHOOK_BREAKER_ERROR_PERCENT', 50, 1, 100),
    volumeThreshold: int('WAHOOK_BREAKER_VOLUME', 5, 1, 10_000),
    resetTimeoutMs: int('WAHOOK_BREAKER_RESET_MS', 30_000, 100, 3_600_000),
  };

  if (problems.length > 0) throw new ConfigError(problems);
  return {
    databaseUrl,
    receiverDatabaseUrl,
    workerDatabaseUrl,
    port,
    host: str('HOST') ?? '0.0.0.0',
    appSecrets,
    verifyToken,
    accessToken: str('WHATSAPP_ACCESS_TOKEN'),
    apiBaseUrl,
    handlersPath: handlersPath === undefined ? undefined : path.resolve(handlersPath),
    maxBodyBytes,
    workerConcurrency,
    dataDir: path.resolve(str('WAHOOK_DATA_DIR') ?? '.wahook'),
    otelEndpoint,
    otelServiceName: str('OTEL_SERVICE_NAME') ?? 'wahook',
    send,
  };
}
