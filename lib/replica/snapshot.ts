import { randomUUID } from 'node:crypto';
import { SyncError, ErrorCode } from '../errors.js';
import { compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { SnapshotCheckpoint } from '../protocol/messages.js';
import { siteIdToWire } from '../protocol/site-id.js';
import { validateCheckpoint } from '../protocol/validate.js';
import type { KvIterator } from '../storage/kv.js';
import {
  NS_META, NS_TABLE_STATS, NS_MIGRATION, NS_COLUMN, NS_TOMBSTONE, NS_LOG,
  META_LAST_STAMP, META_FLOOR, factHlc, factJson, tombstoneJson,
  decodeComponent, prefixEnd, readU64,
} from './keys.js';
import type { ReplicaContext } from './replica.js';

/** Bytes per native read of a long scan: fewer thread hops per entry. */
export const SCAN_READ_AHEAD = 512 * 1024;

/** Options of a snapshot stream. */
export interface SnapshotOptions {
  /** Resume an interrupted download: untrusted, validated here. */
  checkpoint?: unknown;
  /** Id for the header and footer. @default a random UUID */
  snapshotId?: string;
}

interface TableInfo { schema: string; table: string; count: number; name: string }

/**
 * Streams a snapshot as JSON chunk texts in the order of PROTOCOL.md §6.
 * Meta, counts, migrations, column versions and tombstones are all read
 * through ONE iterator, so they come from a single consistent view and the
 * header's stamp is exactly the last change the chunks contain. Memory stays
 * bounded by one chunk (plus the migrations, which are few).
 *
 * Validation of a resume checkpoint happens before the first chunk: a bad
 * checkpoint rejects the stream with INVALID_CHECKPOINT (or
 * SNAPSHOT_REQUIRED when retention has passed it) and yields nothing.
 */
export async function* streamSnapshot(replica: ReplicaContext, options: SnapshotOptions): AsyncGenerator<string, void, undefined> {
  const checkpoint: (SnapshotCheckpoint & { hlcBytes: Buffer; siteIdBytes: Buffer }) | undefined =
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
      tables.push({ schema, table, count: readU64(entry[1], 0), name: `${schema}.${table}` });
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
    const skip = new Set<string>();
    if (checkpoint) {
      if (!checkpoint.siteIdBytes.equals(replica.siteId)) {
        throw new SyncError(ErrorCode.InvalidCheckpoint, `checkpoint.siteId: ${JSON.stringify(checkpoint.siteId)} is not this database's server site id`);
      }
      if (!lastStamp || compareHlc(checkpoint.hlcBytes, lastStamp) > 0) {
        throw new SyncError(ErrorCode.InvalidCheckpoint, `checkpoint.hlc: ${checkpoint.hlc} is later than anything this database has issued`);
      }
      if (floor && compareHlc(checkpoint.hlcBytes, floor) < 0) {
        throw new SyncError(ErrorCode.SnapshotRequired, `checkpoint.hlc: ${checkpoint.hlc} is older than the retention horizon; start a new snapshot`);
      }
      const known = new Set(tables.map((t) => t.name));
      checkpoint.completedTables.forEach((name, i) => {
        if (!known.has(name)) throw new SyncError(ErrorCode.InvalidCheckpoint, `checkpoint.completedTables[${i}]: unknown table ${JSON.stringify(name)}`);
        skip.add(name);
      });
      // The completed tables reflect the old view: the client's cursor must
      // stay at the checkpoint so get_changes covers everything after it.
      snapshotId = checkpoint.snapshotId;
      headerHlc = checkpoint.hlcBytes;
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
    const counts = new Map(tables.map((t) => [t.name, t.count]));
    let totalTables = 0;
    let totalEntries = 0;
    while (entry && entry[0][0] === NS_COLUMN) {
      const [schema, afterSchema] = decodeComponent(entry[0], 1);
      const [table, afterTable] = decodeComponent(entry[0], afterSchema);
      const prefix = Buffer.from(entry[0].subarray(0, afterTable));
      const name = `${schema}.${table}`;
      if (skip.has(name)) {
        entry = await reader.seek(prefixEnd(prefix));
        continue;
      }
      const head = `{"type":"column-versions","schema":${JSON.stringify(schema)},"table":${JSON.stringify(table)},"entries":[`;
      yield JSON.stringify({ type: 'table-start', schema, table, estimatedEntries: counts.get(name) ?? 0 });
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
