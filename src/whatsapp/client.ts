// The Graph API client: POST {base}/{phone_number_id}/messages with the access token and a timeout.
// Errors carry what the classification needs (HTTP status, Graph error code, Retry-After); deciding what they
// mean is wahook.graph_error_class's job, in the database.

export interface SendResult {
  wamid: string;
  httpStatus: number;
}

export class GraphApiError extends Error {
  constructor(
    message: string,
    /** null when no HTTP answer came (network error, timeout) */
    public readonly httpStatus: number | null,
    /** Graph error code (error.code), when the body had one */
    public readonly graphCode: number | null,
    public readonly retryAfterSeconds: number | null,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'GraphApiError';
  }
}

export interface GraphApiClientOptions {
  baseUrl: string;
  accessToken: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}

function retryAfter(header: string | null): number | null {
  if (header === null) return null;
  if (/^\d+$/.test(header.trim())) return Number(header.trim());
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export class GraphApiClient {
  private readonly base: string;
  constructor(private readonly options: GraphApiClientOptions) {
    this.base = options.baseUrl.replace(/\/+$/, '');
  }

  async sendMessage(phoneNumberId: string, request: unknown): Promise<SendResult> {
    const url = `${this.base}/${encodeURIComponent(phoneNumberId)}/messages`;
    let res: Response;
    try {
      res = await (this.options.fetch ?? fetch)(url, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.options.accessToken}`, 'content-type': 'application/json' },
        body: JSON.stringify(request),
        signal: AbortSignal.timeout(this.options.timeoutMs),
      });
    } catch (err) {
      const e = err as Error;
      const what = e.name === 'TimeoutError' ? `timed out after ${this.options.timeoutMs} ms` : e.message;
      throw new GraphApiError(`Graph API unreachable: ${what}`, null, null, null, { cause: err });
    }
    const text = await res.text();
    let body: { messages?: Array<{ id?: unknown }>; error?: { code?: unknown; message?: unknown } } = {};
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      // not JSON: keep the status
    }
    if (res.ok) {
      const wamid = body.messages?.[0]?.id;
      if (typeof wamid !== 'string' || wamid === '') {
        throw new GraphApiError(`Graph API answered ${res.status} without a message id`, res.status, null, null);
      }
      return { wamid, httpStatus: res.status };
    }
    const code = typeof body.error?.code === 'number' ? body.error.code : null;
    const message = typeof body.error?.message === 'string' ? body.error.message : `HTTP ${res.status}`;
    throw new GraphApiError(`Graph API ${res.status}${code === null ? '' : ` code ${code}`}: ${message}`, res.status, code, retryAfter(res.headers.get('retry-after')));
  }
}
