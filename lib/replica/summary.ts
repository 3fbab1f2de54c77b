/**
 * A read-only census of one replica store: what `sync-coordinator inspect`
 * shows of a stopped server's database. It reads the store directly through
 * the key layout of keys.ts, without opening a Replica (which would write
 * the meta of a fresh store and scan every key again for its key filter).
 */
import { compareHlc } from '../protocol/hlc.js';
import type { KvStore } from '../storage/kv.js';
import {
  KEY_FORMAT, META_ARCHIVED, META_FLOOR, META_FORMAT, META_LAST_STAMP, META_SITE_ID,
  NS_COLUMN, NS_LOG, NS_META, NS_MIGRATION, NS_TABLE_STATS, NS_TOMBSTONE,
  decodeComponent, factStamp, logKeyHasStamp, logKeyStamp, readU64, tableId,
} from './keys.js';
import { SCAN_READ_AHEAD } from './snapshot.js';

/** Entries read per native call of the scan. */
const SCAN_BATCH = 1024;

/** One table of a {@link StoreSummary}. */
export interface TableSummary {
  schema: string;
  table: string;
  /** Rows with at least one live column version. */
  rows: number;
  /** Live column versions: one per row and column written. */
  columnVersions: number;
  /** Deleted rows whose tombstone is kept (until the retention horizon sweeps it). */
  tombstones: number;
  /** The latest coordinator stamp among the table's column versions and tombstones (30 bytes); absent when it has none. */
  lastStamp?: Buffer;
}

/** What a replica store holds, from one consistent view of it. */
export interface StoreSummary {
  /** Version of the key layout the store was written with (keys.ts). */
  keyFormat: number;
  /** The database's server site id, 16 bytes. */
  siteId: Buffer;
  /** The last stamp issued (30-byte HLC; docs/protocol.md §5); absent for a database that never accepted a change. */
  lastStamp?: Buffer;
  /** Cursors below this stamp need a snapshot (tombstones were swept); absent when nothing was swept. */
  retentionFloor?: Buffer;
  /** The last stamp a durable archive is known to hold; absent without an archive or before the first upload. */
  archivedStamp?: Buffer;
  /** Tables with column versions or tombstones, in key order (schema, then table, bytewise). */
  tables: TableSummary[];
  /** Schema migrations kept (one per schema, kind, name and version). */
  migrations: number;
  /** The change log: one entry per live fact, grouped in transactions by stamp. */
  log: {
    transactions: number;
    entries: number;
    /** Bytes of the entries' values. */
    bytes: number;
  };
}

/** Progress of {@link summarizeStore}, reported about every thousand entries of each part and at its end. */
export interface SummaryProgress {
  part: 'column versions' | 'tombstones' | 'change log';
  /** Entries of this part read so far. */
  done: number;
  /** Entries of this part, when known in advance (column versions from the table counters; the log from the facts counted before it). */
  total?: number;
}

/** Options of {@link summarizeStore}. */
export interface SummarizeOptions {
  onProgress?(progress: SummaryProgress): void;
}

/**
 * Counts what the replica store `store` holds: per table its rows, column
 * versions, tombstones and latest stamp; the change log's transactions and
 * entries; the meta stamps. Reads every key once, in order, through ONE
 * iterator (a consistent view), and never writes. Memory stays bounded by
 * one batch of entries plus one record per table.
 *
 * Throws Error when the store is not a replica store (no format or site id)
 * or was written by a newer key layout than KEY_FORMAT, and whatever the
 * store's reads reject with (STORE_CLOSED when it is closed meanwhile).
 */
export async function summarizeStore(store: KvStore, options: SummarizeOptions = {}): Promise<StoreSummary> {
  const report = options.onProgress ?? (() => undefined);
  const it = store.iterator({ gte: Buffer.of(NS_META), lt: Buffer.of(NS_LOG + 1), readAhead: SCAN_READ_AHEAD });
  const meta = new Map<number, Buffer>();
  const tables = new Map<string, TableSummary>();
  let expectedColumns = 0;
  let migrations = 0;
  const log = { transactions: 0, entries: 0, bytes: 0 };
  let part: SummaryProgress['part'] | undefined;
  let done = 0;
  let total: number | undefined;
  /** The table of the last key read, and the key prefix through it: consecutive keys mostly share it. */
  let current: { prefix: Buffer; summary: TableSummary } | undefined;
  let lastRow: Buffer | undefined;
  let transaction: Buffer | undefined;

  const enter = (next: SummaryProgress['part'], nextTotal?: number): void => {
    if (part !== undefined) report({ part, done, ...(total === undefined ? {} : { total }) });
    part = next;
    done = 0;
    total = nextTotal;
    current = undefined;
    lastRow = undefined;
    report({ part, done, ...(total === undefined ? {} : { total }) });
  };

  /** The table a column or tombstone key belongs to, and the offset after its table component. */
  const tableOf = (key: Buffer): [TableSummary, number] => {
    if (current && key.length > current.prefix.length && key.compare(current.prefix, 0, current.prefix.length, 0, current.prefix.length) === 0) {
      return [current.summary, current.prefix.length];
    }
    const [schema, afterSchema] = decodeComponent(key, 1);
    const [table, afterTable] = decodeComponent(key, afterSchema);
    const id = tableId(schema, table);
    let summary = tables.get(id);
    if (!summary) {
      summary = { schema, table, rows: 0, columnVersions: 0, tombstones: 0 };
      tables.set(id, summary);
    }
    current = { prefix: Buffer.from(key.subarray(0, afterTable)), summary };
    return [summary, afterTable];
  };

  const noteStamp = (summary: TableSummary, record: Buffer): void => {
    const stamp = factStamp(record);
    if (!summary.lastStamp || compareHlc(stamp, summary.lastStamp) > 0) summary.lastStamp = Buffer.from(stamp);
  };

  try {
    for (let batch = await it.nextBatch(SCAN_BATCH); batch.length > 0; batch = await it.nextBatch(SCAN_BATCH)) {
      for (const [key, value] of batch) {
        const ns = key[0]!;
        if (ns === NS_META) {
          if (key.length === 2) meta.set(key[1]!, Buffer.from(value));
        } else if (ns === NS_TABLE_STATS) {
          expectedColumns += readU64(value, 0);
        } else if (ns === NS_MIGRATION) {
          migrations++;
        } else if (ns === NS_COLUMN) {
          if (part !== 'column versions') {
            checkReplicaMeta(meta);
            enter('column versions', expectedColumns);
          }
          const [summary, afterTable] = tableOf(key);
          summary.columnVersions++;
          // Keys are sorted, so a row's columns are contiguous: a new pk component starts a new row.
          const [, afterPk] = decodeComponent(key, afterTable);
          if (!lastRow || lastRow.length !== afterPk || key.compare(lastRow, 0, afterPk, 0, afterPk) !== 0) {
            summary.rows++;
            lastRow = Buffer.from(key.subarray(0, afterPk));
          }
          noteStamp(summary, value);
          done++;
        } else if (ns === NS_TOMBSTONE) {
          if (part !== 'tombstones') {
            checkReplicaMeta(meta);
            enter('tombstones');
          }
          const [summary] = tableOf(key);
          summary.tombstones++;
          noteStamp(summary, value);
          done++;
        } else if (ns === NS_LOG) {
          if (part !== 'change log') {
            checkReplicaMeta(meta);
            // One log entry per live fact (keys.ts): everything counted before it.
            let facts = migrations;
            for (const t of tables.values()) facts += t.columnVersions + t.tombstones;
            enter('change log', facts);
          }
          log.entries++;
          log.bytes += value.length;
          if (!transaction || !logKeyHasStamp(key, transaction)) {
            transaction = Buffer.from(logKeyStamp(key));
            log.transactions++;
          }
          done++;
        }
      }
      if (part !== undefined) report({ part, done, ...(total === undefined ? {} : { total }) });
    }
  } finally {
    await it.close();
  }
  const siteId = checkReplicaMeta(meta);
  if (part !== undefined) report({ part, done, ...(total === undefined ? {} : { total }) });
  const stamp = (byte: number): Buffer | undefined => meta.get(byte);
  return {
    keyFormat: meta.get(META_FORMAT[1]!)!.readUInt32BE(0),
    siteId,
    ...optional('lastStamp', stamp(META_LAST_STAMP[1]!)),
    ...optional('retentionFloor', stamp(META_FLOOR[1]!)),
    ...optional('archivedStamp', stamp(META_ARCHIVED[1]!)),
    tables: [...tables.values()],
    migrations,
    log,
  };
}

/** Checks the meta a replica store always has (see Replica.open) and returns its site id. */
function checkReplicaMeta(meta: ReadonlyMap<number, Buffer>): Buffer {
  const format = meta.get(META_FORMAT[1]!);
  const site = meta.get(META_SITE_ID[1]!);
  if (!format || format.length !== 4 || !site || site.length !== 16) throw new Error('not a replica store: it has no key format or server site id');
  const version = format.readUInt32BE(0);
  if (version > KEY_FORMAT) throw new Error(`store key format ${version} is newer than this coordinator supports (${KEY_FORMAT})`);
  return site;
}

function optional<K extends string>(key: K, value: Buffer | undefined): { [P in K]?: Buffer } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: Buffer };
}
