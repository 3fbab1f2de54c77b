import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzip as gzipCallback } from 'node:zlib';
import { SyncError, ErrorCode, isSyncError, messageOf } from '../errors.js';
import { logs } from '../log.js';
import type { ArchiveMetrics } from '../metrics/metrics.js';
import { openLevelReplica } from '../replica/open-level.js';
import type { CommitInfo, Replica, StampedCommit } from '../replica/replica.js';
import type { LevelReplicaOptions } from '../replica/open-level.js';
import { databaseDirectory, databaseIdFromDirectory } from '../storage/database-id.js';
import { openLevelStore, pathExists } from '../storage/leveldb.js';
import { compareHlc } from '../protocol/hlc.js';
import { META_ARCHIVED, META_LAST_STAMP } from '../replica/keys.js';
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
/** How often databases on disk but not open are looked after (archiving backlogs, eviction). */
const MAINTAIN_MS = 5000;

/** How durable writes are. */
export type DurabilityMode = 'async' | 'ack';

/** Options of the durability layer. */
export interface DurabilityOptions {
  archive: Archive;
  dataDir: string;
  /** Options of every replica (merge rules must match those it is served with). */
  replicaOptions: LevelReplicaOptions;
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
  /**
   * Whether this process archives a database now. In a cluster one node
   * holds each database's archiver lease; the others upload nothing and learn
   * the archive's progress through {@link Durability.archivedElsewhere}.
   * @default always true
   */
  archives?: (databaseId: string) => boolean;
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
  /**
   * Databases on disk but not open: since when, whether their archive is
   * complete, and when to try again to complete it.
   */
  private readonly closed = new Map<string, { at: number; complete: boolean; retryAt?: number; retryMs?: number }>();
  /** Opens, closes and evictions of one database run one at a time. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly snapshotter: Snapshotter;
  private readonly maintenanceTimer: NodeJS.Timeout;
  /** The startup scan of the data directory (see scanDataDir). */
  private readonly scanning: Promise<void>;
  private readonly startedAt = Date.now();
  private lastError?: string;
  private lastUploadAt?: number;
  private lastSnapshotAt?: number;
  private restores = 0;
  private evictions = 0;
  private stopped = false;
  private maintaining = false;

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
    this.maintenanceTimer = setInterval(() => void this.maintain(), Math.max(250, Math.min(options.eviction.idleMs / 2, MAINTAIN_MS)));
    this.maintenanceTimer.unref();
    this.scanning = this.scanDataDir().catch((err: unknown) => log('scan of %s failed: %s', options.dataDir, messageOf(err)));
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

  /** ReplicaSource: the `archive` section of `/status`. */
  statusSections(): { archive: ArchiveStatus } {
    return { archive: this.status() };
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
  open(databaseId: string, options: { siteId?: Uint8Array } = {}): Promise<Replica> {
    return this.locked(databaseId, () => this.openLocked(databaseId, options.siteId));
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

  /** ReplicaSource: whether the database has a copy on this disk (else its open restores it). */
  hasLocalCopy(databaseId: string): Promise<boolean> {
    return pathExists(databaseDirectory(this.options.dataDir, databaseId));
  }

  /** ReplicaSource: the last stamp the archive holds of an open database. */
  archivedStamp(databaseId: string): Buffer | undefined {
    return this.opened.get(databaseId)?.shipper.archivedStamp;
  }

  /** ReplicaSource: removes the local copy of a closed database; its next open restores it from the archive. */
  discard(databaseId: string): Promise<void> {
    return this.locked(databaseId, async () => {
      if (this.opened.has(databaseId)) throw new Error(`${databaseId} is open: close it before discarding its local copy`);
      await rm(databaseDirectory(this.options.dataDir, databaseId), { recursive: true, force: true });
      this.closed.delete(databaseId);
      log('discarded the local copy of %s', databaseId);
    });
  }

  /** ReplicaSource: this process now archives an open database (it took the cluster's lease): catch up. */
  wakeArchive(databaseId: string): void {
    this.opened.get(databaseId)?.shipper.wake();
  }

  /**
   * ReplicaSource: another node archived an open database up to `stamp`;
   * recorded in its store too, so that eviction and a later lease start
   * from there instead of uploading again what the archive holds.
   */
  async archivedElsewhere(databaseId: string, stamp: Buffer): Promise<void> {
    const entry = this.opened.get(databaseId);
    if (!entry) return;
    const before = entry.shipper.archivedStamp;
    const committed = entry.replica.committedStamp;
    // Only what this copy holds counts: its own commits past `stamp` are not archived by anyone yet as far as it knows.
    const upTo = committed && compareHlc(stamp, committed) > 0 ? committed : stamp;
    if (before && compareHlc(upTo, before) <= 0) return;
    entry.shipper.advance(upTo);
    await entry.replica.markArchived(upTo);
  }

  private archives(databaseId: string): boolean {
    return this.options.archives?.(databaseId) ?? true;
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
    this.stopped = true;
    clearInterval(this.maintenanceTimer);
    await this.scanning;
    await this.snapshotter.close();
    await this.options.archive.close();
  }

  private async openLocked(databaseId: string, siteId?: Uint8Array): Promise<Replica> {
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
      ...(siteId ? { siteId } : {}),
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
      }, () => this.archives(databaseId));
    } catch (err) {
      await replica.close();
      throw err;
    }
    this.opened.set(databaseId, { replica, shipper });
    this.closed.delete(databaseId);
    this.snapshotter.track(databaseId, replica, shipper, () => this.archives(databaseId));
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
      const body = await gzip(Buffer.from(commit.changeSetsJson, 'utf8'));
      const key = batchKey(databaseId, commit.after, commit.last);
      try {
        await archive.put(key, body, { contentType: 'application/gzip' });
      } catch (err) {
        // The upload may have landed with only its answer lost: the commit is
        // refused, so its batch must not outlive it. Restores already skip
        // such an orphan once a later commit follows the same stamp; deleting
        // it also covers the case where none does.
        this.forget(key);
        throw err;
      }
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

  /** Deletes the batch of a refused ack-mode commit, retrying in the background until the archive answers. */
  private forget(key: string, attempt = 0): void {
    this.options.archive.delete([key]).catch(() => {
      if (attempt >= 20 || this.stopped) return;
      const timer = setTimeout(() => this.forget(key, attempt + 1), Math.min(30_000, 500 * 2 ** attempt));
      timer.unref();
    });
  }

  /**
   * Keeps databases that are on disk but not open in order: one whose
   * archive is incomplete (closed during an outage, or left by a crash) is
   * opened briefly to finish archiving, retried with backoff until the
   * archive answers, so nothing stays only on a disk that may be lost; one
   * idle for diskEvictionIdleMs with a complete archive is removed from disk.
   */
  private async maintain(): Promise<void> {
    if (this.maintaining || this.stopped) return;
    this.maintaining = true;
    try {
      const { enabled, idleMs } = this.options.eviction;
      for (const [databaseId, state] of [...this.closed]) {
        if (this.stopped) return;
        const now = this.now();
        const due = !state.complete ? (state.retryAt ?? 0) <= now : enabled && now - state.at >= idleMs;
        if (!due) continue;
        await this.locked(databaseId, async () => {
          const current = this.closed.get(databaseId);
          if (!current || this.opened.has(databaseId) || this.stopped) return;
          if (!current.complete) {
            current.complete = await this.finishArchiving(databaseId).catch((err: unknown) => {
              log('archiving closed database %s failed: %s', databaseId, messageOf(err));
              return false;
            });
            if (!current.complete) {
              current.retryMs = Math.min(MAINTAIN_MS * 12, (current.retryMs ?? MAINTAIN_MS / 2) * 2);
              current.retryAt = this.now() + current.retryMs;
              return;
            }
            log('archived %s, closed with a backlog', databaseId);
          }
          if (!enabled || this.now() - current.at < idleMs) return;
          await rm(databaseDirectory(this.options.dataDir, databaseId), { recursive: true, force: true });
          this.closed.delete(databaseId);
          this.evictions++;
          this.options.metrics.evictionsTotal.inc();
          log('evicted %s from disk (idle %d s, archive complete)', databaseId, Math.round((this.now() - current.at) / 1000));
        }).catch((err: unknown) => log('maintenance of %s failed: %s', databaseId, messageOf(err)));
      }
    } finally {
      this.maintaining = false;
    }
  }

  /**
   * Finds the databases already on disk when the coordinator starts, so the
   * ones a crash or an outage left with an unarchived backlog are archived
   * (and idle ones evicted) even if no client opens them again; removes the
   * leftovers of restores a crash interrupted.
   */
  private async scanDataDir(): Promise<void> {
    const root = this.options.dataDir;
    const walk = async (rel: string, depth: number): Promise<void> => {
      let entries;
      try {
        entries = await readdir(join(root, rel), { withFileTypes: true });
      } catch {
        return;
      }
      if (entries.some((e) => e.name === 'CURRENT' && e.isFile())) {
        const databaseId = databaseIdFromDirectory(rel);
        if (databaseId !== undefined) await this.noteOnDisk(databaseId);
        return;
      }
      for (const entry of entries) {
        if (!entry.isDirectory() || entry.name.startsWith('.') || this.stopped) continue;
        const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
        if (/\.restoring-[0-9a-f-]{36}$/.test(entry.name)) {
          // Interrupted before this process started (a restore under way now is younger).
          const info = await stat(join(root, path)).catch(() => undefined);
          if (info && info.mtimeMs < this.startedAt) await rm(join(root, path), { recursive: true, force: true });
          continue;
        }
        if (depth < 4) await walk(path, depth + 1);
      }
    };
    await walk('', 0);
  }

  /** Records a database found on disk, with whether its archive is complete (read from its store). */
  private noteOnDisk(databaseId: string): Promise<void> {
    return this.locked(databaseId, async () => {
      if (this.opened.has(databaseId) || this.closed.has(databaseId) || this.stopped) return;
      const store = await openLevelStore(databaseDirectory(this.options.dataDir, databaseId), { createIfMissing: false });
      let complete: boolean;
      try {
        const [last, archived] = await store.getMany([META_LAST_STAMP, META_ARCHIVED]);
        complete = !last || (archived !== undefined && compareHlc(archived, last) >= 0);
      } finally {
        await store.close();
      }
      this.closed.set(databaseId, { at: this.now(), complete });
    }).catch((err: unknown) => log('cannot read the archive state of %s: %s', databaseId, messageOf(err)));
  }

  /** Opens a closed database just long enough to archive what it holds; true when complete. */
  private async finishArchiving(databaseId: string): Promise<boolean> {
    // Another node archives it (a cluster): what this copy holds is in the shared log until archived.
    if (!this.archives(databaseId)) return true;
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
