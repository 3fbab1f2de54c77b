import { rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import { gzip as gzipCallback } from 'node:zlib';
import { SyncError, ErrorCode, isSyncError, messageOf } from '../errors.js';
import { logs } from '../log.js';
import type { ArchiveMetrics } from '../metrics/metrics.js';
import { openLevelReplica } from '../replica/open-level.js';
import type { CommitInfo, Replica, ReplicaOptions, StampedCommit } from '../replica/replica.js';
import { databaseDirectory } from '../storage/database-id.js';
import { pathExists } from '../storage/leveldb.js';
import type { ReplicaSource } from '../service/coordinator.js';
import type { Archive } from './archive.js';
import { batchKey } from './layout.js';
import { restoreDatabase } from './restore.js';
import { Shipper } from './shipper.js';
import { Snapshotter, type SnapshotPolicy } from './snapshotter.js';

const log = logs.s3;
const gzip = promisify(gzipCallback);

/** How long closing a database waits for its archive to catch up (the rest is archived at its next open). */
const CLOSE_FLUSH_MS = 5000;
/** How long an ack-mode commit waits for older unarchived commits to be archived first. */
const ACK_CATCH_UP_MS = 10_000;

/** How durable writes are. */
export type DurabilityMode = 'async' | 'ack';

/** Options of the durability layer. */
export interface DurabilityOptions {
  archive: Archive;
  dataDir: string;
  /** Options of every replica (merge rules must match those it is served with). */
  replicaOptions: ReplicaOptions;
  /**
   * `async`: a write is acknowledged once stored locally, and archived right
   * behind (the store is the outbox). `ack`: acknowledged only once its
   * batch is in the archive; unreachable, it is refused with
   * STORAGE_UNAVAILABLE and nothing of it is stored.
   */
  mode: DurabilityMode;
  snapshots: SnapshotPolicy;
  /** Remove idle databases whose archive is complete from disk (the next open restores them). */
  eviction: { enabled: boolean; idleMs: number };
  metrics: ArchiveMetrics;
  now?: () => number;
}

/** The archive state `/status` shows. */
export interface ArchiveStatus {
  mode: DurabilityMode;
  openDatabases: number;
  pendingTransactions: number;
  outboxBytes: number;
  lagSeconds: number;
  lastError?: string;
  lastUploadAt?: number;
  lastSnapshotAt?: number;
  restores: number;
  evictions: number;
}

interface OpenDatabase { replica: Replica; shipper: Shipper }

/**
 * S3 durability (docs/protocol.md stamps; README "Storage and S3"): the
 * replica source the coordinator opens databases through. A database not on
 * disk is restored from the archive first; an open one has a Shipper
 * archiving its commits and a place in the Snapshotter's rounds; an idle
 * one whose archive is complete can be evicted from disk.
 */
export class Durability implements ReplicaSource {
  private readonly options: DurabilityOptions;
  private readonly now: () => number;
  private readonly opened = new Map<string, OpenDatabase>();
  /** Databases closed in this process: when, and whether their archive was complete then. */
  private readonly closed = new Map<string, { at: number; complete: boolean }>();
  /** Opens, closes and evictions of one database run one at a time. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly snapshotter: Snapshotter;
  private readonly evictionTimer?: NodeJS.Timeout;
  private lastError?: string;
  private lastUploadAt?: number;
  private lastSnapshotAt?: number;
  private restores = 0;
  private evictions = 0;

  constructor(options: DurabilityOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    const { metrics } = options;
    this.snapshotter = new Snapshotter(options.archive, options.snapshots, {
      taken: (id, key, ms) => {
        metrics.snapshotsTotal.inc();
        this.lastSnapshotAt = this.now();
        log('snapshot of %s uploaded in %d ms: %s', id, ms, key);
      },
      failed: (id, err) => {
        metrics.snapshotErrorsTotal.inc();
        this.lastError = `snapshot of ${id}: ${messageOf(err)}`;
        log('snapshot of %s failed: %s', id, messageOf(err));
      },
    }, this.now);
    if (options.eviction.enabled) {
      this.evictionTimer = setInterval(() => void this.evictIdle(), Math.max(1000, Math.min(options.eviction.idleMs / 2, 60_000)));
      this.evictionTimer.unref();
    }
  }

  /** The figures of the archive metrics, summed over open databases. */
  figures(): { pendingTransactions: number; outboxBytes: number; lagSeconds: number } {
    let pendingTransactions = 0;
    let outboxBytes = 0;
    let lagSeconds = 0;
    const now = this.now();
    for (const { shipper } of this.opened.values()) {
      pendingTransactions += shipper.pendingTransactions;
      outboxBytes += shipper.pendingBytes;
      lagSeconds = Math.max(lagSeconds, shipper.lagSeconds(now));
    }
    return { pendingTransactions, outboxBytes, lagSeconds };
  }

  status(): ArchiveStatus {
    return {
      mode: this.options.mode, openDatabases: this.opened.size, ...this.figures(),
      ...(this.lastError ? { lastError: this.lastError } : {}),
      ...(this.lastUploadAt ? { lastUploadAt: this.lastUploadAt } : {}),
      ...(this.lastSnapshotAt ? { lastSnapshotAt: this.lastSnapshotAt } : {}),
      restores: this.restores, evictions: this.evictions,
    };
  }

  /** ReplicaSource: opens a database, restoring it from the archive when it is not on disk. */
  open(databaseId: string): Promise<Replica> {
    return this.locked(databaseId, () => this.openLocked(databaseId));
  }

  /** ReplicaSource: archives what it can within a moment, then closes the replica. */
  close(databaseId: string, replica: Replica): Promise<void> {
    return this.locked(databaseId, async () => {
      const entry = this.opened.get(databaseId);
      this.opened.delete(databaseId);
      await this.snapshotter.untrack(databaseId);
      let complete = true;
      if (entry) {
        complete = await entry.shipper.flush(CLOSE_FLUSH_MS);
        await entry.shipper.close();
      }
      await replica.close();
      this.closed.set(databaseId, { at: this.now(), complete });
    });
  }

  /** Takes a snapshot of an open database now; resolves with its key (undefined when not open). */
  snapshotNow(databaseId: string): Promise<string | undefined> {
    return this.snapshotter.snapshotNow(databaseId);
  }

  /** Waits until an open database's commits are all archived (false after `timeoutMs`). */
  async flush(databaseId: string, timeoutMs = 30_000): Promise<boolean> {
    return (await this.opened.get(databaseId)?.shipper.flush(timeoutMs)) ?? true;
  }

  /** Stops timers and snapshots and closes the archive (after the coordinator closed every database). */
  async shutdown(): Promise<void> {
    if (this.evictionTimer) clearInterval(this.evictionTimer);
    await this.snapshotter.close();
    await this.options.archive.close();
  }

  private async openLocked(databaseId: string): Promise<Replica> {
    const { archive, dataDir, metrics } = this.options;
    const dir = databaseDirectory(dataDir, databaseId);
    if (!(await pathExists(dir))) {
      let result;
      try {
        result = await restoreDatabase(archive, databaseId, dir, {
          replicaOptions: this.options.replicaOptions,
          onSkip: (key, reason) => {
            metrics.snapshotsSkippedTotal.inc();
            log('restore of %s skips snapshot %s: %s', databaseId, key, reason);
          },
        });
      } catch (err) {
        metrics.restoresTotal.inc({ result: 'failed' });
        log('restore of %s failed: %s', databaseId, messageOf(err));
        throw err;
      }
      metrics.restoresTotal.inc({ result: result.restored ? 'restored' : 'new' });
      if (result.restored) {
        this.restores++;
        log('restored %s: %s, %d entries, %d batches, %d transactions', databaseId, result.snapshot ?? 'no snapshot', result.entries, result.batches, result.transactions);
      }
    }
    let shipper: Shipper | undefined;
    const replica = await openLevelReplica(dir, {
      ...this.options.replicaOptions,
      ...(this.options.mode === 'ack' ? { beforeCommit: (commit: StampedCommit) => this.archiveCommit(databaseId, shipper, commit) } : {}),
      onCommit: (info: CommitInfo) => {
        if (this.options.mode === 'async') shipper?.committed(info);
        this.snapshotter.committed(databaseId, info.changes);
      },
    });
    try {
      shipper = await Shipper.start(archive, databaseId, replica, {
        uploaded: () => {
          metrics.uploadsTotal.inc();
          this.lastUploadAt = this.now();
        },
        failed: (err) => {
          metrics.uploadErrorsTotal.inc();
          this.lastError = `archive of ${databaseId}: ${messageOf(err)}`;
          log('archiving %s failed (retrying): %s', databaseId, messageOf(err));
        },
        behind: () => {
          log('the change log of %s no longer reaches its archived stamp: snapshotting', databaseId);
          this.snapshotter.urgent(databaseId);
        },
      });
    } catch (err) {
      await replica.close();
      throw err;
    }
    this.opened.set(databaseId, { replica, shipper });
    this.closed.delete(databaseId);
    this.snapshotter.track(databaseId, replica, shipper);
    return replica;
  }

  /** Ack mode: uploads a commit's batch before it is stored; STORAGE_UNAVAILABLE refuses the commit. */
  private async archiveCommit(databaseId: string, shipper: Shipper | undefined, commit: StampedCommit): Promise<void> {
    const { archive, metrics } = this.options;
    try {
      // Commits from before (async mode, or an earlier outage) go first, or the chain would have a gap.
      if (shipper && !shipper.complete && !(await shipper.flush(ACK_CATCH_UP_MS))) {
        throw new SyncError(ErrorCode.StorageUnavailable, `the archive of ${databaseId} is behind and cannot catch up now; try again`);
      }
      const body = await gzip(Buffer.from(JSON.stringify(commit.changeSets), 'utf8'));
      await archive.put(batchKey(databaseId, commit.after, commit.last), body, { contentType: 'application/gzip' });
      shipper?.advance(commit.last);
      metrics.uploadsTotal.inc();
      this.lastUploadAt = this.now();
    } catch (err) {
      metrics.uploadErrorsTotal.inc();
      this.lastError = `archive of ${databaseId}: ${messageOf(err)}`;
      if (isSyncError(err) && err.code === ErrorCode.StorageUnavailable) throw err;
      throw new SyncError(ErrorCode.StorageUnavailable, `the archive cannot take this write now (${messageOf(err)}); nothing was stored, try again`, { cause: err });
    }
  }

  /**
   * Removes idle databases from disk once their archive is complete. One
   * closed while the archive was down is opened again briefly to finish
   * archiving first, so nothing stays only on a disk that may be lost.
   */
  private async evictIdle(): Promise<void> {
    const { idleMs } = this.options.eviction;
    const now = this.now();
    for (const [databaseId, state] of [...this.closed]) {
      if (now - state.at < idleMs) continue;
      await this.locked(databaseId, async () => {
        const current = this.closed.get(databaseId);
        if (!current || this.opened.has(databaseId)) return;
        if (!current.complete) current.complete = await this.finishArchiving(databaseId);
        if (!current.complete) return;
        await rm(databaseDirectory(this.options.dataDir, databaseId), { recursive: true, force: true });
        this.closed.delete(databaseId);
        this.evictions++;
        this.options.metrics.evictionsTotal.inc();
        log('evicted %s from disk (idle %d s, archive complete)', databaseId, Math.round((now - current.at) / 1000));
      }).catch((err: unknown) => log('eviction of %s failed: %s', databaseId, messageOf(err)));
    }
  }

  /** Opens a closed database just long enough to archive what it holds; true when complete. */
  private async finishArchiving(databaseId: string): Promise<boolean> {
    const replica = await openLevelReplica(databaseDirectory(this.options.dataDir, databaseId), this.options.replicaOptions);
    try {
      const shipper = await Shipper.start(this.options.archive, databaseId, replica, {
        uploaded: () => this.options.metrics.uploadsTotal.inc(),
        failed: () => this.options.metrics.uploadErrorsTotal.inc(),
        behind: () => undefined,
      });
      const complete = await shipper.flush(CLOSE_FLUSH_MS);
      await shipper.close();
      return complete;
    } finally {
      await replica.close();
    }
  }

  private locked<T>(databaseId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(databaseId) ?? Promise.resolve();
    const run = previous.then(work, work);
    const settled = run.catch(() => undefined);
    this.locks.set(databaseId, settled);
    void settled.then(() => { if (this.locks.get(databaseId) === settled) this.locks.delete(databaseId); });
    return run;
  }
}
