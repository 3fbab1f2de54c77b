/**
 * Applying messages to a replica's store: planning, one read of every record
 * the messages touch, resolution (merge.ts) and the write ops, for a GROUP of
 * messages at once. Messages in a group are resolved one after another
 * against an in-memory view of the group's own writes, so each message gets
 * exactly the outcome it would get alone; the group is then stored with one
 * atomic LevelDB batch (group commit): one read round trip and one write per
 * group instead of per message.
 */

import { hlcFromSite, hlcToWire, hlcWallTime } from '../protocol/hlc.js';
import type { ValidChange, ValidChangeSet, ValidMigration } from '../protocol/validate.js';
import type { ApplyResult, ChangeSet, ColumnChange, DeleteChange } from '../protocol/messages.js';
import { changeSetJson, jsonString, sqlValueJson, sqlValuesJson } from '../protocol/values.js';
import type { KvOp, KvStore } from '../storage/kv.js';
import {
  LOG_CHANGE, LOG_MIGRATION,
  decodeComponent, tableId, tablePrefixes, prefixedComponent, columnKey, migrationKey, logKey, tombstoneAgeKey, prefixEnd,
  encodeFact, encodeLogEntry, factHlc, factLogKey, tombstoneCreatedAt, writeU64,
} from './keys.js';
import { resolveSlot, resolveDeletes, tombstoneBlocks, type Candidate } from './merge.js';
import type { StampSource } from './stamps.js';

/** Live column-version count of one table. */
export interface TableStats { schema: string; table: string; count: number }

/** Precomputed key prefixes of one table. */
export interface TableKeys {
  /** Injective string id of (schema, table). */
  id: string;
  schema: string;
  table: string;
  colBase: Buffer;
  tombBase: Buffer;
  statsKey: Buffer;
  /** `"schema":…,"table":…` as JSON, shared by every log entry of the table. */
  namesJson: string;
}

/** Builds TableKeys; the id is injective (see tableId). */
export function makeTableKeys(schema: string, table: string): TableKeys {
  return {
    id: tableId(schema, table), schema, table, ...tablePrefixes(schema, table),
    namesJson: `"schema":${JSON.stringify(schema)},"table":${JSON.stringify(table)}`,
  };
}

/** What one message did: its ApplyResult plus what the transports need. */
export interface ApplyOutcome extends ApplyResult {
  /** The accepted part of each change set that changed state (for push). */
  accepted: ChangeSet[];
  /** The stamp given to each accepted change set, in the same order. */
  stamps: Buffer[];
  /**
   * Each accepted change set as JSON text, its `hlc` replaced by its stamp:
   * exactly `JSON.stringify({ ...accepted[i], hlc: hlcToWire(stamps[i]) })`,
   * assembled from the texts already built for the log, so a push does not
   * serialize its changes again (docs/protocol.md §5).
   */
  acceptedJson: string[];
}

/** Everything a group needs from its replica. */
export interface ApplyContext {
  store: KvStore;
  siteId: Buffer;
  allowResurrection: boolean;
  now: () => number;
  /** Replaced when a replay moves the stamps forward. */
  stamps: StampSource;
  tables: ReadonlyMap<string, TableStats>;
  tableKeys(schema: string, table: string): TableKeys;
  /** False when a column-version or tombstone key is certainly not stored (skips its read). */
  mightExist(key: Buffer): boolean;
}

/** Result of a group: per-message outcomes, the ops to write, the new table counts. */
export interface GroupResult {
  outcomes: ApplyOutcome[];
  ops: KvOp[];
  counts: Map<string, TableStats>;
  lastStamp?: Buffer;
}

/** Where an applied fact went in the log: its change set's stamp and its index under it. */
interface Placed {
  stamp: Buffer | undefined;
  idx: number;
}
interface ChangeItem extends Placed {
  change: ValidChange;
  applied: boolean;
  /** Set for an applied column write: the JSON of its value and column, shared by its log entry and column record. */
  valueJson: string | undefined;
  columnJson: string | undefined;
  row: RowPlan | undefined;
}
interface MigrationItem extends Placed {
  migration: ValidMigration;
  applied: boolean;
  /** Set for an applied migration: its JSON, shared by its log entry and its record. */
  json: string | undefined;
}

/*
 * Ids of the group's record map. A row's is tableId + the pk's JSON, which is
 * also the key of its tombstone; a cell's is the row's + U+0001 + the column;
 * a migration's starts with "m". tableId starts with a digit and its length
 * prefixes fix where the pk's JSON begins, and that JSON never holds a raw
 * U+0001 (JSON.stringify escapes control characters), so no two of them meet.
 */
interface RowPlan {
  id: string;
  /** The primary key as canonical JSON. */
  pkKey: string;
  tk: TableKeys;
  tombKey: Buffer;
  colPrefix: Buffer;
  deletes: Candidate<ChangeItem>[];
  /** Once the message's deletes are resolved: the row's tombstone HLC, if it has one. */
  tomb: Buffer | undefined;
  /** The delete that raised the tombstone in this message, if one did. */
  raisedBy: Candidate<ChangeItem> | undefined;
}

interface CellPlan { id: string; key: Buffer; row: RowPlan; candidates: Candidate<ChangeItem>[] }
interface MigrationPlan { id: string; key: Buffer; candidates: Candidate<MigrationItem>[] }

interface MessagePlan {
  sets: ValidChangeSet[];
  changeItems: ChangeItem[][];
  migrationItems: MigrationItem[][];
  rows: RowPlan[];
  cells: CellPlan[];
  migrations: MigrationPlan[];
  ownSkipped: number;
  /** Whether some row of the message has a delete. */
  deletes: boolean;
}

/** The coordinator's own site never writes through a client: such facts are skipped. */
function isOwn(hlc: Buffer, siteId: Buffer): boolean {
  return hlcFromSite(hlc, siteId);
}

/** Plans one message: which slots each of its facts competes for. Pure. */
function planMessage(ctx: ApplyContext, sets: ValidChangeSet[]): MessagePlan {
  const own = ctx.siteId;
  const rows = new Map<string, RowPlan>();
  const cells = new Map<string, CellPlan>();
  const migrations = new Map<string, MigrationPlan>();
  const changeItems: ChangeItem[][] = [];
  const migrationItems: MigrationItem[][] = [];
  let ownSkipped = 0;
  let deletes = false;
  for (const set of sets) {
    const items: ChangeItem[] = new Array(set.changes.length);
    changeItems.push(items);
    for (let i = 0; i < set.changes.length; i++) {
      const change = set.changes[i]!;
      // Every field from the start: one object shape for every item.
      const item: ChangeItem = { change, applied: false, valueJson: undefined, columnJson: undefined, row: undefined, stamp: undefined, idx: 0 };
      items[i] = item;
      if (isOwn(change.hlc, own)) { ownSkipped++; continue; }
      const wire = change.wire;
      const tk = ctx.tableKeys(wire.schema, wire.table);
      const pkKey = sqlValuesJson(wire.pk);
      const rowId = tk.id + pkKey;
      let row = rows.get(rowId);
      if (!row) {
        // Ids are built once: map lookups with freshly concatenated strings re-hash them every time.
        row = { id: rowId, pkKey, tk, tombKey: prefixedComponent(tk.tombBase, pkKey), colPrefix: prefixedComponent(tk.colBase, pkKey), deletes: [], tomb: undefined, raisedBy: undefined };
        rows.set(rowId, row);
      }
      item.row = row;
      if (wire.type === 'delete') {
        row.deletes.push({ hlc: change.hlc, item });
        deletes = true;
      } else {
        const cellId = `${rowId}\u0001${wire.column}`;
        let cell = cells.get(cellId);
        if (!cell) {
          cell = { id: cellId, key: columnKey(row.colPrefix, wire.column), row, candidates: [] };
          cells.set(cellId, cell);
        }
        cell.candidates.push({ hlc: change.hlc, item });
      }
    }
    const mItems: MigrationItem[] = new Array(set.migrations.length);
    migrationItems.push(mItems);
    for (let i = 0; i < set.migrations.length; i++) {
      const migration = set.migrations[i]!;
      const item: MigrationItem = { migration, applied: false, json: undefined, stamp: undefined, idx: 0 };
      mItems[i] = item;
      if (isOwn(migration.hlc, own)) { ownSkipped++; continue; }
      const key = migrationKey(migration.wire.schema, migration.kind, migration.name, migration.wire.schemaVersion);
      const id = `m${key.toString('latin1')}`;
      let plan = migrations.get(id);
      if (!plan) { plan = { id, key, candidates: [] }; migrations.set(id, plan); }
      plan.candidates.push({ hlc: migration.hlc, item });
    }
  }
  return { sets, changeItems, migrationItems, rows: [...rows.values()], cells: [...cells.values()], migrations: [...migrations.values()], ownSkipped, deletes };
}

/**
 * Resolves and stages a group of messages. The caller writes `ops` in one
 * batch and, once written, adopts `counts`. Nothing is written here.
 */
export async function applyGroup(ctx: ApplyContext, messages: ValidChangeSet[][], fixedStamps?: readonly (readonly Buffer[])[]): Promise<GroupResult> {
  const plans = messages.map((sets) => planMessage(ctx, sets));

  // The records as the group has left them so far: absent = never looked up,
  // undefined = known to be missing.
  const records = new Map<string, Buffer | undefined>();
  const keys: Buffer[] = [];
  const ids: string[] = [];
  const want = (id: string, key: Buffer): void => {
    if (records.has(id)) return;
    records.set(id, undefined);
    ids.push(id);
    keys.push(key);
  };
  const wantIfStored = (id: string, key: Buffer): void => {
    // A key that is certainly not stored needs no entry: absent reads as missing,
    // and no store scan can meet it.
    if (ctx.mightExist(key)) want(id, key);
  };
  for (const plan of plans) {
    for (const r of plan.rows) wantIfStored(r.id, r.tombKey);
    for (const c of plan.cells) wantIfStored(c.id, c.key);
    for (const m of plan.migrations) want(m.id, m.key);
  }
  if (keys.length > 0) {
    const values = await ctx.store.getMany(keys);
    for (let i = 0; i < ids.length; i++) records.set(ids[i]!, values[i]);
  }

  const ops: KvOp[] = [];
  const counts = new Map<string, TableStats>();
  const bump = (tk: TableKeys, by: number): void => {
    let stats = counts.get(tk.id);
    if (!stats) {
      stats = { schema: tk.schema, table: tk.table, count: ctx.tables.get(tk.id)?.count ?? 0 };
      counts.set(tk.id, stats);
    }
    stats.count += by;
  };
  // Cells each row gained inside the group, which a later delete in the group must also see.
  const rowCells = new Map<string, Map<string, Buffer>>();
  // Only a later message reads what a message leaves in `records` and `rowCells`
  // (inside one, tombstones resolve before cells): the last one need not record it.
  let lastWithDeletes = -1;
  plans.forEach((plan, i) => { if (plan.deletes) lastWithDeletes = i; });
  const outcomes: ApplyOutcome[] = [];
  let lastStamp: Buffer | undefined;

  for (let p = 0; p < plans.length; p++) {
    const plan = plans[p]!;
    const later = p < plans.length - 1;
    let applied = 0;
    let skipped = plan.ownSkipped;
    let conflicts = 0;

    // Tombstones first: a row's final tombstone decides which writes it blocks.
    const raised: RowPlan[] = [];
    for (const r of plan.rows) {
      const stored = records.get(r.id);
      const storedHlc = stored ? factHlc(stored) : undefined;
      const out = resolveDeletes(r.deletes, storedHlc);
      applied += out.applied;
      skipped += out.skipped;
      if (out.winner) {
        out.winner.item.applied = true;
        raised.push(r);
        r.raisedBy = out.winner;
        r.tomb = out.winner.hlc;
      } else {
        r.tomb = storedHlc;
      }
    }

    // A raised tombstone removes the row's column versions it now blocks:
    // those in the store and those written earlier in this group.
    for (const r of raised) {
      const tomb = r.tomb;
      const candidates = new Map<string, Buffer>(rowCells.get(r.id));
      const it = ctx.store.iterator({ gte: r.colPrefix, lt: prefixEnd(r.colPrefix) });
      try {
        for (let batch = await it.nextBatch(256); batch.length > 0; batch = await it.nextBatch(256)) {
          for (const [key, value] of batch) {
            const [column] = decodeComponent(key, r.colPrefix.length);
            const id = `${r.id}\u0001${column}`;
            // The group's own writes are newer than the store's view.
            if (!records.has(id)) records.set(id, Buffer.from(value));
            candidates.set(id, Buffer.from(key));
          }
        }
      } finally {
        await it.close();
      }
      for (const [id, key] of candidates) {
        const record = records.get(id);
        if (!record || !tombstoneBlocks(tomb, factHlc(record), ctx.allowResurrection)) continue;
        ops.push({ type: 'del', key }, { type: 'del', key: factLogKey(record) });
        records.set(id, undefined);
        bump(r.tk, -1);
      }
    }

    const cellWinners: { cell: CellPlan; stored?: Buffer; winner: Candidate<ChangeItem> }[] = [];
    for (const cell of plan.cells) {
      const stored = records.get(cell.id);
      const tomb = cell.row.tomb;
      const out = resolveSlot(cell.candidates, stored ? factHlc(stored) : undefined, (hlc) => tombstoneBlocks(tomb, hlc, ctx.allowResurrection));
      applied += out.applied;
      skipped += out.skipped;
      conflicts += out.conflicts;
      if (out.winner) {
        const item = out.winner.item;
        const wire = item.change.wire as ColumnChange;
        item.applied = true;
        item.valueJson = sqlValueJson(wire.value);
        item.columnJson = jsonString(wire.column);
        cellWinners.push({ cell, stored, winner: out.winner });
      }
    }

    const migrationWinners: { plan: MigrationPlan; stored?: Buffer; winner: Candidate<MigrationItem> }[] = [];
    for (const m of plan.migrations) {
      const stored = records.get(m.id);
      const out = resolveSlot(m.candidates, stored ? factHlc(stored) : undefined);
      applied += out.applied;
      skipped += out.skipped;
      conflicts += out.conflicts;
      if (out.winner) {
        out.winner.item.applied = true;
        migrationWinners.push({ plan: m, stored, winner: out.winner });
      }
    }

    // Stamp each change set that changed something, in message order, and
    // give each applied fact its place in the log.
    const accepted: ChangeSet[] = [];
    const stamps: Buffer[] = [];
    const acceptedJson: string[] = [];
    for (let cs = 0; cs < plan.sets.length; cs++) {
      const set = plan.sets[cs]!;
      const mApplied = plan.migrationItems[cs]!.filter((m) => m.applied);
      const cApplied = plan.changeItems[cs]!.filter((c) => c.applied);
      if (mApplied.length === 0 && cApplied.length === 0) continue;
      // Replaying an archive keeps each transaction's original stamp.
      const stamp = fixedStamps?.[p]?.[cs] ?? ctx.stamps.next();
      stamps.push(stamp);
      lastStamp = stamp;
      let idx = 0;
      const migrationTexts: string[] = new Array(mApplied.length);
      const changeTexts: string[] = new Array(cApplied.length);
      for (let i = 0; i < mApplied.length; i++) {
        const m = mApplied[i]!;
        m.stamp = stamp;
        m.idx = idx;
        const text = (m.json = JSON.stringify(m.migration.wire));
        migrationTexts[i] = text;
        ops.push({ type: 'put', key: logKey(stamp, idx++), value: encodeLogEntry(set.siteId, set.wire.transactionId, LOG_MIGRATION, text) });
      }
      for (let i = 0; i < cApplied.length; i++) {
        const c = cApplied[i]!;
        c.stamp = stamp;
        c.idx = idx;
        const text = changeJson(c);
        changeTexts[i] = text;
        ops.push({ type: 'put', key: logKey(stamp, idx++), value: encodeLogEntry(set.siteId, set.wire.transactionId, LOG_CHANGE, text) });
      }
      accepted.push({
        siteId: set.wire.siteId,
        transactionId: set.wire.transactionId,
        hlc: set.wire.hlc,
        changes: cApplied.map((c) => c.change.wire),
        schemaMigrations: mApplied.map((m) => m.migration.wire),
      });
      acceptedJson.push(changeSetJson(set.wire.siteId, set.wire.transactionId, hlcToWire(stamp), changeTexts, migrationTexts));
    }

    for (const r of raised) {
      const winner = r.raisedBy!;
      const where = winner.item as Placed & { stamp: Buffer };
      const wire = winner.item.change.wire as DeleteChange;
      // When the deletion was accepted, by the stamp's clock: the same on every
      // node that applies it and after a restore, and what retention ages by.
      const now = hlcWallTime(where.stamp);
      const entry = wire.priorRow === undefined
        ? { pk: wire.pk, hlc: wire.hlc, createdAt: now }
        : { pk: wire.pk, hlc: wire.hlc, createdAt: now, priorRow: wire.priorRow };
      const stored = records.get(r.id);
      if (stored) {
        ops.push({ type: 'del', key: factLogKey(stored) });
        ops.push({ type: 'del', key: tombstoneAgeKey(tombstoneCreatedAt(stored), r.tombKey) });
      }
      const record = encodeFact(winner.hlc, where.stamp, where.idx, JSON.stringify(entry), now);
      ops.push({ type: 'put', key: r.tombKey, value: record });
      ops.push({ type: 'put', key: tombstoneAgeKey(now, r.tombKey), value: Buffer.alloc(0) });
      if (later) records.set(r.id, record);
    }
    for (const { cell, stored, winner } of cellWinners) {
      const where = winner.item as Placed & { stamp: Buffer };
      const wire = winner.item.change.wire as ColumnChange;
      if (stored) ops.push({ type: 'del', key: factLogKey(stored) });
      else bump(cell.row.tk, 1);
      const entry = `{"column":${winner.item.columnJson!},"hlc":"${wire.hlc}","value":${winner.item.valueJson!},"pk":${cell.row.pkKey}}`;
      const record = encodeFact(winner.hlc, where.stamp, where.idx, entry);
      ops.push({ type: 'put', key: cell.key, value: record });
      if (!later) continue;
      records.set(cell.id, record);
      if (p >= lastWithDeletes) continue;
      let touched = rowCells.get(cell.row.id);
      if (!touched) rowCells.set(cell.row.id, (touched = new Map()));
      touched.set(cell.id, cell.key);
    }
    for (const { plan: m, stored, winner } of migrationWinners) {
      const where = winner.item as Placed & { stamp: Buffer };
      if (stored) ops.push({ type: 'del', key: factLogKey(stored) });
      const record = encodeFact(winner.hlc, where.stamp, where.idx, winner.item.json!);
      ops.push({ type: 'put', key: m.key, value: record });
      if (later) records.set(m.id, record);
    }
    outcomes.push({ applied, skipped, conflicts, transactions: plan.sets.length, accepted, stamps, acceptedJson });
  }

  for (const stats of counts.values()) {
    if (stats.count < 0) throw new Error(`table count of ${stats.schema}.${stats.table} went negative`);
    const key = ctx.tableKeys(stats.schema, stats.table).statsKey;
    if (stats.count === 0) ops.push({ type: 'del', key });
    else {
      const value = Buffer.allocUnsafe(8);
      writeU64(value, stats.count, 0);
      ops.push({ type: 'put', key, value });
    }
  }
  return { outcomes, ops, counts, lastStamp };
}

/**
 * The canonical wire JSON of an applied change (key order of docs/protocol.md §2),
 * assembled from pieces already serialized for its column record; the same
 * text JSON.stringify would give for the validated wire object.
 */
function changeJson(item: ChangeItem): string {
  const wire = item.change.wire;
  if (wire.type !== 'column' || item.valueJson === undefined || !item.row) return JSON.stringify(wire);
  const row = item.row;
  const prior = wire.priorHlc === undefined ? '' : `,"priorValue":${sqlValueJson(wire.priorValue!)},"priorHlc":"${wire.priorHlc}"`;
  return `{"type":"column",${row.tk.namesJson},"pk":${row.pkKey},"column":${item.columnJson!},"value":${item.valueJson},"hlc":"${wire.hlc}"${prior}}`;
}
