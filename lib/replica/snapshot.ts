import { randomUUID } from 'node:crypto';
import { logs } from '../log.js';
import { compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { SnapshotCheckpoint } from '../protocol/messages.js';
import { siteIdToWire } from '../protocol/site-id.js';
import { validateCheckpoint } from '../protocol/validate.js';
import type { KvIterator } from '../storage/kv.js';
import {
  NS_META, NS_TABLE_STATS, NS_MIGRATION, NS_COLUMN, NS_TOMBSTONE, NS_LOG,
  META_LAST_STAMP, META_FLOOR, factHlc, factJson, tombstoneJson,
  decodeComponent, prefixEnd, readU64, tableId,
} from './keys.js';
import type { ReplicaContext } from './context.js';

/** Bytes per native read of a long scan: fewer thread hops per entry. */
export const SCAN_READ_AHEAD = 512 * 1024;

/** Options of a snapshot stream. */
export interface SnapshotOptions {
  /** Resume an interrupted download: untrusted, validated here. */
  checkpoint?: unknown;
  /** Id for the header and footer. @default a random UUID */
  snapshotId?: string;
}

const log = logs.replica;

interface TableInfo { schema: string; table: string; count: number; id: string }

/**
 * Streams a snapshot as JSON chunk texts in the order of docs/protocol.md §6.
 * Meta, counts, migrations, column versions and tombstones are all read
 * through ONE iterator, so they come from a single consistent view and the
 * header's stamp is exactly the last change the chunks contain. Memory stays
 * bounded by one chunk (plus the migrations, which are few).
 *
 * A resume checkpoint (docs/protocol.md §6) is validated before the first chunk:
 * a malformed one (types, ranges) rejects the stream with INVALID_CHECKPOINT
 * naming the field, and yields nothing. A well-formed one is never refused,
 * since a real client ignores non-fatal errors and would stay empty for good
 * (§8): its `siteId` is the client's own and is not compared; a
 * `completedTables` entry that names no table, or more than one, skips
 * nothing; a `hlc` later than the last stamp issued (store restored from an
 * older backup) or below the retention floor gets a fresh full snapshot
 * (new snapshotId, header hlc = the last stamp), logged on
 * sync-coordinator:replica.
 */
export async function* streamSnapshot(replica: ReplicaContext, options: SnapshotOptions): AsyncGenerator<string, void, undefined> {
  const checkpoint: (SnapshotCheckpoint & { hlcBytes: Buffer }) | undefined =
    options.checkpoint === undefined ? undefined : validateCheckpoint(options.checkpoint);
  const chunkSize = replica.snapshotChunkSize;
  const it = replica.store.iterator({ gte: Buffer.of(NS_META), lt: Buffer.of(NS_LOG), readAhead: SCAN_READ_AHEAD });
  // Entries come from the reader's buffer without a promise while the batch
  // lasts (`nextBuffered() ?? await current()`): a snapshot is millions of
  // entries, and an await per entry would dominate its cost.
  const reader = new Reader(it);
  try {
    let entry = await reader.current();
    let lastStamp: Buffer | undefined;
    let floor: Buffer | undefined;
    for (; entry && entry[0][0] === NS_META; entry = reader.nextBuffered() ?? await reader.current()) {
      if (entry[0].equals(META_LAST_STAMP)) lastStamp = Buffer.from(entry[1]);
      else if (entry[0].equals(META_FLOOR)) floor = Buffer.from(entry[1]);
    }
    const tables: TableInfo[] = [];
    for (; entry && entry[0][0] === NS_TABLE_STATS; entry = reader.nextBuffered() ?? await reader.current()) {
      const [schema, next] = decodeComponent(entry[0], 1);
      const [table] = decodeComponent(entry[0], next);
      tables.push({ schema, table, count: readU64(entry[1], 0), id: tableId(schema, table) });
    }
    const migrations: { hlc: Buffer; json: string }[] = [];
    for (; entry && entry[0][0] === NS_MIGRATION; entry = reader.nextBuffered() ?? await reader.current()) {
      migrations.push({ hlc: Buffer.from(factHlc(entry[1])), json: factJson(entry[1]) });
    }
    // Replaying DDL needs causal order, which the HLC gives.
    migrations.sort((a, b) => compareHlc(a.hlc, b.hlc));

    let snapshotId = options.snapshotId ?? randomUUID();
    // A fresh database has issued no stamp yet: the zero HLC of this site.
    let headerHlc = lastStamp ?? Buffer.concat([Buffer.alloc(10), replica.siteId, Buffer.alloc(4)]);
    /** Ids of the tables whose column versions the client already has. */
    const skip = new Set<string>();
    if (checkpoint) {
      const stale = !lastStamp || compareHlc(checkpoint.hlcBytes, lastStamp) > 0
        ? 'is later than anything this database has issued (restored from an older backup?)'
        : floor && compareHlc(checkpoint.hlcBytes, floor) < 0 ? 'is older than the retention floor' : undefined;
      if (stale) {
        // Refusing would strand a real client (it ignores the error); a full
        // snapshot under a new id gives it everything with a valid cursor.
        log('resume of snapshot %s: checkpoint.hlc %s %s; streaming a fresh full snapshot %s',
          checkpoint.snapshotId, checkpoint.hlc, stale, snapshotId);
      } else {
        let existing: { schema: string; table: string }[] = tables;
        if (checkpoint.completedTables.some(hasTwoDots)) {
          existing = await existingTables(reader, tables, migrations);
          entry = await reader.seek(Buffer.of(NS_COLUMN));
        }
        for (const id of completedTableIds(checkpoint.completedTables, tables, existing)) skip.add(id);
        // The completed tables reflect the old view: the client's cursor must
        // stay at the checkpoint so get_changes covers everything after it.
        snapshotId = checkpoint.snapshotId;
        headerHlc = checkpoint.hlcBytes;
      }
    }

    yield JSON.stringify({
      type: 'header', siteId: siteIdToWire(replica.siteId), hlc: hlcToWire(headerHlc), snapshotFormat: 1,
      tableCount: tables.length - skip.size, migrationCount: migrations.length, snapshotId,
    });
    const migrationCount = migrations.length;
    for (const m of migrations) yield `{"type":"schema-migration","migration":${m.json}}`;
    migrations.length = 0;

    // Skip to the column versions (past any migrations already read).
    if (entry && entry[0][0] < NS_COLUMN) entry = await reader.seek(Buffer.of(NS_COLUMN));
    const counts = new Map(tables.map((t) => [t.id, t.count]));
    let totalTables = 0;
    let totalEntries = 0;
    while (entry && entry[0][0] === NS_COLUMN) {
      const [schema, afterSchema] = decodeComponent(entry[0], 1);
      const [table, afterTable] = decodeComponent(entry[0], afterSchema);
      const prefix = Buffer.from(entry[0].subarray(0, afterTable));
      const id = tableId(schema, table);
      if (skip.has(id)) {
        entry = await reader.seek(prefixEnd(prefix));
        continue;
      }
      const head = `{"type":"column-versions","schema":${JSON.stringify(schema)},"table":${JSON.stringify(table)},"entries":[`;
      yield JSON.stringify({ type: 'table-start', schema, table, estimatedEntries: counts.get(id) ?? 0 });
      let written = 0;
      let batch: string[] = [];
      for (; entry && entry[0].length > prefix.length && startsWith(entry[0], prefix); entry = reader.nextBuffered() ?? await reader.current()) {
        batch.push(factJson(entry[1]));
        if (batch.length >= chunkSize) {
          yield `${head}${batch.join(',')}]}`;
          written += batch.length;
          batch = [];
        }
      }
      if (batch.length > 0) {
        yield `${head}${batch.join(',')}]}`;
        written += batch.length;
      }
      yield JSON.stringify({ type: 'table-end', schema, table, entriesWritten: written });
      totalTables++;
      totalEntries += written;
    }

    if (entry && entry[0][0] < NS_TOMBSTONE) entry = await reader.seek(Buffer.of(NS_TOMBSTONE));
    while (entry && entry[0][0] === NS_TOMBSTONE) {
      const [schema, afterSchema] = decodeComponent(entry[0], 1);
      const [table, afterTable] = decodeComponent(entry[0], afterSchema);
      const prefix = Buffer.from(entry[0].subarray(0, afterTable));
      const head = `{"type":"tombstone","schema":${JSON.stringify(schema)},"table":${JSON.stringify(table)},"entries":[`;
      let batch: string[] = [];
      for (; entry && entry[0].length > prefix.length && startsWith(entry[0], prefix); entry = reader.nextBuffered() ?? await reader.current()) {
        batch.push(tombstoneJson(entry[1]));
        if (batch.length >= chunkSize) {
          yield `${head}${batch.join(',')}]}`;
          batch = [];
        }
      }
      if (batch.length > 0) yield `${head}${batch.join(',')}]}`;
    }

    yield JSON.stringify({ type: 'footer', snapshotId, totalTables, totalEntries, totalMigrations: migrationCount });
  } finally {
    await it.close();
  }
}

/** Whether a dotted name could split into (schema, table) in more than one way. */
function hasTwoDots(name: string): boolean {
  const first = name.indexOf('.');
  return first !== -1 && name.indexOf('.', first + 1) !== -1;
}

/**
 * Every table this view knows of, by id: those with column versions, with
 * tombstones, or named by a table migration. A completed entry is ambiguous
 * if it reads as any two of them, even one whose rows are gone now: the
 * client may have completed that one when it still had rows. Walks the
 * tombstone range one table at a time (a seek per table) through the same
 * view and leaves the reader there; the caller seeks back.
 */
async function existingTables(reader: Reader, tables: TableInfo[], migrations: { json: string }[]): Promise<{ schema: string; table: string }[]> {
  const byId = new Map<string, { schema: string; table: string; id: string }>(tables.map((t) => [t.id, t]));
  const add = (schema: string, table: string): void => {
    const id = tableId(schema, table);
    if (!byId.has(id)) byId.set(id, { schema, table, id });
  };
  for (const m of migrations) {
    const wire = JSON.parse(m.json) as { type: string; schema: string; table: string; fromTable?: string };
    if (wire.type.endsWith('_index')) continue;
    add(wire.schema, wire.table);
    if (wire.fromTable !== undefined) add(wire.schema, wire.fromTable);
  }
  for (let entry = await reader.seek(Buffer.of(NS_TOMBSTONE)); entry && entry[0][0] === NS_TOMBSTONE;) {
    const [schema, afterSchema] = decodeComponent(entry[0], 1);
    const [table, afterTable] = decodeComponent(entry[0], afterSchema);
    add(schema, table);
    entry = await reader.seek(prefixEnd(entry[0].subarray(0, afterTable)));
  }
  return [...byId.values()];
}

/**
 * The ids of the streamable `tables` that `completed` names unambiguously
 * (docs/protocol.md §6): an entry is `schema + "." + table`, so it is skipped only
 * when exactly one table of `existing` reads as it. Entries naming no table
 * (dropped since, or never here) are ignored.
 */
function completedTableIds(completed: string[], tables: TableInfo[], existing: { schema: string; table: string }[]): string[] {
  const wanted = new Set(completed);
  const readings = new Map<string, number>();
  for (const t of existing) {
    const name = `${t.schema}.${t.table}`;
    if (wanted.has(name)) readings.set(name, (readings.get(name) ?? 0) + 1);
  }
  return tables.filter((t) => readings.get(`${t.schema}.${t.table}`) === 1).map((t) => t.id);
}

/** Entry-at-a-time view over an iterator that reads in batches. */
class Reader {
  private readonly it: KvIterator;
  private buffer: [Buffer, Buffer][] = [];
  private pos = 0;

  constructor(it: KvIterator) {
    this.it = it;
  }

  async current(): Promise<[Buffer, Buffer] | undefined> {
    if (this.pos >= this.buffer.length) {
      this.buffer = await this.it.nextBatch(1024);
      this.pos = 0;
    }
    return this.buffer[this.pos];
  }

  /** Moves on and returns the next entry if it is already buffered; undefined when a read is needed. */
  nextBuffered(): [Buffer, Buffer] | undefined {
    this.pos++;
    return this.buffer[this.pos];
  }

  /** Moves to `target` and returns the entry there. */
  seek(target: Buffer): Promise<[Buffer, Buffer] | undefined> {
    this.it.seek(target);
    this.buffer = [];
    this.pos = 0;
    return this.current();
  }
}

function startsWith(key: Buffer, prefix: Buffer): boolean {
  return key.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}
