import { SyncError, ErrorCode, isSyncError } from '../errors.js';
import { logs } from '../log.js';
import { compareHlc } from '../protocol/hlc.js';
import { changeCount } from '../protocol/messages.js';
import { randomSiteId, siteIdToWire } from '../protocol/site-id.js';
import type { ValidChangeSet } from '../protocol/validate.js';
import type { KvOp, KvStore } from '../storage/kv.js';
import { KEY_FORMAT, META_FORMAT, META_SITE_ID, META_LAST_STAMP, META_ARCHIVED, NS_META, NS_LOG, NS_TOMBSTONE_AGE, logKeyAfter, logKeyHasStamp, logKeyStamp, NS_TABLE_STATS, NS_COLUMN, NS_TOMBSTONE, decodeComponent, readU64 } from './keys.js';
import { applyGroup, makeTableKeys, type ApplyContext, type ApplyOutcome, type GroupResult, type TableKeys, type TableStats } from './apply.js';

export type { ApplyOutcome };
import { KeyFilter } from './key-filter.js';
import { localStampSource, type StampSource, type StampSourceFactory } from './stamps.js';
import { readChangesSince, type ChangesPage, type FloorSeen } from './change-log.js';
import { streamSnapshot, type SnapshotOptions } from './snapshot.js';
import { sweepTombstones, type SweepResult } from './retention.js';
import type { ReplicaContext } from './context.js';

export type { ReplicaContext };

const log = logs.replica;

/** 30 days. */
export const DEFAULT_RETENTION_HORIZON_MS = 30 * 24 * 60 * 60 * 1000;
export const DEFAULT_BATCH_SIZE = 1000;
export const DEFAULT_SNAPSHOT_CHUNK_SIZE = 1000;

/** How one replica behaves. */
export interface ReplicaOptions {
  /** Let a column write newer than a row's tombstone bring the row back. @default false */
  allowResurrection?: boolean;
  /** Tombstones older than this are swept; cursors they invalidate need a snapshot. @default 30 days */
  retentionHorizonMs?: number;
  /** Wall clock in ms. @default Date.now */
  now?: () => number;
  /** Source of change log stamps. @default localStampSource */
  stampSource?: StampSourceFactory;
  /**
   * fsync every write before acknowledging it. Off by default: each batch is
   * written to LevelDB's log with write(2) before the apply resolves, so a
   * killed process loses nothing acknowledged; only a kernel crash or power
   * loss can lose the last writes, which this option closes at a latency cost.
   * @default false
   */
  syncWrites?: boolean;
  /** Entries per snapshot chunk. @default 1000 */
  snapshotChunkSize?: number;
  /**
   * The server site id a new store gets (16 bytes); an existing store with
   * another one is refused. A cluster's nodes share it. @default random for a new store
   */
  siteId?: Uint8Array;
  /**
   * Awaited before each commit is written, with the change sets it accepts
   * (each `hlc` its stamp), the stamp it follows and its last stamp.
   * Rejecting refuses the whole commit; resolving marks it archived.
   * Durability's `ack` mode uploads the batch here.
   */
  beforeCommit?: (commit: StampedCommit) => Promise<void>;
  /** Called after each commit is stored (durability's shipper wakes up). */
  onCommit?: (commit: CommitInfo) => void;
}

/** What one stored commit added to the change log. */
export interface CommitInfo {
  lastStamp: Buffer;
  /** Transactions (stamps) it added. */
  transactions: number;
  /** Changes and migrations it accepted. */
  changes: number;
  /** Bytes of change log entries it wrote. */
  logBytes: number;
}

/** A commit as an archive batch. */
export interface StampedCommit {
  /**
   * The change sets it accepted, in stamp order, each `hlc` replaced by its
   * stamp, as ONE JSON array text: the texts the merge built for the log
   * (ApplyOutcome.acceptedJson), joined.
   */
  changeSetsJson: string;
  /** The last stamp before this commit (undefined: the first commit). */
  after: Buffer | undefined;
  last: Buffer;
}

interface PendingApply {
  sets: ValidChangeSet[];
  resolve(outcome: ApplyOutcome): void;
  reject(err: unknown): void;
}

/** Most changes committed in one group (one LevelDB batch). */
const MAX_GROUP_CHANGES = 5000;
/** Above this many keys a database reads instead of keeping a key filter (which stays under ~2.5 MiB). */
const MAX_FILTER_KEYS = 1_000_000;
/** A commit larger than this (bytes of keys and values) is followed by a memtable rotation (see rotateMemtable). */
const LARGE_BATCH_BYTES = 4 * 1024 * 1024;
/** Bound of the table key cache (tables are few; this only guards against abuse). */
const MAX_CACHED_TABLES = 4096;

/**
 * One database's merged state: column versions, tombstones, schema
 * migrations and the arrival-ordered change log, over a KvStore. Applies are
 * serialized; reads run beside them on consistent views of the store.
 */
export class Replica implements ReplicaContext {
  readonly store: KvStore;
  readonly siteId: Buffer;
  readonly siteIdWire: string;
  readonly now: () => number;
  readonly retentionHorizonMs: number;
  readonly snapshotChunkSize: number;
  readonly syncWrites: boolean;
  private readonly allowResurrection: boolean;
  private readonly beforeCommit?: (commit: StampedCommit) => Promise<void>;
  private readonly onCommit?: (commit: CommitInfo) => void;
  private stamps: StampSource;
  private readonly stampSource: StampSourceFactory;
  private readonly tables: Map<string, TableStats>;
  /** schema → table → keys; two levels so a lookup builds no string. */
  private readonly keyCache = new Map<string, Map<string, TableKeys>>();
  private cachedTables = 0;
  private readonly pending: PendingApply[] = [];
  private readonly applyContext: ApplyContext;
  private draining = false;
  /** Column-version and tombstone keys, to skip reads of keys never stored; ready once the initial scan is done. */
  private filter?: KeyFilter = new KeyFilter();
  private filterReady = false;
  private filterBuild: Promise<void> = Promise.resolve();
  private queue: Promise<unknown> = Promise.resolve();
  private closing?: Promise<void>;
  private committed: Buffer | undefined;

  private constructor(store: KvStore, siteId: Buffer, tables: Map<string, TableStats>, last: Buffer | undefined, options: ReplicaOptions) {
    this.store = store;
    this.siteId = siteId;
    this.siteIdWire = siteIdToWire(siteId);
    this.now = options.now ?? Date.now;
    this.retentionHorizonMs = options.retentionHorizonMs ?? DEFAULT_RETENTION_HORIZON_MS;
    this.snapshotChunkSize = options.snapshotChunkSize ?? DEFAULT_SNAPSHOT_CHUNK_SIZE;
    this.syncWrites = options.syncWrites ?? false;
    this.allowResurrection = options.allowResurrection ?? false;
    this.beforeCommit = options.beforeCommit;
    this.onCommit = options.onCommit;
    this.tables = tables;
    this.committed = last;
    this.stampSource = options.stampSource ?? localStampSource;
    this.stamps = this.stampSource({ siteId, last, now: this.now });
    this.applyContext = {
      store, siteId, allowResurrection: this.allowResurrection, now: this.now, stamps: this.stamps, tables,
      tableKeys: (schema, table) => this.tableKeys(schema, table),
      mightExist: (key) => !this.filterReady || this.filter === undefined || this.filter.mightContain(key),
    };
    this.filterBuild = this.buildFilter();
  }

  /**
   * Opens the replica kept in `store`, creating its server site id on first
   * use. Refuses a store written by a newer key layout.
   */
  static async open(store: KvStore, options: ReplicaOptions = {}): Promise<Replica> {
    const [format, site, last] = await store.getMany([META_FORMAT, META_SITE_ID, META_LAST_STAMP]);
    let siteId: Buffer;
    if (format === undefined) {
      siteId = options.siteId ? Buffer.from(options.siteId) : randomSiteId();
      const version = Buffer.allocUnsafe(4);
      version.writeUInt32BE(KEY_FORMAT, 0);
      await store.write([
        { type: 'put', key: META_FORMAT, value: version },
        { type: 'put', key: META_SITE_ID, value: siteId },
      ], { sync: true });
    } else {
      const version = format.readUInt32BE(0);
      if (version > KEY_FORMAT) throw new Error(`store key format ${version} is newer than this coordinator supports (${KEY_FORMAT})`);
      if (!site || site.length !== 16) throw new Error('store has no server site id: not a replica store, or corrupt');
      siteId = Buffer.from(site);
      if (options.siteId && !siteId.equals(options.siteId)) {
        throw new SyncError(ErrorCode.Internal, `the store's server site id is ${siteIdToWire(siteId)}, not ${siteIdToWire(Buffer.from(options.siteId))} as its cluster says: it was created apart from the cluster; remove it so it restores from the cluster's log and archive`);
      }
    }
    const tables = new Map<string, TableStats>();
    const it = store.iterator({ gte: Buffer.of(NS_TABLE_STATS), lt: Buffer.of(NS_TABLE_STATS + 1) });
    try {
      for (let entry = await it.next(); entry; entry = await it.next()) {
        const [schema, next] = decodeComponent(entry[0], 1);
        const [table] = decodeComponent(entry[0], next);
        tables.set(makeTableKeys(schema, table).id, { schema, table, count: readU64(entry[1], 0) });
      }
    } finally {
      await it.close();
    }
    return new Replica(store, siteId, tables, last ? Buffer.from(last) : undefined, options);
  }

  /** Runs `fn` after every earlier queued write. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(new SyncError(ErrorCode.StoreClosed, 'replica is closed'));
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Fills the key filter from the store in the background. Keys committed
   * meanwhile are added by the write path, and the scan's view covers
   * everything committed before it, so when it ends the filter is complete.
   */
  private async buildFilter(): Promise<void> {
    const it = this.store.iterator({ gte: Buffer.of(NS_COLUMN), lt: Buffer.of(NS_TOMBSTONE + 1), values: false, readAhead: 256 * 1024 });
    try {
      for (let batch = await it.nextBatch(1024); batch.length > 0; batch = await it.nextBatch(1024)) {
        if (!this.filter || this.closing) return;
        for (const [key] of batch) if (key[0] === NS_COLUMN || key[0] === NS_TOMBSTONE) this.filter.add(key);
        if (this.filter.size > MAX_FILTER_KEYS) {
          this.filter = undefined;
          return;
        }
      }
      this.filterReady = true;
    } catch (err) {
      log('key filter disabled: %s', (err as Error).message);
      this.filter = undefined;
    } finally {
      await it.close().catch(() => undefined);
    }
  }

  /** Resolves once the initial key-filter scan has ended (built, or given up for a huge database). */
  whenFilterReady(): Promise<void> {
    return this.filterBuild;
  }

  /**
   * Merges validated change sets as one atomic write (docs/protocol.md §3). Either
   * every effect of the message is stored, or (on error) none is. Messages
   * that queue up while a write is in flight are committed together (group
   * commit), each with the outcome it would have had alone.
   */
  apply(changeSets: ValidChangeSet[]): Promise<ApplyOutcome> {
    if (this.closing) return Promise.reject(new SyncError(ErrorCode.StoreClosed, 'replica is closed'));
    return new Promise((resolve, reject) => {
      this.pending.push({ sets: changeSets, resolve, reject });
      if (!this.draining) {
        this.draining = true;
        void this.serial(() => this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        // Bound a group by changes, so one commit stays a reasonable batch.
        const group: PendingApply[] = [];
        let size = 0;
        while (this.pending.length > 0 && (group.length === 0 || size < MAX_GROUP_CHANGES)) {
          const next = this.pending.shift()!;
          group.push(next);
          for (const set of next.sets) size += set.changes.length + set.migrations.length;
        }
        await this.commitGroup(group);
      }
    } finally {
      this.draining = false;
    }
  }

  private async commitGroup(group: PendingApply[]): Promise<void> {
    let result: GroupResult;
    let sizes: BatchSizes;
    try {
      result = await applyGroup(this.applyContext, group.map((p) => p.sets));
      if (result.lastStamp) {
        result.ops.push({ type: 'put', key: META_LAST_STAMP, value: result.lastStamp });
        if (this.beforeCommit) {
          // Archived before it is stored, so nothing is stored that was not acknowledged.
          await this.beforeCommit({ changeSetsJson: `[${result.outcomes.flatMap((o) => o.acceptedJson).join(',')}]`, after: this.committed, last: result.lastStamp });
          result.ops.push({ type: 'put', key: META_ARCHIVED, value: result.lastStamp });
        }
      }
      sizes = await this.writeGroup(result.ops);
    } catch (err) {
      if (group.length > 1 && !(isSyncError(err) && err.code === ErrorCode.StorageUnavailable)) {
        // Isolate the failure: every other message gets its own chance.
        for (const one of group) await this.commitGroup([one]);
      } else {
        for (const one of group) one.reject(err);
      }
      return;
    }
    if (result.lastStamp) this.committed = result.lastStamp;
    this.adoptCounts(result.counts);
    if (result.lastStamp) this.notifyCommit(result, sizes.logBytes);
    for (let i = 0; i < group.length; i++) {
      const outcome = result.outcomes[i]!;
      log('applied %d, skipped %d, conflicts %d in %d change sets', outcome.applied, outcome.skipped, outcome.conflicts, outcome.transactions);
      group[i]!.resolve(outcome);
    }
    if (sizes.total > LARGE_BATCH_BYTES) {
      // Stored already: a failure here only delays the flush.
      await this.rotateMemtable().catch((err: unknown) => log('memtable rotation failed: %s', (err as Error).message));
    }
  }

  /**
   * Writes a group's batch. While LevelDB writes it on the pool, the main
   * thread does what does not need its outcome: the key filter and the
   * batch's sizes (filterAndMeasure). A key added to the filter that a failed
   * write never stored only costs a read later.
   */
  private async writeGroup(ops: KvOp[]): Promise<BatchSizes> {
    const writing = this.store.write(ops, { sync: this.syncWrites });
    const sizes = this.filterAndMeasure(ops);
    await writing;
    return sizes;
  }

  /** Takes a stored group's live column-version counts per table (GroupResult.counts); a table left with none is dropped. */
  private adoptCounts(counts: GroupResult['counts']): void {
    for (const [id, stats] of counts) {
      if (stats.count === 0) this.tables.delete(id);
      else this.tables.set(id, stats);
    }
  }

  /**
   * Adds the batch's column-version and tombstone keys to the key filter
   * (dropping the filter past MAX_FILTER_KEYS) and measures the batch, in one
   * pass over its ops.
   */
  private filterAndMeasure(ops: readonly KvOp[]): BatchSizes {
    const filter = this.filter;
    let total = 0;
    let logBytes = 0;
    for (const op of ops) {
      total += op.key.length;
      if (op.type !== 'put') continue;
      total += op.value.length;
      const ns = op.key[0];
      if (ns === NS_LOG) logBytes += op.value.length;
      else if (filter && (ns === NS_COLUMN || ns === NS_TOMBSTONE)) filter.add(op.key);
    }
    if (filter && filter.size > MAX_FILTER_KEYS) this.filter = undefined;
    return { total, logBytes };
  }

  /** Tells `onCommit` what a stored commit added to the log (`logBytes`: bytes of its log entries). */
  private notifyCommit(result: GroupResult, logBytes: number): void {
    if (!this.onCommit || !result.lastStamp) return;
    let transactions = 0;
    let changes = 0;
    for (const outcome of result.outcomes) {
      transactions += outcome.stamps.length;
      changes += changeCount(outcome.accepted);
    }
    this.onCommit({ lastStamp: result.lastStamp, transactions, changes, logBytes });
  }

  /**
   * LevelDB keeps a whole write batch in its memtable, however far past the
   * write buffer size, until the NEXT write swaps the memtable out and flushes
   * it. A database that took one 40 MB batch would otherwise hold about twice
   * that in native memory for as long as it stays quiet, per database. A tiny
   * write right after such a batch starts the flush now.
   */
  private async rotateMemtable(): Promise<void> {
    const version = Buffer.allocUnsafe(4);
    version.writeUInt32BE(KEY_FORMAT, 0);
    await this.store.write([{ type: 'put', key: META_FORMAT, value: version }], { sync: false });
  }

  /** Key prefixes of a table, cached (bounded) since every change needs them. */
  private tableKeys(schema: string, table: string): TableKeys {
    let tables = this.keyCache.get(schema);
    let keys = tables?.get(table);
    if (!keys) {
      if (this.cachedTables >= MAX_CACHED_TABLES) {
        this.keyCache.clear();
        this.cachedTables = 0;
        tables = undefined;
      }
      if (!tables) this.keyCache.set(schema, (tables = new Map()));
      keys = makeTableKeys(schema, table);
      tables.set(table, keys);
      this.cachedTables++;
    }
    return keys;
  }

  /**
   * Whole transactions accepted after `cursor`, current values only, never
   * those of `askingSite` (docs/protocol.md §5). SNAPSHOT_REQUIRED if retention
   * has swept facts the cursor would need, unless `floorSeen` says the reader
   * goes on past that (see FloorSeen).
   */
  changesSince(cursor: Buffer | undefined, askingSite: Buffer | undefined, batchSize = DEFAULT_BATCH_SIZE, maxBytes = Infinity, floorSeen?: FloorSeen): Promise<ChangesPage> {
    return readChangesSince(this, cursor, askingSite, batchSize, maxBytes, floorSeen);
  }

  /** Snapshot chunks as JSON text, in the order of §6, from one consistent view. */
  snapshot(options: SnapshotOptions = {}): AsyncGenerator<string, void, undefined> {
    return streamSnapshot(this, options);
  }

  /** Removes tombstones older than the retention horizon. */
  sweep(now = this.now()): Promise<SweepResult> {
    return this.serial(() => sweepTombstones(this, now));
  }

  /**
   * The stamp of the last committed transaction, known without a read: set
   * as soon as its write is stored, before its appliers are told. A reader
   * that takes it and then subscribes to pushes misses nothing in between.
   */
  get committedStamp(): Buffer | undefined {
    return this.committed;
  }

  /** The last stamp issued (or undefined for a fresh database). */
  async lastStamp(): Promise<Buffer | undefined> {
    return this.store.get(META_LAST_STAMP);
  }

  /** Tables with live column versions and their counts. */
  tableStats(): { schema: string; table: string; count: number }[] {
    return [...this.tables.values()].map((t) => ({ ...t }));
  }

  /**
   * Replays archived transactions with the stamps they were given when they
   * were first accepted, so cursors and checkpoints handed out before stay
   * valid (restore from an archive). `sets[i]` was stamped `stamps[i]`;
   * both in stamp order, each stamp above everything this replica holds.
   * Merged like any apply (a transaction that changes nothing leaves no
   * trace); new stamps then continue above the last one replayed.
   */
  replay(sets: readonly ValidChangeSet[], stamps: readonly Buffer[]): Promise<void> {
    if (sets.length !== stamps.length) throw new TypeError('replay needs one stamp per change set');
    return this.replayMessages(sets.map((set) => [set]), stamps.map((stamp) => [stamp])).then(() => undefined);
  }

  /**
   * Like replay, for whole messages: `messages[i][j]` was stamped
   * `stamps[i][j]`. Resolves with each message's outcome (what it applied,
   * skipped and lost, and its accepted change sets for pushes), as an apply
   * of the same message would. A cluster node applies its log this way.
   */
  replayMessages(messages: readonly (readonly ValidChangeSet[])[], stamps: readonly (readonly Buffer[])[]): Promise<ApplyOutcome[]> {
    if (messages.length !== stamps.length || messages.some((m, i) => m.length !== stamps[i]!.length)) throw new TypeError('replay needs one stamp per change set');
    return this.serial(async () => {
      const outcomes: ApplyOutcome[] = [];
      for (let from = 0; from < messages.length;) {
        let to = from;
        for (let size = 0; to < messages.length && (to === from || size < MAX_GROUP_CHANGES); to++) {
          for (const set of messages[to]!) size += set.changes.length + set.migrations.length;
        }
        const group = messages.slice(from, to).map((m) => [...m]);
        const result = await applyGroup(this.applyContext, group, stamps.slice(from, to));
        const last = stamps.slice(from, to).flat().at(-1);
        if (last) result.ops.push({ type: 'put', key: META_LAST_STAMP, value: last });
        const sizes = await this.writeGroup(result.ops);
        if (last) this.committed = last;
        this.adoptCounts(result.counts);
        outcomes.push(...result.outcomes);
        if (result.lastStamp) this.notifyCommit(result, sizes.logBytes);
        from = to;
      }
      // Stamps issued from now on continue above the replayed ones.
      this.stamps = this.stampSource({ siteId: this.siteId, last: this.committed, now: this.now });
      this.applyContext.stamps = this.stamps;
      return outcomes;
    });
  }

  /**
   * Every key and value of the store, read through ONE iterator (a
   * consistent view), in key order: what an archive snapshot holds. The
   * entries are views of the iterator's buffers, valid until the next one.
   */
  async *entries(): AsyncGenerator<[Buffer, Buffer], void, undefined> {
    const it = this.store.iterator({ gte: Buffer.of(NS_META), lt: Buffer.of(NS_TOMBSTONE_AGE + 1), readAhead: 512 * 1024 });
    try {
      for (let batch = await it.nextBatch(1024); batch.length > 0; batch = await it.nextBatch(1024)) yield* batch;
    } finally {
      await it.close();
    }
  }

  /**
   * The change log after `after` (a stamp; undefined: all of it): its
   * transactions, bytes, and the stamp of the first one. What an archive
   * that holds everything up to `after` still lacks.
   */
  async logAfter(after: Buffer | undefined): Promise<{ transactions: number; bytes: number; first?: Buffer }> {
    const it = this.store.iterator({ gt: after ? logKeyAfter(after) : Buffer.of(NS_LOG), lt: Buffer.of(NS_LOG + 1), readAhead: 256 * 1024 });
    let transactions = 0;
    let bytes = 0;
    let first: Buffer | undefined;
    let current: Buffer | undefined;
    try {
      for (let batch = await it.nextBatch(1024); batch.length > 0; batch = await it.nextBatch(1024)) {
        for (const [key, value] of batch) {
          bytes += value.length;
          if (current && logKeyHasStamp(key, current)) continue;
          current = Buffer.from(logKeyStamp(key));
          first ??= current;
          transactions++;
        }
      }
    } finally {
      await it.close();
    }
    return { transactions, bytes, ...(first ? { first } : {}) };
  }

  /** The last stamp a durable archive is known to hold (undefined: nothing archived). */
  async archivedStamp(): Promise<Buffer | undefined> {
    return this.store.get(META_ARCHIVED);
  }

  /** Records that the archive holds everything up to `stamp` (it never moves back). */
  markArchived(stamp: Buffer): Promise<void> {
    return this.serial(async () => {
      const current = await this.store.get(META_ARCHIVED);
      if (current && compareHlc(current, stamp) >= 0) return;
      await this.store.write([{ type: 'put', key: META_ARCHIVED, value: stamp }], { sync: this.syncWrites });
    });
  }

  /** Waits for queued writes, then closes the store. */
  close(): Promise<void> {
    if (!this.closing) {
      const pending = Promise.all([this.queue, this.filterBuild]);
      this.closing = pending.then(() => this.store.close());
    }
    return this.closing;
  }
}

/** Bytes of a batch's keys and values, and of its log entries' values. */
interface BatchSizes { total: number; logBytes: number }

