import { randomUUID } from 'node:crypto';
import { ErrorCode, isSyncError, messageOf } from '../errors.js';
import { compareHlc } from '../protocol/hlc.js';
import type { Replica } from '../replica/replica.js';
import type { Archive } from './archive.js';
import { LAYOUT_FORMAT, databaseKey, manifestKey, parseBatchKey, parseSnapshotKey, snapshotKey, stampHex, type Manifest } from './layout.js';
import { encodeSnapshot } from './snapshot-format.js';
import type { Shipper } from './shipper.js';

/** When snapshots are taken and how many are kept. */
export interface SnapshotPolicy {
  /** A database with changes gets a snapshot at least this often, in ms. */
  intervalMs: number;
  /** ...or as soon as this many changes were committed since its last one. */
  changes: number;
  /** Snapshots kept per database; older ones, and the batches they make unnecessary, are deleted. */
  kept: number;
}

/** What the snapshotter reports to the durability layer. */
export interface SnapshotEvents {
  taken(databaseId: string, key: string, ms: number): void;
  failed(databaseId: string, err: unknown): void;
}

interface Tracked {
  replica: Replica;
  shipper: Shipper;
  changes: number;
  lastAt: number;
  /** The snapshot being taken, if any. */
  running?: Promise<void>;
  /** Set when the shipper fell behind retention: the next snapshot is urgent. */
  urgent: boolean;
  /** False while another node archives this database (a cluster): no snapshots then. */
  archives: () => boolean;
}

/**
 * Takes each open database's snapshots (snapshot-format.ts) and keeps the
 * archive tidy: every `intervalMs` for a database that changed, or after
 * `changes` changes, streamed from one consistent view of the store through
 * gzip into a multipart upload, so memory stays bounded whatever the
 * database's size. One snapshot at a time in the process. After each, the
 * manifest lists the kept snapshots, newest first, and objects older than
 * the oldest kept snapshot are deleted.
 */
export class Snapshotter {
  private readonly archive: Archive;
  private readonly policy: SnapshotPolicy;
  private readonly events: SnapshotEvents;
  private readonly now: () => number;
  private readonly tracked = new Map<string, Tracked>();
  private readonly timer: NodeJS.Timeout;
  /** Snapshots run one after another: each holds a store iterator and an upload. */
  private queue: Promise<void> = Promise.resolve();

  constructor(archive: Archive, policy: SnapshotPolicy, events: SnapshotEvents, now: () => number = Date.now) {
    this.archive = archive;
    this.policy = policy;
    this.events = events;
    this.now = now;
    this.timer = setInterval(() => this.check(), Math.max(1000, Math.min(policy.intervalMs, 30_000)));
    this.timer.unref();
  }

  /** Starts watching an open database; while `archives()` is false its snapshots wait. */
  track(databaseId: string, replica: Replica, shipper: Shipper, archives: () => boolean = () => true): void {
    this.tracked.set(databaseId, { replica, shipper, changes: 0, lastAt: this.now(), urgent: false, archives });
  }

  /**
   * A commit of `changes` changes was stored. A snapshot is due after
   * `policy.changes` changes, and at least half the database's size: a
   * snapshot streams (reads, gzips, hashes) the whole database, so a growing
   * or busy one is not streamed again every few seconds (its batches carry
   * the changes). With a tenth, a database growing under load was streamed
   * about eleven times its final size in all, which cost serial loads in
   * `async` mode about two thirds of their throughput in the bench; with
   * half, three times, while a restore replays at most about half a
   * database of batches after its snapshot.
   */
  committed(databaseId: string, changes: number): void {
    const t = this.tracked.get(databaseId);
    if (!t) return;
    t.changes += changes;
    if (t.changes >= this.policy.changes && t.changes >= sizeOf(t.replica) / 2) this.schedule(databaseId, t);
  }

  /** The database's log no longer reaches its archived stamp: snapshot now. */
  urgent(databaseId: string): void {
    const t = this.tracked.get(databaseId);
    if (!t) return;
    t.urgent = true;
    this.schedule(databaseId, t);
  }

  /** Stops watching a database (before its replica closes), waiting for its snapshot in progress. */
  async untrack(databaseId: string): Promise<void> {
    const t = this.tracked.get(databaseId);
    this.tracked.delete(databaseId);
    await t?.running;
  }

  /** Takes a snapshot of a tracked database now (for tests and the CLI); resolves with its key. */
  snapshotNow(databaseId: string): Promise<string | undefined> {
    const t = this.tracked.get(databaseId);
    if (!t) return Promise.resolve(undefined);
    let key: string | undefined;
    const run = this.queue.then(async () => { key = await this.take(databaseId, t); });
    this.queue = run.catch(() => undefined);
    return run.then(() => key);
  }

  /** Stops the timer and waits for the snapshot in progress. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.queue;
  }

  private check(): void {
    const now = this.now();
    for (const [id, t] of this.tracked) {
      if (t.changes > 0 && now - t.lastAt >= this.policy.intervalMs) this.schedule(id, t);
    }
  }

  private schedule(databaseId: string, t: Tracked): void {
    if (t.running || !t.archives()) return;
    t.running = this.queue.then(async () => {
      if (this.tracked.get(databaseId) !== t) return;
      try {
        await this.take(databaseId, t);
      } catch (err) {
        this.events.failed(databaseId, err);
      }
    }).finally(() => { t.running = undefined; });
    this.queue = t.running;
  }

  /** Streams one snapshot up, then rewrites the manifest and prunes. */
  private async take(databaseId: string, t: Tracked): Promise<string> {
    const started = this.now();
    const changesBefore = t.changes;
    // The iterator's view holds at least everything up to this stamp.
    const stamp = t.replica.committedStamp;
    const key = snapshotKey(databaseId, stamp, randomUUID());
    const body = encodeSnapshot(
      { format: 1, databaseId, siteId: t.replica.siteIdWire, stamp: stamp ? stampHex(stamp) : null, createdAt: started },
      t.replica.entries(),
    );
    await this.archive.put(key, body, { contentType: 'application/gzip' });
    t.changes = Math.max(0, t.changes - changesBefore);
    t.lastAt = this.now();
    if (stamp && t.urgent) {
      // The log no longer reaches back to the archived stamp: this snapshot
      // is what carries the archive forward. Otherwise the shipper's batches
      // stay the record, so an older snapshot plus batches still restores
      // if this one is ever found corrupt.
      await t.replica.markArchived(stamp);
      t.shipper.advance(stamp);
    }
    t.urgent = false;
    await this.rewriteManifest(databaseId, t.replica.siteIdWire);
    this.events.taken(databaseId, key, this.now() - started);
    // Commits made while it streamed are the shipper's.
    t.shipper.wake();
    return key;
  }

  /** Lists the snapshots, keeps the newest `kept` in the manifest and deletes what only older ones needed. */
  private async rewriteManifest(databaseId: string, siteId: string): Promise<void> {
    const snapshots: { key: string; stamp: Buffer }[] = [];
    const batches: { key: string; last: Buffer }[] = [];
    for await (const object of this.archive.list(databaseKey(databaseId))) {
      const snapshot = parseSnapshotKey(databaseId, object.key);
      if (snapshot) snapshots.push({ key: object.key, stamp: snapshot.stamp });
      const batch = parseBatchKey(databaseId, object.key);
      if (batch) batches.push({ key: object.key, last: batch.last });
    }
    snapshots.sort((a, b) => compareHlc(b.stamp, a.stamp));
    const kept = snapshots.slice(0, this.policy.kept);
    const manifest: Manifest = {
      format: LAYOUT_FORMAT, databaseId, siteId,
      snapshots: kept.map((s) => ({ key: s.key, stamp: stampHex(s.stamp) })),
      updatedAt: this.now(),
    };
    await this.archive.put(manifestKey(databaseId), Buffer.from(JSON.stringify(manifest)), { contentType: 'application/json' });
    const oldest = kept.at(-1);
    if (!oldest) return;
    // The oldest kept snapshot holds everything up to its stamp: older batches and snapshots are not needed.
    const stale = [
      ...snapshots.slice(this.policy.kept).map((s) => s.key),
      ...batches.filter((b) => compareHlc(b.last, oldest.stamp) <= 0).map((b) => b.key),
    ];
    try {
      if (stale.length > 0) await this.archive.delete(stale);
    } catch (err) {
      // Left for the next snapshot's pruning; nothing depends on their absence.
      if (!(isSyncError(err) && err.code === ErrorCode.StorageUnavailable)) throw new Error(`pruning ${databaseId}: ${messageOf(err)}`);
    }
  }
}

/** Live column versions of a replica (its size, for the snapshot policy). */
function sizeOf(replica: Replica): number {
  let n = 0;
  for (const table of replica.tableStats()) n += table.count;
  return n;
}
