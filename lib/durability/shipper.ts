import { promisify } from 'node:util';
import { gzip as gzipCallback } from 'node:zlib';
import { ErrorCode, isSyncError, messageOf } from '../errors.js';
import { compareHlc, hlcWallTime } from '../protocol/hlc.js';
import type { CommitInfo, Replica } from '../replica/replica.js';
import type { Archive } from './archive.js';
import { batchKey } from './layout.js';

const gzip = promisify(gzipCallback);

/** Most changes, and bytes of change sets, per batch object (whole transactions, so a batch may overshoot). */
const BATCH_CHANGES = 1000;
const BATCH_BYTES = 4 * 1024 * 1024;
/** Waits between failed uploads: doubling from the first to the last. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;

/** What a shipper reports to the durability layer. */
export interface ShipperEvents {
  uploaded(transactions: number, bytes: number): void;
  failed(err: unknown): void;
  /** The change log no longer reaches back to the archived stamp (retention swept past it): only a snapshot can catch up. */
  behind(): void;
}

/**
 * Archives one database's accepted transactions, in stamp order, as batch
 * objects (docs/protocol.md §5 stamps; layout.ts keys). It works behind the
 * acknowledgements: the outbox is the database's own change log, which the
 * replica stores before it acknowledges anything, so a crash or an archive
 * outage loses nothing; the shipper resumes from the stamp it last archived
 * (kept in the store) and retries with backoff until the archive answers.
 */
export class Shipper {
  private readonly archive: Archive;
  private readonly databaseId: string;
  private readonly replica: Replica;
  private readonly events: ShipperEvents;
  private readonly archives: () => boolean;
  private archived: Buffer | undefined;
  private running?: Promise<void>;
  private wanted = false;
  private closed = false;
  private retryMs = RETRY_MIN_MS;
  private retryTimer?: NodeJS.Timeout;
  private wakeRetry?: () => void;
  /** Transactions and log bytes committed but not archived yet (approximate: overwrites shrink the log). */
  pendingTransactions = 0;
  pendingBytes = 0;
  /** The last upload failure, cleared by the next success. */
  lastError?: string;
  /** When the oldest commit not archived yet was stored (ms), while there is one. */
  private waitingSince?: number;

  private constructor(archive: Archive, databaseId: string, replica: Replica, archived: Buffer | undefined, events: ShipperEvents, archives: () => boolean) {
    this.archive = archive;
    this.archives = archives;
    this.databaseId = databaseId;
    this.replica = replica;
    this.archived = archived;
    this.events = events;
  }

  /**
   * A shipper for `replica`, resuming from the stamp its store says was
   * archived; it starts archiving at once. While `archives()` is false (in a
   * cluster, another node archives this database) it uploads nothing and
   * learns the archive's progress through `advance`; `wake()` it once true.
   */
  static async start(archive: Archive, databaseId: string, replica: Replica, events: ShipperEvents, archives: () => boolean = () => true): Promise<Shipper> {
    const shipper = new Shipper(archive, databaseId, replica, await replica.archivedStamp(), events, archives);
    if (!shipper.complete) {
      // A backlog left by a crash or an outage: count it, and date it by its first stamp (stamps carry the coordinator's clock).
      const backlog = await replica.logAfter(shipper.archived);
      shipper.pendingTransactions = backlog.transactions;
      shipper.pendingBytes = backlog.bytes;
      if (backlog.first) shipper.waitingSince = hlcWallTime(backlog.first);
    }
    shipper.wake();
    return shipper;
  }

  /** The last stamp the archive holds. */
  get archivedStamp(): Buffer | undefined {
    return this.archived;
  }

  /** Whether everything committed is archived. */
  get complete(): boolean {
    const committed = this.replica.committedStamp;
    return !committed || (this.archived !== undefined && compareHlc(this.archived, committed) >= 0);
  }

  /** How long the oldest commit not archived yet has waited, in seconds (0 when complete). */
  lagSeconds(now = Date.now()): number {
    if (this.complete) {
      this.waitingSince = undefined;
      return 0;
    }
    this.waitingSince ??= now;
    return (now - this.waitingSince) / 1000;
  }

  /** A commit was stored: archive it (and anything before it not archived yet). */
  committed(info: CommitInfo): void {
    if (this.pendingTransactions === 0) this.waitingSince ??= Date.now();
    this.pendingTransactions += info.transactions;
    this.pendingBytes += info.logBytes;
    this.wake();
  }

  /** The archive now holds everything up to `stamp` by other means (a snapshot, an ack-mode commit). */
  advance(stamp: Buffer): void {
    if (!this.archived || compareHlc(stamp, this.archived) > 0) this.archived = stamp;
  }

  wake(): void {
    this.wanted = true;
    this.wakeRetry?.();
    if (!this.running && !this.closed) this.running = this.loop().finally(() => { this.running = undefined; });
  }

  /**
   * Archives what is committed so far; resolves true once complete, false if
   * `timeoutMs` passes first (the archive is down) or the shipper is closed.
   */
  async flush(timeoutMs: number): Promise<boolean> {
    this.wake();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs); timer.unref(); });
    while (!this.complete && !this.closed) {
      const running = this.running;
      if (!running) break;
      const settled = await Promise.race([running.then(() => true), deadline.then(() => false)]);
      if (!settled) break;
    }
    clearTimeout(timer);
    return this.complete;
  }

  /** Stops archiving (the replica is closing); what is not archived stays in the log for the next open. */
  close(): Promise<void> {
    this.closed = true;
    this.wakeRetry?.();
    return this.running ?? Promise.resolve();
  }

  private async loop(): Promise<void> {
    while (this.wanted && !this.closed) {
      this.wanted = false;
      try {
        await this.drain();
        this.retryMs = RETRY_MIN_MS;
        this.lastError = undefined;
      } catch (err) {
        if (this.closed) return;
        if (isSyncError(err) && err.code === ErrorCode.SnapshotRequired) {
          this.events.behind();
          return;
        }
        this.lastError = messageOf(err);
        this.events.failed(err);
        this.wanted = true;
        await this.pause(this.retryMs);
        this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
      }
    }
  }

  /** Uploads batches until the log after the archived stamp is empty. */
  private async drain(): Promise<void> {
    while (!this.closed && this.archives()) {
      const after = this.archived;
      const page = await this.replica.changesSince(after, undefined, BATCH_CHANGES, BATCH_BYTES);
      if (page.transactionCount === 0 || !page.lastStamp) {
        this.pendingTransactions = 0;
        this.pendingBytes = 0;
        this.waitingSince = undefined;
        return;
      }
      // The oldest commit not archived yet is this page's first (stamps carry the coordinator's clock).
      if (page.firstStamp) this.waitingSince = hlcWallTime(page.firstStamp);
      const body = await gzip(Buffer.from(page.json, 'utf8'));
      await this.archive.put(batchKey(this.databaseId, after, page.lastStamp), body, { contentType: 'application/gzip' });
      await this.replica.markArchived(page.lastStamp);
      this.advance(page.lastStamp);
      this.pendingTransactions = Math.max(0, this.pendingTransactions - page.transactionCount);
      this.pendingBytes = Math.max(0, this.pendingBytes - page.json.length);
      this.events.uploaded(page.transactionCount, body.length);
    }
  }

  /** Waits `ms` before a retry; a wake() or close() ends the wait early. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(this.retryTimer);
        this.wakeRetry = undefined;
        resolve();
      };
      this.wakeRetry = this.closed ? undefined : (): void => { if (this.closed) done(); };
      this.retryTimer = setTimeout(done, ms);
      this.retryTimer.unref();
      if (this.closed) done();
    });
  }
}
