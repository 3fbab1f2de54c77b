import { SyncError, ErrorCode, isSyncError, messageOf } from '../errors.js';
import { logs } from '../log.js';
import type { Hub } from '../hub/hub.js';
import { compareHlc } from '../protocol/hlc.js';
import type { ValidChangeSet } from '../protocol/validate.js';
import type { ApplyOutcome, Replica } from '../replica/replica.js';
import type { ReplicaSource, WritePath } from '../service/coordinator.js';
import type { ClusterMetrics } from '../metrics/metrics.js';
import { LogGapError, trimmedPast, type LogEntry, type RedisLog, type Tail } from './redis-log.js';
import { compareEntryIds, entryIdAfter, entryIdOf, parseEntryId } from './stamps.js';

const log = logs.cluster;

/** How long an open or a write waits for the Redis connection before STORAGE_UNAVAILABLE. */
const CONNECT_WAIT_MS = 2000;
/** How long an outcome of this node's append waits for its append to return (its tail may apply it first). */
const UNCLAIMED_OUTCOME_MS = 60_000;
/** How long closing a database this node archives waits for its last uploads before handing over. */
const CLOSE_FLUSH_MS = 10_000;
/** Longest time between two rounds of trimming and lag figures (shorter when the retention is short). */
const UPKEEP_MS = 5000;

/** Options of a {@link Cluster} node. */
export interface ClusterOptions {
  /** This node's id (entries, logs, `/status`). */
  nodeId: string;
  /** How long a log keeps entries, in ms; with an archive, only archived ones go (SyncRouterOptions.clusterLogRetentionMs). */
  logRetentionMs: number;
  metrics: ClusterMetrics;
  /** Wall clock in ms. @default Date.now */
  now?: () => number;
  /**
   * Called when an open database's copy here can no longer follow its log
   * (the log was trimmed past it, or lost entries it holds): the database
   * should be closed and opened again, which restores or re-anchors it
   * (the router retires it from the pool and closes its sockets with 1013).
   */
  onStale?(databaseId: string, reason: string): void;
}

interface Waiter { resolve(outcome: ApplyOutcome): void; reject(err: unknown): void }

interface OpenDatabase {
  replica: Replica;
  /** Undefined while the database is open from its local copy only (opened while Redis was down). */
  tail?: Tail;
  /** This node's appends whose entries the tail has not applied yet, by entry id. */
  waiters: Map<string, Waiter>;
  /** Outcomes of this node's entries applied before their append returned, by entry id. */
  early: Map<string, { outcome: ApplyOutcome; at: number }>;
  /** Why the log can no longer be followed, once it cannot. */
  broken?: Error;
  /** Whether this node holds the database's archiver lease (with an archive). */
  archiver: boolean;
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
  private readonly metrics: ClusterMetrics;
  private readonly retentionMs: number;
  private readonly now: () => number;
  private readonly open_ = new Map<string, OpenDatabase>();
  /** Per open database: how far behind the last entry of its log this node was at the last upkeep, in s. */
  private readonly lag = new Map<string, number>();
  private readonly upkeepTimer: NodeJS.Timeout;
  /** How long an archiver lease lasts without renewal: three upkeep rounds. */
  private readonly leaseMs: number;
  private upkeeping = false;
  private closed = false;
  private readonly onStale?: (databaseId: string, reason: string) => void;

  constructor(redis: RedisLog, base: ReplicaSource, hub: Hub, options: ClusterOptions) {
    this.redis = redis;
    this.base = base;
    this.hub = hub;
    this.nodeId = options.nodeId;
    this.metrics = options.metrics;
    this.retentionMs = options.logRetentionMs;
    this.now = options.now ?? Date.now;
    this.onStale = options.onStale;
    const every = Math.max(250, Math.min(UPKEEP_MS, Math.floor(this.retentionMs / 4)));
    this.leaseMs = every * 3;
    this.upkeepTimer = setInterval(() => void this.upkeep(), every);
    this.upkeepTimer.unref();
  }

  /**
   * ReplicaSource: opens a database with its cluster-wide site id and starts
   * following its log. A local copy older than what the log still holds (the
   * node was away past the retention, or it is new) is discarded and restored
   * from the archive first; without an archive the open fails with
   * STORAGE_UNAVAILABLE, since serving that copy would hide changes forever.
   */
  async open(databaseId: string): Promise<Replica> {
    // A node just started, or Redis just came back: wait a moment for the connection.
    try {
      await this.redis.ready(CONNECT_WAIT_MS);
    } catch (err) {
      // Redis is down: a database this node has on disk is served from that
      // copy (reads, snapshots); writes wait until the log is followed again.
      if (isSyncError(err) && err.code === ErrorCode.StorageUnavailable && await this.base.hasLocalCopy?.(databaseId)) return this.openLocal(databaseId);
      throw err;
    }
    const siteId = await this.redis.siteIdOf(databaseId);
    // With an archive, an open without a copy on this disk restores (a node new to the database).
    const restoring = this.base.discard !== undefined && (await this.base.hasLocalCopy?.(databaseId)) === false;
    let replica = await this.base.open(databaseId, { siteId });
    try {
      let info = await this.redis.info(databaseId);
      // Its empty copy was older than the trimmed log: the archive alone brought it to where the log goes on.
      if (restoring && trimmedPast('0-0', info) && !trimmedPast(positionOf(replica), info)) this.metrics.catchUpsTotal.inc({ from: 'archive' });
      if (trimmedPast(positionOf(replica), info)) {
        const position = positionOf(replica);
        if (!this.base.discard) {
          this.metrics.catchUpsTotal.inc({ from: 'refused' });
          throw new SyncError(
            ErrorCode.StorageUnavailable,
            `this node cannot serve ${databaseId}: its copy ends at log entry ${position}, but the log was trimmed below ${info.trimmedBelow} and there is no archive to restore from ` +
              '(give the cluster an archive, or a clusterLogRetentionMs longer than any node stays away)',
          );
        }
        log('%s: this node holds the log up to %s, but it was trimmed below %s: restoring from the archive', databaseId, position, info.trimmedBelow);
        await this.base.close(databaseId, replica);
        await this.base.discard(databaseId);
        replica = await this.base.open(databaseId, { siteId });
        info = await this.redis.info(databaseId);
        if (trimmedPast(positionOf(replica), info)) {
          this.metrics.catchUpsTotal.inc({ from: 'refused' });
          throw new SyncError(ErrorCode.StorageUnavailable, `the archive of ${databaseId} ends at log entry ${positionOf(replica)}, below the log's trim point ${info.trimmedBelow}; try again once it has caught up`);
        }
        this.metrics.catchUpsTotal.inc({ from: 'archive' });
      }
      const entry: OpenDatabase = { replica, waiters: new Map(), early: new Map(), archiver: false };
      await this.follow(databaseId, entry, info);
      this.open_.set(databaseId, entry);
      // The first open of a database in the cluster archives it at once; others learn who does at the next upkeep.
      await this.elect(databaseId, entry).catch((err: unknown) => log('archiver lease of %s: %s', databaseId, messageOf(err)));
      return replica;
    } catch (err) {
      await this.base.close(databaseId, replica);
      throw err;
    }
  }

  /**
   * Starts following the log of an open database from its replica's
   * position. A replica whose stamps the log does not reach (restored from an
   * archive the stream was trimmed past, or the log lost its end) gets a
   * barrier first: the log continues above it.
   */
  private async follow(databaseId: string, entry: OpenDatabase, info: { lastId?: string }): Promise<void> {
    const after = positionOf(entry.replica);
    if (after !== '0-0' && (!info.lastId || compareEntryIds(info.lastId, after) < 0)) await this.redis.barrier(databaseId, after);
    const tail: Tail = this.redis.tail(databaseId, after, entry.replica.siteId, {
      onEntries: (entries) => this.apply(databaseId, entry, entries),
      onBroken: (err) => {
        entry.broken = err;
        log('the log of %s cannot be followed from %s: %s', databaseId, tail.position, err.message);
        for (const waiter of entry.waiters.values()) waiter.reject(err);
        entry.waiters.clear();
        // Trimmed past this node (it fell further behind than the retention): a reopen restores it.
        // A log that went backwards (LogRewoundError) is left to an operator rather than re-anchored.
        if (err instanceof LogGapError && this.open_.get(databaseId) === entry) this.stale(databaseId, `its log cannot be followed from ${tail.position} (${err.message})`);
      },
    });
    entry.tail = tail;
  }

  /**
   * Opens a database from this node's copy alone, while Redis is down:
   * reads and snapshots serve what the copy holds, writes are refused
   * (STORAGE_UNAVAILABLE) until an upkeep round, once Redis answers, checks
   * the copy against the log and starts following it (catchUpLocal).
   */
  private async openLocal(databaseId: string): Promise<Replica> {
    const replica = await this.base.open(databaseId);
    const entry: OpenDatabase = { replica, waiters: new Map(), early: new Map(), archiver: false };
    this.open_.set(databaseId, entry);
    this.metrics.catchUpsTotal.inc({ from: 'local' });
    log('%s: Redis is down; serving this node\'s copy (up to log entry %s) read-only until it is back', databaseId, positionOf(replica));
    return replica;
  }

  /**
   * A database opened from its local copy, once Redis answers: follows its
   * log if the copy is what the cluster's log continues; else (another site
   * id, or the log was trimmed past the copy) asks for a reopen (onStale),
   * which restores it.
   */
  private async catchUpLocal(databaseId: string, entry: OpenDatabase): Promise<void> {
    const siteId = await this.redis.siteIdOf(databaseId, entry.replica.siteId);
    const info = await this.redis.info(databaseId);
    if (this.open_.get(databaseId) !== entry || entry.tail) return;
    if (!siteId.equals(entry.replica.siteId)) {
      entry.broken = new SyncError(ErrorCode.Internal, `the copy of ${databaseId} here has another server site id than its cluster's log`);
      this.stale(databaseId, entry.broken.message);
      return;
    }
    if (trimmedPast(positionOf(entry.replica), info)) {
      entry.broken = new SyncError(ErrorCode.StorageUnavailable, `the copy of ${databaseId} here ends at log entry ${positionOf(entry.replica)}, below the log's trim point ${info.trimmedBelow}`);
      this.stale(databaseId, entry.broken.message);
      return;
    }
    await this.follow(databaseId, entry, info);
    log('%s: Redis is back; following its log from %s', databaseId, positionOf(entry.replica));
  }

  /** Asks for a reopen of a database whose copy here cannot go on (ClusterOptions.onStale). */
  private stale(databaseId: string, reason: string): void {
    log('%s must be reopened on this node: %s', databaseId, reason);
    this.onStale?.(databaseId, reason);
  }

  /** ReplicaSource: stops following the log, then closes the replica. */
  async close(databaseId: string, replica: Replica): Promise<void> {
    const entry = this.open_.get(databaseId);
    if (entry?.replica === replica) {
      this.open_.delete(databaseId);
      entry.tail?.stop();
      const closing = new SyncError(ErrorCode.StoreClosed, `${databaseId} closed before its log entry was applied here; the write is in the log and every node applies it`);
      for (const waiter of entry.waiters.values()) waiter.reject(closing);
      this.lag.delete(databaseId);
      this.metrics.streamLagSeconds.remove({ database: databaseId });
      if (entry.archiver && this.base.flush) {
        // Archive what is left and say so before letting go, so the next holder continues the chain of batches.
        try {
          await this.base.flush(databaseId, CLOSE_FLUSH_MS);
          const archived = this.base.archivedStamp?.(databaseId);
          if (archived) await this.redis.raiseArchived(databaseId, archived);
        } catch (err) {
          log('handing over the archive of %s: %s', databaseId, messageOf(err));
        }
      }
      await this.base.close(databaseId, replica);
      // After the close, which archives what it can: another node that has it open takes over at once.
      if (entry.archiver) await this.redis.releaseArchiver(databaseId).catch((err: unknown) => log('releasing the archiver lease of %s: %s', databaseId, messageOf(err)));
      return;
    }
    await this.base.close(databaseId, replica);
  }

  /** Whether this node archives `databaseId` now (the Durability's `archives` option in a cluster). */
  archives(databaseId: string): boolean {
    return this.open_.get(databaseId)?.archiver ?? false;
  }

  /**
   * With an archive, one node archives each database (a lease in Redis,
   * renewed at every upkeep, lost when the node dies): the holder records
   * how far the archive goes; the others take that as theirs, so that their
   * eviction and trimming know it, and upload nothing.
   */
  private async elect(databaseId: string, entry: OpenDatabase): Promise<void> {
    if (!this.base.archivedStamp) return;
    const held = await this.redis.claimArchiver(databaseId, this.leaseMs);
    if (this.open_.get(databaseId) !== entry) return;
    if (held) {
      if (!entry.archiver) {
        // Take over from where the last holder got: its final uploads may be newer than what this node heard.
        const before = await this.redis.archivedOf(databaseId);
        if (this.open_.get(databaseId) !== entry) return;
        if (before) await this.base.archivedElsewhere?.(databaseId, before);
        entry.archiver = true;
        log('%s: this node archives it now', databaseId);
        this.base.wakeArchive?.(databaseId);
      }
      const archived = this.base.archivedStamp(databaseId);
      if (archived) await this.redis.raiseArchived(databaseId, archived);
    } else {
      entry.archiver = false;
      const archived = await this.redis.archivedOf(databaseId);
      if (archived && this.open_.get(databaseId) === entry) await this.base.archivedElsewhere?.(databaseId, archived);
    }
  }

  /** Stops trimming and lag figures (the router closes every database first). */
  shutdown(): void {
    this.closed = true;
    clearInterval(this.upkeepTimer);
  }

  /**
   * What `/status` shows of the cluster: this node's id, and per open
   * database its position in the log (entry id) and how far behind the
   * log's last entry it was at the last upkeep (s, null before the first).
   */
  statusSections(): { archive?: object; cluster: object } {
    const databases: Record<string, { position: string; lagSeconds: number | null; following: boolean }> = {};
    let lagSeconds = 0;
    for (const [db, entry] of this.open_) {
      const lag = this.lag.get(db);
      if (lag !== undefined) lagSeconds = Math.max(lagSeconds, lag);
      databases[db] = { position: entry.tail?.position ?? positionOf(entry.replica), lagSeconds: lag ?? null, following: entry.tail !== undefined && !entry.broken };
    }
    return {
      ...this.base.statusSections?.(),
      cluster: { node: this.nodeId, lagSeconds, logRetentionMs: this.retentionMs, databases },
    };
  }

  /** ReplicaSource: the archive's position, when the base has an archive. */
  archivedStamp(databaseId: string): Buffer | undefined {
    return this.base.archivedStamp?.(databaseId);
  }

  /**
   * One round of upkeep over the open databases: measures how far behind its
   * log this node is, and trims each log below what every node no longer
   * needs from it: entries older than the retention, and with an archive
   * only those it holds, and never past this node's own position.
   */
  private async upkeep(): Promise<void> {
    if (this.upkeeping || this.closed) return;
    this.upkeeping = true;
    try {
      for (const [db, entry] of [...this.open_]) {
        if (this.closed) return;
        try {
          if (!entry.tail) {
            if (!entry.broken && this.redis.connected) await this.catchUpLocal(db, entry);
            continue;
          }
          const info = await this.redis.info(db);
          const position = entry.tail.position;
          const lag = info.lastId ? Math.max(0, Number(parseEntryId(info.lastId).ms - parseEntryId(position).ms) / 1000) : 0;
          if (this.open_.get(db) !== entry) continue;
          this.lag.set(db, lag);
          this.metrics.streamLagSeconds.set({ database: db }, lag);
          await this.elect(db, entry);
          const bound = this.trimBound(db, entry);
          if (bound && info.firstId && compareEntryIds(info.firstId, bound) < 0) {
            const removed = await this.redis.trim(db, bound);
            if (removed > 0) {
              this.metrics.entriesTrimmedTotal.inc(removed);
              log('trimmed %d entries of the log of %s below %s', removed, db, bound);
            }
          }
        } catch (err) {
          log('upkeep of the log of %s failed: %s', db, messageOf(err));
        }
      }
    } finally {
      this.upkeeping = false;
    }
  }

  /** Where the log of `db` may be trimmed (entries below the returned id go), or undefined for nowhere yet. */
  private trimBound(db: string, entry: OpenDatabase): string | undefined {
    const committed = entry.replica.committedStamp;
    if (!committed || entry.broken) return undefined;
    let bound = `${Math.max(0, this.now() - this.retentionMs)}-0`;
    const own = entryIdAfter(committed);
    if (compareEntryIds(own, bound) < 0) bound = own;
    if (this.base.archivedStamp) {
      const archived = this.base.archivedStamp(db);
      if (!archived) return undefined;
      const upTo = entryIdAfter(archived);
      if (compareEntryIds(upTo, bound) < 0) bound = upTo;
    }
    return bound === '0-0' ? undefined : bound;
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
    if (!entry.tail) throw new SyncError(ErrorCode.StorageUnavailable, `${databaseId} is open from this node's copy while Redis is down; writes are taken again once it is back`);
    await this.redis.ready(CONNECT_WAIT_MS);
    const id = await this.redis.append(databaseId, { sets, site: origin });
    const early = entry.early.get(id);
    if (early) {
      entry.early.delete(id);
      return early.outcome;
    }
    return new Promise<ApplyOutcome>((resolve, reject) => entry.waiters.set(id, { resolve, reject }));
  }

  /** WritePath: whether an append to the log of `databaseId` could be taken now (Redis connected, log followed). */
  writable(databaseId: string): boolean {
    const entry = this.open_.get(databaseId);
    return entry !== undefined && entry.tail !== undefined && !entry.broken && this.redis.connected;
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
    for (const e of fresh) this.metrics.applyLagSeconds.observe(Math.max(0, now - Number(parseEntryId(e.id).ms)) / 1000);
    this.metrics.entriesAppliedTotal.inc(fresh.length);
    for (const [key, early] of entry.early) if (now - early.at > UNCLAIMED_OUTCOME_MS) entry.early.delete(key);
    const isFresh = new Set(fresh);
    // An append of this node the replica already held (a batch delivered again after a failure): nothing new.
    for (const e of entries) {
      const waiter = e.node === this.nodeId && !isFresh.has(e) ? entry.waiters.get(e.id) : undefined;
      if (!waiter) continue;
      entry.waiters.delete(e.id);
      let changes = 0;
      for (const set of e.sets) changes += set.changes.length + set.migrations.length;
      waiter.resolve({ applied: 0, skipped: changes, conflicts: 0, transactions: e.sets.length, accepted: [], stamps: [], acceptedJson: [] });
    }
    fresh.forEach((e, i) => {
      const outcome = outcomes[i]!;
      this.hub.publishSoon(databaseId, e.site, outcome);
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

/** The log position a replica holds: the entry of its last stamp ('0-0' when it has none). */
function positionOf(replica: Replica): string {
  const committed = replica.committedStamp;
  return committed ? entryIdOf(committed) : '0-0';
}
