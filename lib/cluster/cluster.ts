import { SyncError, ErrorCode, messageOf } from '../errors.js';
import { logs } from '../log.js';
import type { Hub } from '../hub/hub.js';
import { compareHlc } from '../protocol/hlc.js';
import type { ValidChangeSet } from '../protocol/validate.js';
import type { ApplyOutcome, Replica } from '../replica/replica.js';
import type { ReplicaSource, WritePath } from '../service/coordinator.js';
import type { LogEntry, RedisLog, Tail } from './redis-log.js';
import { compareEntryIds, entryIdOf } from './stamps.js';

const log = logs.cluster;

/** How long an open or a write waits for the Redis connection before STORAGE_UNAVAILABLE. */
const CONNECT_WAIT_MS = 2000;
/** How long an outcome of this node's append waits for its append to return (its tail may apply it first). */
const UNCLAIMED_OUTCOME_MS = 60_000;

interface Waiter { resolve(outcome: ApplyOutcome): void; reject(err: unknown): void }

interface OpenDatabase {
  replica: Replica;
  tail: Tail;
  /** This node's appends whose entries the tail has not applied yet, by entry id. */
  waiters: Map<string, Waiter>;
  /** Outcomes of this node's entries applied before their append returned, by entry id. */
  early: Map<string, { outcome: ApplyOutcome; at: number }>;
  /** Why the log can no longer be followed, once it cannot. */
  broken?: Error;
}

/**
 * A coordinator node of a cluster (docs: README "Scale out"): every
 * database's accepted messages go through one shared log, a Redis Stream
 * (RedisLog), and every node applies each open database's log, in log
 * order, to its own replica under stamps derived from the entry ids
 * (stamps.ts), so all nodes hold the same state and hand out the same
 * cursors. As a WritePath it appends a message and resolves once this
 * node's replica has applied that entry; as a ReplicaSource it opens
 * replicas with the database's shared server site id and follows their log
 * while they are open, pushing every applied entry to this node's sockets.
 */
export class Cluster implements WritePath, ReplicaSource {
  private readonly redis: RedisLog;
  private readonly base: ReplicaSource;
  private readonly nodeId: string;
  private readonly hub: Hub;
  private readonly open_ = new Map<string, OpenDatabase>();

  constructor(redis: RedisLog, base: ReplicaSource, hub: Hub, nodeId: string) {
    this.redis = redis;
    this.base = base;
    this.hub = hub;
    this.nodeId = nodeId;
  }

  /** ReplicaSource: opens a database with its cluster-wide site id and starts following its log. */
  async open(databaseId: string): Promise<Replica> {
    // A node just started, or Redis just came back: wait a moment for the connection.
    await this.redis.ready(CONNECT_WAIT_MS);
    const siteId = await this.redis.siteIdOf(databaseId);
    const replica = await this.base.open(databaseId, { siteId });
    try {
      const committed = replica.committedStamp;
      const after = committed ? entryIdOf(committed) : '0-0';
      if (committed) {
        // A replica whose stamps the log does not reach (it was restored from
        // an archive the stream was trimmed past): the log continues above it.
        const info = await this.redis.info(databaseId);
        if (!info.lastId || compareEntryIds(info.lastId, after) < 0) await this.redis.barrier(databaseId, after);
      }
      const entry: OpenDatabase = { replica, waiters: new Map(), early: new Map(), tail: undefined as unknown as Tail };
      entry.tail = this.redis.tail(databaseId, after, siteId, {
        onEntries: (entries) => this.apply(databaseId, entry, entries),
        onBroken: (err) => {
          entry.broken = err;
          log('the log of %s cannot be followed from %s: %s', databaseId, entry.tail.position, err.message);
          for (const waiter of entry.waiters.values()) waiter.reject(err);
          entry.waiters.clear();
        },
      });
      this.open_.set(databaseId, entry);
      return replica;
    } catch (err) {
      await this.base.close(databaseId, replica);
      throw err;
    }
  }

  /** ReplicaSource: stops following the log, then closes the replica. */
  async close(databaseId: string, replica: Replica): Promise<void> {
    const entry = this.open_.get(databaseId);
    if (entry?.replica === replica) {
      this.open_.delete(databaseId);
      entry.tail.stop();
      const closing = new SyncError(ErrorCode.StoreClosed, `${databaseId} closed before its log entry was applied here; the write is in the log and every node applies it`);
      for (const waiter of entry.waiters.values()) waiter.reject(closing);
    }
    await this.base.close(databaseId, replica);
  }

  status(): object {
    const databases: Record<string, string> = {};
    for (const [db, entry] of this.open_) databases[db] = entry.tail.position;
    return { node: this.nodeId, ...(this.base.status ? { archive: this.base.status() } : {}), logPositions: databases };
  }

  /**
   * WritePath: appends the message to the database's log (STORAGE_UNAVAILABLE
   * when Redis cannot take it), and resolves with its outcome once this
   * node's replica has applied it, in log order with every other node's.
   */
  async commit(databaseId: string, _replica: Replica, origin: string, sets: ValidChangeSet[]): Promise<ApplyOutcome> {
    const entry = this.open_.get(databaseId);
    if (!entry) throw new SyncError(ErrorCode.StoreClosed, `${databaseId} is not open on this node`);
    if (entry.broken) throw new SyncError(ErrorCode.StorageUnavailable, `the log of ${databaseId} cannot be followed here (${entry.broken.message}); try again`);
    await this.redis.ready(CONNECT_WAIT_MS);
    const id = await this.redis.append(databaseId, { sets, site: origin });
    const early = entry.early.get(id);
    if (early) {
      entry.early.delete(id);
      return early.outcome;
    }
    return new Promise<ApplyOutcome>((resolve, reject) => entry.waiters.set(id, { resolve, reject }));
  }

  /** Applies a batch of log entries to this node's replica, pushes them, and answers this node's appends. */
  private async apply(databaseId: string, entry: OpenDatabase, entries: LogEntry[]): Promise<void> {
    const committed = entry.replica.committedStamp;
    // Redelivered after a failure, or below the replica (restored): apply only what is new.
    const fresh = entries.filter((e) => e.sets.length > 0 && !e.corrupt && (!committed || compareHlc(e.stamps.at(-1)!, committed) > 0));
    for (const e of entries) if (e.corrupt) log('skipping corrupt entry %s of %s: %s', e.id, databaseId, e.corrupt);
    let outcomes: ApplyOutcome[] = [];
    if (fresh.length > 0) {
      try {
        outcomes = await entry.replica.replayMessages(fresh.map((e) => e.sets), fresh.map((e) => e.stamps));
      } catch (err) {
        log('applying the log of %s failed (retrying): %s', databaseId, messageOf(err));
        throw err;
      }
    }
    const now = Date.now();
    for (const [key, early] of entry.early) if (now - early.at > UNCLAIMED_OUTCOME_MS) entry.early.delete(key);
    // An append of this node the replica already held (a batch delivered again after a failure): nothing new.
    for (const e of entries) {
      const waiter = e.node === this.nodeId && !fresh.includes(e) ? entry.waiters.get(e.id) : undefined;
      if (!waiter) continue;
      entry.waiters.delete(e.id);
      let changes = 0;
      for (const set of e.sets) changes += set.changes.length + set.migrations.length;
      waiter.resolve({ applied: 0, skipped: changes, conflicts: 0, transactions: e.sets.length, accepted: [], stamps: [] });
    }
    fresh.forEach((e, i) => {
      const outcome = outcomes[i]!;
      this.hub.publish(databaseId, e.site, outcome.accepted, outcome.stamps);
      if (e.node !== this.nodeId) return;
      const waiter = entry.waiters.get(e.id);
      if (waiter) {
        entry.waiters.delete(e.id);
        waiter.resolve(outcome);
      } else {
        entry.early.set(e.id, { outcome, at: now });
      }
    });
  }
}
