/**
 * `sync-coordinator inspect <db>`: what one database of a STOPPED server's
 * data directory holds (README "CLI"). Like restore and export it takes the
 * data directory's lock for the whole read, so it refuses to run beside a
 * server using the directory rather than read a store being written.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError } from '../config/load-config.js';
import { claimDataDir } from '../config/data-dir.js';
import { isSyncError, messageOf } from '../errors.js';
import { decodeHlc, hlcToWire } from '../protocol/hlc.js';
import { siteIdToWire } from '../protocol/site-id.js';
import { summarizeStore, type StoreSummary, type SummaryProgress } from '../replica/summary.js';
import { databaseDirectory, databaseIdFromDirectory, validateDatabaseId } from '../storage/database-id.js';
import type { KvStore } from '../storage/kv.js';
import { openLevelStore, pathExists } from '../storage/leveldb.js';

/** Why an inspection refused to run; stable, for callers that branch on it. */
export type InspectErrorCode =
  /** No such data directory, or the database is not in it. */
  | 'NOT_FOUND'
  /** A running server holds the data directory, or another process has the database's store open. */
  | 'IN_USE'
  /** The database's directory holds no readable replica store. */
  | 'NOT_A_STORE';

/** A refusal of {@link inspectDatabase}; `message` is one line naming the database or directory. */
export class InspectError extends Error {
  readonly code: InspectErrorCode;

  constructor(code: InspectErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InspectError';
    this.code = code;
  }
}

/** A stamp (an HLC, docs/protocol.md §1) spelled out for a person and for scripts. */
export interface StampInfo {
  /** The wire form: standard base64 of the 30 bytes. */
  hlc: string;
  /** Its wall time, ISO 8601 in UTC. */
  time: string;
  /** Its wall time in ms since the epoch. */
  wallTime: number;
  counter: number;
  /** Site id (base64url) of whoever issued it: the server's own for the coordinator's stamps. */
  siteId: string;
  opSeq: number;
}

/** One table of a {@link DatabaseInspection}. */
export interface TableInspection {
  schema: string;
  table: string;
  /** Rows with at least one live column version. */
  rows: number;
  /** Live column versions (one per row and column written). */
  columnVersions: number;
  /** Deleted rows whose tombstones are kept until the retention horizon. */
  tombstones: number;
  /** The table's latest change (column version or tombstone), by coordinator stamp; null when it has none. */
  lastStamp: StampInfo | null;
}

/** What {@link inspectDatabase} found; plain JSON (what `inspect --json` prints). */
export interface DatabaseInspection {
  databaseId: string;
  /** The database's LevelDB directory. */
  directory: string;
  /** Bytes of the store's files on disk, as the server left them. */
  sizeBytes: number;
  files: number;
  /** Version of the key layout it was written with. */
  keyFormat: number;
  /** The database's server site id (base64url). */
  siteId: string;
  /** The last stamp issued: the newest change the database accepted; null when it never accepted one. */
  lastStamp: StampInfo | null;
  /** What a durable archive is known to hold; null without an archive or before the first upload. */
  archivedStamp: StampInfo | null;
  /** Cursors older than this need a snapshot (tombstones were swept); null when nothing was swept. */
  retentionFloor: StampInfo | null;
  tables: TableInspection[];
  /** Schema migrations kept. */
  migrations: number;
  /** The change log: one entry per live fact, grouped by stamp in transactions. */
  changeLog: { transactions: number; entries: number; bytes: number };
}

/** Options of {@link inspectDatabase}. */
export interface InspectOptions {
  /** The server's data directory (never created). */
  dataDir: string;
  databaseId: string;
  /** Progress of the scan, about every thousand entries (see SummaryProgress). */
  onProgress?(progress: SummaryProgress): void;
}

/** Databases named in a not-found message, at most. */
const LISTED_DATABASES = 5;

/**
 * Inspects database `databaseId` in `dataDir`: its tables with their row,
 * column version and tombstone counts and latest stamp, the database's last
 * stamp, its change log and its size on disk. Reads only (LevelDB itself may
 * tidy its log files on open, as at any open); the data directory is locked
 * meanwhile and released before it resolves.
 *
 * Throws SyncError INVALID_DATABASE_ID for an invalid id (before anything
 * is touched); InspectError NOT_FOUND when `dataDir` or the database is not
 * there (the message names the databases it holds, up to five), IN_USE when
 * a running server holds the data directory or another process has the
 * store open, NOT_A_STORE when the directory holds no readable replica
 * store; ConfigError (`setting` "dataDir") when the data directory cannot be
 * locked for another reason (not writable, not a directory).
 */
export async function inspectDatabase(options: InspectOptions): Promise<DatabaseInspection> {
  const databaseId = validateDatabaseId(options.databaseId);
  const { dataDir } = options;
  // claimDataDir creates a missing directory; an inspection must not.
  if (!(await pathExists(dataDir))) throw new InspectError('NOT_FOUND', `there is no data directory ${JSON.stringify(dataDir)}`);
  let lock;
  try {
    lock = await claimDataDir(dataDir);
  } catch (err) {
    if (err instanceof ConfigError && /in use by another running/.test(err.problem)) {
      throw new InspectError('IN_USE', `${err.problem}; inspect reads a stopped server's data (ask a running one with "sync-coordinator stats")`, { cause: err });
    }
    throw err;
  }
  try {
    const directory = databaseDirectory(dataDir, databaseId);
    if (!(await pathExists(directory))) {
      const { ids, more } = await databasesOnDisk(dataDir, LISTED_DATABASES);
      const there = ids.length === 0 ? 'it holds no database' : `it holds ${ids.map((id) => JSON.stringify(id)).join(', ')}${more ? ' and more' : ''}`;
      throw new InspectError('NOT_FOUND', `database ${JSON.stringify(databaseId)} is not in ${JSON.stringify(dataDir)} (no directory ${JSON.stringify(directory)}; ${there})`);
    }
    if (!(await stat(directory)).isDirectory()) {
      throw new InspectError('NOT_A_STORE', `${JSON.stringify(directory)} (database ${JSON.stringify(databaseId)}) is a file, not a database directory`);
    }
    // Measured before the store opens: LevelDB may rewrite its log into a table file on open.
    const size = await directorySize(directory);
    const store = await openStore(databaseId, directory);
    let summary: StoreSummary;
    try {
      summary = await summarizeStore(store, options.onProgress ? { onProgress: options.onProgress } : {});
    } catch (err) {
      if (isSyncError(err)) throw err;
      throw new InspectError('NOT_A_STORE', `${JSON.stringify(directory)} (database ${JSON.stringify(databaseId)}) holds no readable replica store: ${messageOf(err)}`, { cause: err });
    } finally {
      await store.close();
    }
    return {
      databaseId,
      directory,
      sizeBytes: size.bytes,
      files: size.files,
      keyFormat: summary.keyFormat,
      siteId: siteIdToWire(summary.siteId),
      lastStamp: stampInfo(summary.lastStamp),
      archivedStamp: stampInfo(summary.archivedStamp),
      retentionFloor: stampInfo(summary.retentionFloor),
      tables: summary.tables.map((t) => ({
        schema: t.schema, table: t.table, rows: t.rows, columnVersions: t.columnVersions, tombstones: t.tombstones, lastStamp: stampInfo(t.lastStamp),
      })),
      migrations: summary.migrations,
      changeLog: { ...summary.log },
    };
  } finally {
    await lock.release();
  }
}

/** The fields of a 30-byte stamp; null for none. */
export function stampInfo(stamp: Buffer | undefined): StampInfo | null {
  if (!stamp) return null;
  const fields = decodeHlc(stamp);
  return {
    hlc: hlcToWire(stamp),
    time: new Date(fields.wallTime).toISOString(),
    wallTime: fields.wallTime,
    counter: fields.counter,
    siteId: siteIdToWire(fields.siteId),
    opSeq: fields.opSeq,
  };
}

async function openStore(databaseId: string, directory: string): Promise<KvStore> {
  try {
    // Small buffers: the store is only read, once, from start to end.
    return await openLevelStore(directory, { createIfMissing: false, writeBufferSize: 64 * 1024, cacheSize: 256 * 1024 });
  } catch (err) {
    const text = `${messageOf(err)} ${messageOf((err as Error).cause)}`;
    // A router embedded without the CLI takes no data directory lock, but LevelDB locks each open store.
    if (/lock/i.test(text) && /(unavailable|already held|in use|being used|locked)/i.test(text)) {
      throw new InspectError('IN_USE', `the store of database ${JSON.stringify(databaseId)} (${JSON.stringify(directory)}) is open in another process (a running server?); inspect reads a stopped server's data`, { cause: err });
    }
    throw new InspectError('NOT_A_STORE', `${JSON.stringify(directory)} (database ${JSON.stringify(databaseId)}) holds no readable LevelDB store: ${messageOf(err)}`, { cause: err });
  }
}

/** Bytes and number of the regular files directly in `dir` (a LevelDB directory holds no subdirectories). */
async function directorySize(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    try {
      bytes += (await stat(join(dir, entry.name))).size;
      files++;
    } catch (err) {
      // A file LevelDB removed between the listing and the stat holds nothing any more.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return { bytes, files };
}

/**
 * Up to `limit` ids of the databases in `dataDir` (directories that
 * database-id.ts could have made and that hold a LevelDB store), and whether
 * there are more. Stops walking once it has found one more than `limit`.
 */
export async function databasesOnDisk(dataDir: string, limit: number): Promise<{ ids: string[]; more: boolean }> {
  const ids: string[] = [];
  let more = false;
  const walk = async (relative: string[]): Promise<void> => {
    const entries = await readdir(join(dataDir, ...relative), { withFileTypes: true }).catch(() => []);
    for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (more) return;
      if (!entry.isDirectory()) continue;
      const path = [...relative, entry.name];
      // A long id continues in a subdirectory of a component ending with "+" (database-id.ts).
      if (entry.name.endsWith('+')) {
        await walk(path);
        continue;
      }
      const id = databaseIdFromDirectory(path.join('/'));
      if (id === undefined || !(await pathExists(join(dataDir, ...path, 'CURRENT')))) continue;
      if (ids.length === limit) more = true;
      else ids.push(id);
    }
  };
  await walk([]);
  return { ids, more };
}
