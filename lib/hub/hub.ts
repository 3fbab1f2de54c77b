import type { ChangeSet } from '../protocol/messages.js';
import type { Metrics } from '../metrics/metrics.js';
import { Push } from '../delivery/push.js';

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
}

/**
 * Sessions per database and fan-out of committed change sets. A push is
 * built and serialized once and the same text goes to every subscriber.
 */
export class Hub {
  private readonly databases = new Map<string, Set<Subscriber>>();
  private readonly metrics: Metrics;

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
   */
  publishSoon(databaseId: string, fromSite: string, accepted: readonly ChangeSet[], stamps: readonly Buffer[]): void {
    if (accepted.length === 0 || !this.databases.has(databaseId)) return;
    setImmediate(() => this.publish(databaseId, fromSite, accepted, stamps));
  }

  /** Every subscriber, across databases. */
  get size(): number {
    let n = 0;
    for (const set of this.databases.values()) n += set.size;
    return n;
  }

  /**
   * Offers the change sets one message committed (`accepted[i]` stamped
   * `stamps[i]`) to every subscriber of the database except those of
   * `fromSite`. Must be called in commit order, right after the commit.
   */
  publish(databaseId: string, fromSite: string, accepted: readonly ChangeSet[], stamps: readonly Buffer[]): number {
    const set = this.databases.get(databaseId);
    if (!set || accepted.length === 0) return 0;
    let push: Push | undefined;
    let delivered = 0;
    for (const subscriber of set) {
      if (subscriber.siteId === fromSite) continue;
      push ??= new Push(accepted, stamps);
      if (subscriber.offer(push)) delivered++;
      else this.metrics.broadcastErrorsTotal.inc();
    }
    if (delivered > 0) this.metrics.changesBroadcastTotal.inc(delivered * accepted.length);
    return delivered;
  }
}
