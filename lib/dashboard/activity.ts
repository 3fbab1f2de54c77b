import type { ChangeSet } from '../protocol/messages.js';
import { hlcWallTime } from '../protocol/hlc.js';
import { BucketCounter } from './histogram.js';

/** Upper bounds of the push latency buckets, in ms (stamps carry whole milliseconds). */
export const PUSH_LATENCY_BOUNDS_MS: readonly number[] = Object.freeze([1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000]);

/** What one database did while it was watched. */
export interface DatabaseActivity {
  /** Changes and schema migrations committed, cumulative. */
  changes: number;
  /** When the last commit was seen, ms since the epoch. */
  lastWriteAt: number;
}

/**
 * What the hub's commits show while the dashboard is watched (the hub's
 * PublishObserver): per database the changes committed and the time of the
 * last commit, the pushes sent live, and the push latency: the time from a
 * commit's stamp (taken when its write began; in a cluster, the log entry's
 * time) to its push being queued on the subscribers' sockets, once per
 * subscriber. Counters are cumulative; the sampler takes differences.
 */
export class Activity {
  /** push_changes frames queued live on sockets. */
  pushes = 0;
  readonly pushLatency = new BucketCounter(PUSH_LATENCY_BOUNDS_MS);
  private readonly databases = new Map<string, DatabaseActivity>();
  private readonly now: () => number;

  /** `now`: the wall clock in ms, the one stamps follow. */
  constructor(now: () => number) {
    this.now = now;
  }

  /** The hub's PublishObserver. */
  readonly record = (databaseId: string, accepted: readonly ChangeSet[], stamps: readonly Buffer[], delivered: number): void => {
    const now = this.now();
    let changes = 0;
    for (const set of accepted) changes += set.changes.length + set.schemaMigrations.length;
    const entry = this.databases.get(databaseId);
    if (entry) {
      entry.changes += changes;
      entry.lastWriteAt = now;
    } else {
      this.databases.set(databaseId, { changes, lastWriteAt: now });
    }
    if (delivered > 0 && stamps.length > 0) {
      this.pushes += delivered;
      this.pushLatency.observe(Math.max(0, now - hlcWallTime(stamps[stamps.length - 1]!)), delivered);
    }
  };

  /** Cumulative changes per database seen so far. */
  changesByDatabase(): Map<string, number> {
    const out = new Map<string, number>();
    for (const [id, entry] of this.databases) out.set(id, entry.changes);
    return out;
  }

  /** What was seen of one database, if anything. */
  of(databaseId: string): Readonly<DatabaseActivity> | undefined {
    return this.databases.get(databaseId);
  }

  /** Forgets databases with no commit since `before` (ms) that `keep` does not name, so the map stays bounded. */
  prune(before: number, keep: (databaseId: string) => boolean): void {
    for (const [id, entry] of this.databases) if (entry.lastWriteAt < before && !keep(id)) this.databases.delete(id);
  }
}
