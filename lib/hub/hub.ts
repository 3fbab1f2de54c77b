import { changeCount, type ChangeSet } from '../protocol/messages.js';
import type { Metrics } from '../metrics/metrics.js';
import { Push, type CommittedSets } from '../delivery/push.js';

/** A party that receives pushes for one database (a WebSocket session). */
export interface Subscriber {
  readonly databaseId: string;
  /** Site id (base64url); pushes never go back to the same site. */
  readonly siteId: string;
  /**
   * Offers a committed push. Returns false when the subscriber did not send
   * it now (closed, catching up, or behind); its delivery stream then sends
   * it from the stored log, so nothing is lost.
   */
  offer(push: Push): boolean;
  /** Closes the subscriber's connection with a WebSocket close code; it may reconnect. */
  close?(code: number, reason: string): void;
  /** True while its delivery stream sends the stored log instead of live pushes (catching up, or recovering from a lag). */
  readonly catchingUp?: boolean;
}

/**
 * Most changes (and schema migrations) publishSoon puts in one push when it
 * joins consecutive commits: about what a real client sends in one batch
 * (docs/protocol.md §8), so a joined frame is never bigger than frames
 * clients already send and receive.
 */
export const COALESCED_PUSH_CHANGES = 1000;

interface QueuedPublish { fromSite: string; accepted: ChangeSet[]; stamps: Buffer[]; acceptedJson: string[]; changes: number }

/**
 * Told of every commit `publish` sees, right after it was offered:
 * `accepted` the change sets, `stamps` their stamps, `delivered` the
 * subscribers that were sent it live.
 */
export type PublishObserver = (databaseId: string, accepted: readonly ChangeSet[], stamps: readonly Buffer[], delivered: number) => void;

/**
 * Sessions per database and fan-out of committed change sets. A push is
 * built and serialized once and the same text goes to every subscriber.
 */
export class Hub {
  private readonly databases = new Map<string, Set<Subscriber>>();
  private readonly metrics: Metrics;
  private readonly observers = new Set<PublishObserver>();
  /** Commits publishSoon holds per database until its setImmediate runs. */
  private readonly queued = new Map<string, QueuedPublish[]>();

  constructor(metrics: Metrics) {
    this.metrics = metrics;
  }

  join(subscriber: Subscriber): void {
    let set = this.databases.get(subscriber.databaseId);
    if (!set) {
      set = new Set();
      this.databases.set(subscriber.databaseId, set);
    }
    set.add(subscriber);
  }

  leave(subscriber: Subscriber): void {
    const set = this.databases.get(subscriber.databaseId);
    if (!set) return;
    set.delete(subscriber);
    if (set.size === 0) this.databases.delete(subscriber.databaseId);
  }

  /** Closes every subscriber of `databaseId` that can be closed (Subscriber.close). */
  closeAll(databaseId: string, code: number, reason: string): void {
    for (const subscriber of [...(this.databases.get(databaseId) ?? [])]) subscriber.close?.(code, reason);
  }

  /**
   * Like `publish`, but fans out once the current I/O callback and its
   * microtasks are done (setImmediate), so the writer's acknowledgement goes
   * out before the pushes to every other socket. Calls keep their order, so
   * pushes stay in commit order; a subscriber that reads the log meanwhile
   * is not sent twice (its stream skips stamps it already holds).
   *
   * Commits queued for one database in the same turn (a group commit of
   * several messages) from the same site, one after another, go out as ONE
   * push of at most COALESCED_PUSH_CHANGES changes: one frame and one write
   * per subscriber instead of one per message. Still in stamp order, so a
   * subscriber sees exactly what separate pushes would have given it.
   */
  publishSoon(databaseId: string, fromSite: string, commit: CommittedSets): void {
    const { accepted, stamps, acceptedJson } = commit;
    if (accepted.length === 0 || !this.databases.has(databaseId)) return;
    let queue = this.queued.get(databaseId);
    if (!queue) {
      queue = [];
      this.queued.set(databaseId, queue);
      setImmediate(() => this.publishQueued(databaseId));
    }
    const changes = changeCount(accepted);
    const last = queue[queue.length - 1];
    if (last && last.fromSite === fromSite && last.changes + changes <= COALESCED_PUSH_CHANGES) {
      last.accepted.push(...accepted);
      last.stamps.push(...stamps);
      last.acceptedJson.push(...acceptedJson);
      last.changes += changes;
    } else {
      queue.push({ fromSite, accepted: [...accepted], stamps: [...stamps], acceptedJson: [...acceptedJson], changes });
    }
  }

  private publishQueued(databaseId: string): void {
    const queue = this.queued.get(databaseId);
    this.queued.delete(databaseId);
    for (const one of queue ?? []) this.publish(databaseId, one.fromSite, one);
  }

  /** Every subscriber, across databases. */
  get size(): number {
    let n = 0;
    for (const set of this.databases.values()) n += set.size;
    return n;
  }

  /** Subscribers per database, for databases that have any. */
  clientCounts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const [id, set] of this.databases) counts.set(id, set.size);
    return counts;
  }

  /** Subscribers whose stream is sending them the stored log rather than live pushes. */
  catchingUp(): number {
    let n = 0;
    for (const set of this.databases.values()) for (const subscriber of set) if (subscriber.catchingUp) n++;
    return n;
  }

  /** Calls `observer` after every publish until the returned function is called (the dashboard, while it is watched). */
  observe(observer: PublishObserver): () => void {
    this.observers.add(observer);
    return () => { this.observers.delete(observer); };
  }

  /**
   * Offers the change sets one message committed (`accepted[i]` stamped
   * `stamps[i]`, its text `acceptedJson[i]`) to every subscriber of the
   * database except those of `fromSite`. Must be called in commit order,
   * right after the commit.
   */
  publish(databaseId: string, fromSite: string, commit: CommittedSets): number {
    const { accepted, stamps, acceptedJson } = commit;
    if (accepted.length === 0) return 0;
    const set = this.databases.get(databaseId);
    let delivered = 0;
    if (set) {
      let push: Push | undefined;
      for (const subscriber of set) {
        if (subscriber.siteId === fromSite) continue;
        push ??= new Push(stamps, acceptedJson);
        if (subscriber.offer(push)) delivered++;
        else this.metrics.broadcastErrorsTotal.inc();
      }
      if (delivered > 0) this.metrics.changesBroadcastTotal.inc(delivered * accepted.length);
    }
    for (const observer of this.observers) observer(databaseId, accepted, stamps, delivered);
    return delivered;
  }
}
