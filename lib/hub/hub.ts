import type { ChangeSet } from '../protocol/messages.js';
import type { Metrics } from '../metrics/metrics.js';

/** A party that receives pushes for one database (a WebSocket session). */
export interface Subscriber {
  readonly databaseId: string;
  /** Site id (base64url); pushes never go back to the same site. */
  readonly siteId: string;
  /**
   * Sends an already serialized push. Returns false when the subscriber could
   * not take it (closed, or lagging behind); it then catches up by cursor.
   */
  push(frame: string): boolean;
}

/**
 * Sessions per database and fan-out of applied change sets. A push is
 * serialized once and the same text goes to every subscriber.
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

  /** Every subscriber, across databases. */
  get size(): number {
    let n = 0;
    for (const set of this.databases.values()) n += set.size;
    return n;
  }

  /** Sends `changeSets` to every subscriber of the database except those of `fromSite`. */
  publish(databaseId: string, fromSite: string, changeSets: ChangeSet[]): number {
    const set = this.databases.get(databaseId);
    if (!set || changeSets.length === 0) return 0;
    let frame: string | undefined;
    let delivered = 0;
    for (const subscriber of set) {
      if (subscriber.siteId === fromSite) continue;
      frame ??= JSON.stringify({ type: 'push_changes', changeSets });
      if (subscriber.push(frame)) delivered++;
      else this.metrics.broadcastErrorsTotal.inc();
    }
    if (delivered > 0) this.metrics.changesBroadcastTotal.inc(delivered * changeSets.length);
    return delivered;
  }
}
