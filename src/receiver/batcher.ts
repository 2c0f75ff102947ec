// Group commit. Concurrent POSTs are stored together: while a transaction is in flight, new bodies wait and then
// go in the next one. An idle receiver commits a lone POST at once (no timer, no added latency); a busy one
// commits many per round trip. Every caller is answered only after the transaction holding its body committed.
import type pg from 'pg';
import type { Metrics } from '../metrics/registry.ts';
import { isConnectionError } from '../db/pool.ts';

export interface IngestItem {
  body: Buffer;
  keyIndex: number;
  fingerprint: string;
}

export interface IngestResult {
  logId: string;
  parseStatus: 'ok' | 'invalid_json' | 'unexpected_shape';
  notifications: number;
  duplicates: number;
}

interface Pending {
  item: IngestItem;
  resolve(r: IngestResult): void;
  reject(e: unknown): void;
}

export interface BatcherOptions {
  /** most bodies in one transaction */
  maxBatch: number;
  /** most bytes in one transaction (a lone larger body still goes alone) */
  maxBatchBytes: number;
  /** ingest transactions running at once */
  maxInFlight: number;
}

export class IngestBatcher {
  private queue: Pending[] = [];
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly pool: pg.Pool,
    private readonly metrics: Metrics | undefined,
    private readonly options: BatcherOptions = { maxBatch: 64, maxBatchBytes: 16 * 1024 * 1024, maxInFlight: 2 },
  ) {}

  submit(item: IngestItem): Promise<IngestResult> {
    const pending = this.metrics?.ingestPending;
    pending?.inc();
    return new Promise<IngestResult>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.pump();
    }).finally(() => pending?.dec());
  }

  /** Resolves once nothing is queued or in flight. */
  drain(): Promise<void> {
    if (this.queue.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private pump(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch: Pending[] = [];
      let bytes = 0;
      while (this.queue.length > 0 && batch.length < this.options.maxBatch) {
        const next = this.queue[0]!;
        if (batch.length > 0 && bytes + next.item.body.length > this.options.maxBatchBytes) break;
        batch.push(this.queue.shift()!);
        bytes += next.item.body.length;
      }
      this.inFlight++;
      void this.run(batch).finally(() => {
        this.inFlight--;
        this.pump();
        if (this.queue.length === 0 && this.inFlight === 0) {
          for (const w of this.idleWaiters.splice(0)) w();
        }
      });
    }
  }

  private async run(batch: Pending[]): Promise<void> {
    try {
      const results = await this.ingest(batch.map((p) => p.item));
      batch.forEach((p, i) => p.resolve(results[i]!));
    } catch (err) {
      if (batch.length > 1 && !isConnectionError(err)) {
        // A statement error in a shared transaction: store each body alone, so one cannot fail the others.
        await Promise.all(
          batch.map((p) => this.ingest([p.item]).then((r) => p.resolve(r[0]!), (e: unknown) => p.reject(e))),
        );
      } else {
        for (const p of batch) p.reject(err);
      }
    }
  }

  private async ingest(items: IngestItem[]): Promise<IngestResult[]> {
    const end = this.metrics?.ingestSeconds.startTimer();
    const res = await this.pool.query<{
      log_id: string;
      parse_status: IngestResult['parseStatus'];
      notifications: number;
      duplicates: number;
    }>('select log_id, parse_status, notifications, duplicates from wahook.ingest($1::bytea[], $2::smallint[], $3::text[])', [
      items.map((i) => i.body),
      items.map((i) => i.keyIndex),
      items.map((i) => i.fingerprint),
    ]);
    end?.();
    this.metrics?.ingestBatchSize.observe(items.length);
    if (res.rows.length !== items.length) {
      throw new Error(`wahook.ingest returned ${res.rows.length} rows for ${items.length} bodies`);
    }
    return res.rows.map((r) => ({
      logId: r.log_id,
      parseStatus: r.parse_status,
      notifications: r.notifications,
      duplicates: r.duplicates,
    }));
  }
}
