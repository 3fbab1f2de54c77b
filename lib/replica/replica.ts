import createDebug from 'debug';
import { SyncError, ErrorCode } from '../errors.js';
import { hlcSiteId } from '../protocol/hlc.js';
import { randomSiteId, siteIdToWire } from '../protocol/site-id.js';
import type { ValidChange, ValidChangeSet, ValidMigration } from '../protocol/validate.js';
import type { ApplyResult, ChangeSet, ColumnChange, DeleteChange } from '../protocol/messages.js';
import type { KvOp, KvStore } from '../storage/kv.js';
import {
  KEY_FORMAT, META_FORMAT, META_SITE_ID, META_LAST_STAMP, NS_TABLE_STATS,
  LOG_CHANGE, LOG_MIGRATION, FACT_HEADER,
  tableStatsKey, rowColumnsPrefix, columnKey, tombstoneKey, migrationKey, logKey, tombstoneAgeKey,
  prefixEnd, decodeComponent, encodeFact, decodeFact, encodeLogEntry, readU64, writeU64,
  type FactRecord,
} from './keys.js';
import { resolveSlot, resolveDeletes, tombstoneBlocks, type Candidate } from './merge.js';
import { localStampSource, type StampSource, type StampSourceFactory } from './stamps.js';
import { readChangesSince, type ChangesPage } from './change-log.js';
import { streamSnapshot, type SnapshotOptions } from './snapshot.js';
import { sweepTombstones, type SweepResult } from './retention.js';

const log = createDebug('sync-coordinator:replica');

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
}

/** What `apply` did. */
export interface ApplyOutcome extends ApplyResult {
  /** The accepted part of each change set that changed state (for push). */
  accepted: ChangeSet[];
  /** The stamp given to each accepted change set, in the same order. */
  stamps: Buffer[];
}

/** Internal view of a replica shared with the change log, snapshot and retention code. */
export interface ReplicaContext {
  readonly store: KvStore;
  readonly siteId: Buffer;
  readonly now: () => number;
  readonly retentionHorizonMs: number;
  readonly snapshotChunkSize: number;
  readonly syncWrites: boolean;
}

interface TableStats { schema: string; table: string; count: number }

interface ChangeItem { cs: number; change: ValidChange; applied: boolean }
interface MigrationItem { cs: number; migration: ValidMigration; applied: boolean }

interface RowWork {
  schema: string;
  table: string;
  pkKey: string;
  tombKey: Buffer;
  colPrefix: Buffer;
  deletes: Candidate<ChangeItem>[];
  stored?: Buffer;
  storedRecord?: FactRecord & { createdAt: number };
  tombstone?: Buffer;
  raised?: Candidate<ChangeItem>;
}

interface CellWork {
  key: Buffer;
  row: RowWork;
  candidates: Candidate<ChangeItem>[];
}

interface MigrationWork {
  key: Buffer;
  candidates: Candidate<MigrationItem>[];
}

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
  private readonly stamps: StampSource;
  private readonly tables: Map<string, TableStats>;
  private queue: Promise<unknown> = Promise.resolve();
  private closing?: Promise<void>;

  private constructor(store: KvStore, siteId: Buffer, tables: Map<string, TableStats>, last: Buffer | undefined, options: ReplicaOptions) {
    this.store = store;
    this.siteId = siteId;
    this.siteIdWire = siteIdToWire(siteId);
    this.now = options.now ?? Date.now;
    this.retentionHorizonMs = options.retentionHorizonMs ?? DEFAULT_RETENTION_HORIZON_MS;
    this.snapshotChunkSize = options.snapshotChunkSize ?? DEFAULT_SNAPSHOT_CHUNK_SIZE;
    this.syncWrites = options.syncWrites ?? false;
    this.allowResurrection = options.allowResurrection ?? false;
    this.tables = tables;
    this.stamps = (options.stampSource ?? localStampSource)({ siteId, last, now: this.now });
  }

  /**
   * Opens the replica kept in `store`, creating its server site id on first
   * use. Refuses a store written by a newer key layout.
   */
  static async open(store: KvStore, options: ReplicaOptions = {}): Promise<Replica> {
    const [format, site, last] = await store.getMany([META_FORMAT, META_SITE_ID, META_LAST_STAMP]);
    let siteId: Buffer;
    if (format === undefined) {
      siteId = randomSiteId();
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
    }
    const tables = new Map<string, TableStats>();
    const it = store.iterator({ gte: Buffer.of(NS_TABLE_STATS), lt: Buffer.of(NS_TABLE_STATS + 1) });
    try {
      for (let entry = await it.next(); entry; entry = await it.next()) {
        const [schema, next] = decodeComponent(entry[0], 1);
        const [table] = decodeComponent(entry[0], next);
        tables.set(entry[0].toString('latin1'), { schema, table, count: readU64(entry[1], 0) });
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
   * Merges validated change sets as one atomic write (PROTOCOL.md §3). Either
   * every effect of the message is stored, or (on error) none is.
   */
  apply(changeSets: ValidChangeSet[]): Promise<ApplyOutcome> {
    return this.serial(() => this.applyNow(changeSets));
  }

  private async applyNow(changeSets: ValidChangeSet[]): Promise<ApplyOutcome> {
    let applied = 0;
    let skipped = 0;
    let conflicts = 0;
    const own = this.siteId;
    const rows = new Map<string, RowWork>();
    const cells = new Map<string, CellWork>();
    const migrations = new Map<string, MigrationWork>();
    const changeItems: ChangeItem[][] = [];
    const migrationItems: MigrationItem[][] = [];

    for (let cs = 0; cs < changeSets.length; cs++) {
      const set = changeSets[cs]!;
      const items: ChangeItem[] = new Array(set.changes.length);
      changeItems.push(items);
      for (let i = 0; i < set.changes.length; i++) {
        const change = set.changes[i]!;
        const item: ChangeItem = { cs, change, applied: false };
        items[i] = item;
        if (hlcSiteId(change.hlc).equals(own)) { skipped++; continue; }
        const wire = change.wire;
        const pkKey = JSON.stringify(wire.pk);
        const tombKey = tombstoneKey(wire.schema, wire.table, pkKey);
        const rowId = tombKey.toString('latin1');
        let row = rows.get(rowId);
        if (!row) {
          row = { schema: wire.schema, table: wire.table, pkKey, tombKey, colPrefix: rowColumnsPrefix(wire.schema, wire.table, pkKey), deletes: [] };
          rows.set(rowId, row);
        }
        if (wire.type === 'delete') {
          row.deletes.push({ hlc: change.hlc, item });
        } else {
          const key = columnKey(row.colPrefix, wire.column);
          const cellId = key.toString('latin1');
          let cell = cells.get(cellId);
          if (!cell) { cell = { key, row, candidates: [] }; cells.set(cellId, cell); }
          cell.candidates.push({ hlc: change.hlc, item });
        }
      }
      const mItems: MigrationItem[] = new Array(set.migrations.length);
      migrationItems.push(mItems);
      for (let i = 0; i < set.migrations.length; i++) {
        const migration = set.migrations[i]!;
        const item: MigrationItem = { cs, migration, applied: false };
        mItems[i] = item;
        if (hlcSiteId(migration.hlc).equals(own)) { skipped++; continue; }
        const key = migrationKey(migration.wire.schema, migration.kind, migration.name, migration.wire.schemaVersion);
        const id = key.toString('latin1');
        let work = migrations.get(id);
        if (!work) { work = { key, candidates: [] }; migrations.set(id, work); }
        work.candidates.push({ hlc: migration.hlc, item });
      }
    }

    // Load every stored record the message touches in one round trip.
    const rowList = [...rows.values()];
    const cellList = [...cells.values()];
    const migrationList = [...migrations.values()];
    const keys: Buffer[] = [];
    for (const r of rowList) keys.push(r.tombKey);
    for (const c of cellList) keys.push(c.key);
    for (const m of migrationList) keys.push(m.key);
    const values = keys.length > 0 ? await this.store.getMany(keys) : [];
    let v = 0;
    for (const r of rowList) {
      const value = values[v++];
      if (value) {
        const fact = decodeFact(value);
        r.storedRecord = { ...fact, createdAt: readU64(value, FACT_HEADER) };
        r.stored = fact.hlc;
      }
    }
    const storedCells: (FactRecord | undefined)[] = cellList.map(() => {
      const value = values[v++];
      return value ? decodeFact(value) : undefined;
    });
    const storedMigrations: (FactRecord | undefined)[] = migrationList.map(() => {
      const value = values[v++];
      return value ? decodeFact(value) : undefined;
    });

    // Tombstones first: a row's final tombstone decides which writes it blocks.
    for (const r of rowList) {
      const out = resolveDeletes(r.deletes, r.stored);
      applied += out.applied;
      skipped += out.skipped;
      if (out.winner) {
        out.winner.item.applied = true;
        r.raised = out.winner;
        r.tombstone = out.winner.hlc;
      } else {
        r.tombstone = r.stored;
      }
    }

    const ops: KvOp[] = [];
    const tableDelta = new Map<string, number>();
    const bump = (schema: string, table: string, by: number): void => {
      const id = tableStatsKey(schema, table).toString('latin1');
      tableDelta.set(id, (tableDelta.get(id) ?? 0) + by);
    };
    const removedCells = new Set<string>();

    // A raised tombstone removes the row's column versions it now blocks.
    for (const r of rowList) {
      if (!r.raised) continue;
      const it = this.store.iterator({ gte: r.colPrefix, lt: prefixEnd(r.colPrefix) });
      try {
        for (let entry = await it.next(); entry; entry = await it.next()) {
          const fact = decodeFact(entry[1]);
          if (!tombstoneBlocks(r.tombstone, fact.hlc, this.allowResurrection)) continue;
          ops.push({ type: 'del', key: Buffer.from(entry[0]) }, { type: 'del', key: logKey(fact.stamp, fact.idx) });
          removedCells.add(entry[0].toString('latin1'));
          bump(r.schema, r.table, -1);
        }
      } finally {
        await it.close();
      }
    }

    const cellWinners: { cell: CellWork; stored?: FactRecord; winner: Candidate<ChangeItem> }[] = [];
    for (let i = 0; i < cellList.length; i++) {
      const cell = cellList[i]!;
      const row = cell.row;
      const stored = storedCells[i];
      const cellId = cell.key.toString('latin1');
      const storedHlc = stored && !removedCells.has(cellId) ? stored.hlc : undefined;
      const out = resolveSlot(cell.candidates, storedHlc, (hlc) => tombstoneBlocks(row.tombstone, hlc, this.allowResurrection));
      applied += out.applied;
      skipped += out.skipped;
      conflicts += out.conflicts;
      if (out.winner) {
        out.winner.item.applied = true;
        cellWinners.push({ cell, stored: storedHlc ? stored : undefined, winner: out.winner });
      }
    }

    const migrationWinners: { work: MigrationWork; stored?: FactRecord; winner: Candidate<MigrationItem> }[] = [];
    for (let i = 0; i < migrationList.length; i++) {
      const work = migrationList[i]!;
      const stored = storedMigrations[i];
      const out = resolveSlot(work.candidates, stored?.hlc);
      applied += out.applied;
      skipped += out.skipped;
      conflicts += out.conflicts;
      if (out.winner) {
        out.winner.item.applied = true;
        migrationWinners.push({ work, stored, winner: out.winner });
      }
    }

    // Stamp each change set that changed something, in message order, and
    // give each applied fact its place in the log.
    const accepted: ChangeSet[] = [];
    const stamps: Buffer[] = [];
    const place = new Map<ChangeItem | MigrationItem, { stamp: Buffer; idx: number }>();
    for (let cs = 0; cs < changeSets.length; cs++) {
      const set = changeSets[cs]!;
      const mApplied = migrationItems[cs]!.filter((m) => m.applied);
      const cApplied = changeItems[cs]!.filter((c) => c.applied);
      if (mApplied.length === 0 && cApplied.length === 0) continue;
      const stamp = this.stamps.next();
      stamps.push(stamp);
      let idx = 0;
      for (const m of mApplied) {
        place.set(m, { stamp, idx });
        ops.push({ type: 'put', key: logKey(stamp, idx++), value: encodeLogEntry(set.siteId, set.wire.transactionId, LOG_MIGRATION, JSON.stringify(m.migration.wire)) });
      }
      for (const c of cApplied) {
        place.set(c, { stamp, idx });
        ops.push({ type: 'put', key: logKey(stamp, idx++), value: encodeLogEntry(set.siteId, set.wire.transactionId, LOG_CHANGE, JSON.stringify(c.change.wire)) });
      }
      accepted.push({
        siteId: set.wire.siteId,
        transactionId: set.wire.transactionId,
        hlc: set.wire.hlc,
        changes: cApplied.map((c) => c.change.wire),
        schemaMigrations: mApplied.map((m) => m.migration.wire),
      });
    }

    const now = this.now();
    for (const r of rowList) {
      if (!r.raised) continue;
      const where = place.get(r.raised.item)!;
      const wire = r.raised.item.change.wire as DeleteChange;
      const entry = wire.priorRow === undefined
        ? { pk: wire.pk, hlc: wire.hlc, createdAt: now }
        : { pk: wire.pk, hlc: wire.hlc, createdAt: now, priorRow: wire.priorRow };
      if (r.storedRecord) {
        ops.push({ type: 'del', key: logKey(r.storedRecord.stamp, r.storedRecord.idx) });
        ops.push({ type: 'del', key: tombstoneAgeKey(r.storedRecord.createdAt, r.tombKey) });
      }
      ops.push({ type: 'put', key: r.tombKey, value: encodeFact(r.raised.hlc, where.stamp, where.idx, JSON.stringify(entry), now) });
      ops.push({ type: 'put', key: tombstoneAgeKey(now, r.tombKey), value: Buffer.alloc(0) });
    }
    for (const { cell, stored, winner } of cellWinners) {
      const where = place.get(winner.item)!;
      const wire = winner.item.change.wire as ColumnChange;
      if (stored) ops.push({ type: 'del', key: logKey(stored.stamp, stored.idx) });
      else bump(cell.row.schema, cell.row.table, 1);
      const entry = JSON.stringify({ column: wire.column, hlc: wire.hlc, value: wire.value, pk: wire.pk });
      ops.push({ type: 'put', key: cell.key, value: encodeFact(winner.hlc, where.stamp, where.idx, entry) });
    }
    for (const { work, stored, winner } of migrationWinners) {
      const where = place.get(winner.item)!;
      if (stored) ops.push({ type: 'del', key: logKey(stored.stamp, stored.idx) });
      ops.push({ type: 'put', key: work.key, value: encodeFact(winner.hlc, where.stamp, where.idx, JSON.stringify(winner.item.migration.wire)) });
    }

    const nextCounts: [string, TableStats][] = [];
    for (const [id, delta] of tableDelta) {
      if (delta === 0) continue;
      const current = this.tables.get(id);
      const key = Buffer.from(id, 'latin1');
      let stats: TableStats;
      if (current) stats = { ...current, count: current.count + delta };
      else {
        const [schema, next] = decodeComponent(key, 1);
        const [table] = decodeComponent(key, next);
        stats = { schema, table, count: delta };
      }
      if (stats.count < 0) throw new Error(`table count of ${stats.schema}.${stats.table} went negative`);
      if (stats.count === 0) ops.push({ type: 'del', key });
      else {
        const value = Buffer.allocUnsafe(8);
        writeU64(value, stats.count, 0);
        ops.push({ type: 'put', key, value });
      }
      nextCounts.push([id, stats]);
    }
    if (stamps.length > 0) ops.push({ type: 'put', key: META_LAST_STAMP, value: stamps[stamps.length - 1]! });

    if (ops.length > 0) await this.store.write(ops, { sync: this.syncWrites });
    for (const [id, stats] of nextCounts) {
      if (stats.count === 0) this.tables.delete(id);
      else this.tables.set(id, stats);
    }
    log('applied %d, skipped %d, conflicts %d in %d change sets', applied, skipped, conflicts, changeSets.length);
    return { applied, skipped, conflicts, transactions: changeSets.length, accepted, stamps };
  }

  /**
   * Whole transactions accepted after `cursor`, current values only, never
   * those of `askingSite` (PROTOCOL.md §5). SNAPSHOT_REQUIRED if retention
   * has swept facts the cursor would need.
   */
  changesSince(cursor: Buffer | undefined, askingSite: Buffer | undefined, batchSize = DEFAULT_BATCH_SIZE): Promise<ChangesPage> {
    return readChangesSince(this, cursor, askingSite, batchSize);
  }

  /** Snapshot chunks as JSON text, in the order of §6, from one consistent view. */
  snapshot(options: SnapshotOptions = {}): AsyncGenerator<string, void, undefined> {
    return streamSnapshot(this, options);
  }

  /** Removes tombstones older than the retention horizon. */
  sweep(now = this.now()): Promise<SweepResult> {
    return this.serial(() => sweepTombstones(this, now));
  }

  /** The last stamp issued (or undefined for a fresh database). */
  async lastStamp(): Promise<Buffer | undefined> {
    return this.store.get(META_LAST_STAMP);
  }

  /** Tables with live column versions and their counts. */
  tableStats(): { schema: string; table: string; count: number }[] {
    return [...this.tables.values()].map((t) => ({ ...t }));
  }

  /** Waits for queued writes, then closes the store. */
  close(): Promise<void> {
    if (!this.closing) {
      const pending = this.queue;
      this.closing = pending.then(() => this.store.close());
    }
    return this.closing;
  }
}

