/**
 * The archive operations of the CLI's `restore` and `export` commands, run
 * on a data directory no server is using (README "Storage and S3"). They
 * take the data directory's lock the way a starting server does, so neither
 * can run beside a server on the same directory: a restore would write a
 * store the server may open at the same moment, and an export could read a
 * database the server is changing.
 */
import { access, mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import type { Config, S3Options } from '../config/options.js';
import { claimDataDir, type DataDirLock } from '../config/data-dir.js';
import { messageOf } from '../errors.js';
import { logs } from '../log.js';
import { openLevelReplica } from '../replica/open-level.js';
import type { Replica, ReplicaOptions } from '../replica/replica.js';
import type { LevelReplicaOptions } from '../replica/open-level.js';
import type { SnapshotChunk } from '../protocol/messages.js';
import { databaseDirectory, validateDatabaseId } from '../storage/database-id.js';
import type { Archive } from './archive.js';
import { lazyArchive } from './lazy-archive.js';
import { restoreDatabase, type RestoreProgress, type RestoreResult } from './restore.js';

const log = logs.s3;

/** Why a restore or export refused to run; stable, for callers that branch on it. */
export type OfflineErrorCode =
  /** `restore` without `force` of a database that is already on disk. */
  | 'ALREADY_ON_DISK'
  /** The archive holds nothing of the database. */
  | 'NOT_ARCHIVED'
  /** `export` of a database that is not on disk, with no archive to restore it from. */
  | 'NOT_FOUND';

/** A refusal of `restoreIntoDataDir` or `exportSnapshot`; `message` is one line naming the database and where it looked. */
export class OfflineError extends Error {
  readonly code: OfflineErrorCode;

  constructor(code: OfflineErrorCode, message: string) {
    super(message);
    this.name = 'OfflineError';
    this.code = code;
  }
}

/**
 * The S3 archive of `s3`; the AWS SDK loads at the first call, so a command
 * that fails before touching S3 does not pay for it. Close it when done.
 */
export function openS3Archive(s3: Readonly<S3Options>): Archive {
  // The location S3Archive itself reports, known before the SDK loads.
  const location = `s3://${s3.bucket}/${s3.keyPrefix ?? ''}${s3.endpoint === undefined ? '' : ` at ${s3.endpoint}`}`;
  return lazyArchive(location, async () => new (await import('./s3-archive.js')).S3Archive(s3));
}

/** The replica options a router with `config` serves databases with (create-sync-router.ts does the same), so a restore merges under the same rules. */
export function replicaOptionsOf(config: Config): LevelReplicaOptions {
  return {
    writeBufferSize: config.storeWriteBufferBytes,
    allowResurrection: config.allowResurrection,
    retentionHorizonMs: config.retentionHorizonMs,
    snapshotChunkSize: config.snapshotChunkSize,
    syncWrites: config.syncWrites,
    now: config.now,
  };
}

/** Options of {@link restoreIntoDataDir}. */
export interface RestoreIntoDataDirOptions {
  archive: Archive;
  /** The server's data directory; created when missing. */
  dataDir: string;
  databaseId: string;
  /** Restore even though the database is on disk: its directory is moved aside first (see the result's `movedAside`). @default false */
  force?: boolean;
  /** Merge rules of the restored replica: those the server uses (see replicaOptionsOf). */
  replicaOptions?: ReplicaOptions;
  onProgress?(progress: RestoreProgress): void;
  /** An unreadable snapshot the restore skipped (it goes on with an older one). */
  onSkip?(key: string, reason: string): void;
  /** Wall clock in ms, for the name of a moved-aside directory. @default Date.now */
  now?: () => number;
}

/** What {@link restoreIntoDataDir} did. */
export interface RestoreIntoDataDirResult extends RestoreResult {
  /** The database's directory, now holding the restored store. */
  directory: string;
  /** With `force`, where the directory that was on disk now is (`<directory>.replaced-<UTC time>`); the server never opens it. */
  movedAside?: string;
}

/**
 * Restores `databaseId` from `archive` into its directory under `dataDir`
 * (the newest readable snapshot, then every later batch: restore.ts), with
 * the data directory locked for the whole operation.
 *
 * Throws SyncError INVALID_DATABASE_ID for an invalid id (before anything is
 * touched); ConfigError (`setting` "dataDir") when the data directory cannot
 * be used or a server holds it; OfflineError ALREADY_ON_DISK when the
 * database is on disk and `force` is not set; OfflineError NOT_ARCHIVED when
 * the archive holds nothing of it; and whatever `restoreDatabase` rejects
 * with (STORAGE_UNAVAILABLE when the archive cannot be reached, an Error for
 * a gap in the archive). With `force`, a failed restore puts the moved-aside
 * directory back, so the database is left as it was.
 */
export async function restoreIntoDataDir(options: RestoreIntoDataDirOptions): Promise<RestoreIntoDataDirResult> {
  const databaseId = validateDatabaseId(options.databaseId);
  const directory = databaseDirectory(options.dataDir, databaseId);
  const lock = await claimDataDir(options.dataDir);
  try {
    let movedAside: string | undefined;
    if (await exists(directory)) {
      if (!options.force) {
        throw new OfflineError('ALREADY_ON_DISK', `database ${JSON.stringify(databaseId)} is already on disk at ${JSON.stringify(directory)}; use --force to move it aside and restore over it`);
      }
      // Not a valid database directory name ("." and ":" are encoded in them), so the server never opens it.
      movedAside = `${directory}.replaced-${new Date((options.now ?? Date.now)()).toISOString().replace(/[-:]|\.\d+/g, '')}`;
      await rename(directory, movedAside);
      log('restore of %s: moved %s aside to %s', databaseId, directory, movedAside);
    }
    let result: RestoreResult;
    try {
      result = await restoreDatabase(options.archive, databaseId, directory, {
        ...(options.replicaOptions ? { replicaOptions: options.replicaOptions } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.onSkip ? { onSkip: options.onSkip } : {}),
      });
      if (!result.restored) {
        throw new OfflineError('NOT_ARCHIVED', `the archive ${options.archive.location} holds nothing of database ${JSON.stringify(databaseId)}`);
      }
    } catch (err) {
      if (movedAside !== undefined) {
        await rename(movedAside, directory);
        log('restore of %s failed (%s): moved %s back', databaseId, messageOf(err), directory);
      }
      throw err;
    }
    return { ...result, directory, ...(movedAside !== undefined ? { movedAside } : {}) };
  } finally {
    await lock.release();
  }
}

/** Progress of an export: restoring from the archive first (when not on disk), then writing chunks. */
export type ExportProgress =
  | { phase: 'restore'; restore: RestoreProgress }
  | {
    phase: 'export';
    /** Column versions written so far. */
    entries: number;
    /** Column versions of the database, from its table counts. */
    total: number;
  };

/** Options of {@link exportSnapshot}. */
export interface ExportSnapshotOptions {
  /** Where to restore the database from when it is not on disk; without it, such a database is NOT_FOUND. */
  archive?: Archive;
  dataDir: string;
  databaseId: string;
  /** Receives the NDJSON, one chunk per line; it is not ended. */
  out: Writable;
  replicaOptions?: ReplicaOptions;
  /** Parent of the temporary store a database restored from the archive is built in (removed afterwards). @default os.tmpdir() */
  tmpDir?: string;
  onProgress?(progress: ExportProgress): void;
  onSkip?(key: string, reason: string): void;
}

/** What {@link exportSnapshot} wrote. */
export interface ExportSnapshotResult {
  /** `local`: the store in the data directory; `archive`: restored from the archive into a temporary store. */
  source: 'local' | 'archive';
  /** The restore, for `archive`. */
  restore?: RestoreResult;
  snapshotId: string;
  /** The header's stamp: the last change the snapshot holds (docs/protocol.md §6). */
  hlc: string;
  tables: number;
  /** Column versions (the footer's totalEntries). */
  entries: number;
  tombstones: number;
  chunks: number;
  /** Bytes written, newlines included. */
  bytes: number;
}

/**
 * Writes the snapshot of `databaseId` to `out` as NDJSON, one chunk per
 * line: the chunk format and order of `GET <path>/:databaseId/snapshot`
 * (docs/protocol.md §6), from one consistent view. Read from the database's
 * store in `dataDir` when it is there (with the data directory locked, so no
 * server can change it meanwhile), else restored from `archive` into a
 * temporary store first. Waits for `out` to drain (bounded memory).
 *
 * Throws SyncError INVALID_DATABASE_ID for an invalid id; ConfigError
 * (`setting` "dataDir") when a server holds the data directory; OfflineError
 * NOT_FOUND when the database is not on disk and there is no archive,
 * NOT_ARCHIVED when the archive holds nothing of it either; what
 * `restoreDatabase` rejects with; and the error of `out` if it fails.
 */
export async function exportSnapshot(options: ExportSnapshotOptions): Promise<ExportSnapshotResult> {
  const databaseId = validateDatabaseId(options.databaseId);
  // A data directory that does not exist holds no database, and no server runs on it: nothing to lock.
  let lock: DataDirLock | undefined = (await exists(options.dataDir)) ? await claimDataDir(options.dataDir) : undefined;
  let temporary: string | undefined;
  try {
    const local = databaseDirectory(options.dataDir, databaseId);
    let directory = local;
    let restore: RestoreResult | undefined;
    if (!(await exists(local))) {
      // Nothing of the data directory is needed any more: a server may start while the archive is read.
      await lock?.release();
      lock = undefined;
      if (!options.archive) {
        throw new OfflineError('NOT_FOUND', `database ${JSON.stringify(databaseId)} is not in ${JSON.stringify(options.dataDir)} and no archive is configured to restore it from`);
      }
      temporary = await mkdtemp(join(options.tmpDir ?? tmpdir(), 'sync-coordinator-export-'));
      directory = join(temporary, 'db');
      restore = await restoreDatabase(options.archive, databaseId, directory, {
        ...(options.replicaOptions ? { replicaOptions: options.replicaOptions } : {}),
        onProgress: (progress) => options.onProgress?.({ phase: 'restore', restore: progress }),
        ...(options.onSkip ? { onSkip: options.onSkip } : {}),
      });
      if (!restore.restored) {
        throw new OfflineError('NOT_ARCHIVED', `database ${JSON.stringify(databaseId)} is not in ${JSON.stringify(options.dataDir)}, and the archive ${options.archive.location} holds nothing of it`);
      }
    }
    const replica = await openLevelReplica(directory, options.replicaOptions);
    try {
      return { source: restore ? 'archive' : 'local', ...(restore ? { restore } : {}), ...(await writeSnapshot(replica, options)) };
    } finally {
      await replica.close();
    }
  } finally {
    await lock?.release();
    if (temporary !== undefined) await rm(temporary, { recursive: true, force: true });
  }
}

async function writeSnapshot(replica: Replica, options: ExportSnapshotOptions): Promise<Omit<ExportSnapshotResult, 'source' | 'restore'>> {
  const { out } = options;
  const total = replica.tableStats().reduce((sum, table) => sum + table.count, 0);
  const written = { snapshotId: '', hlc: '', tables: 0, entries: 0, tombstones: 0, chunks: 0, bytes: 0 };
  options.onProgress?.({ phase: 'export', entries: 0, total });
  for await (const text of replica.snapshot()) {
    const chunk = JSON.parse(text) as SnapshotChunk;
    if (chunk.type === 'header') Object.assign(written, { snapshotId: chunk.snapshotId, hlc: chunk.hlc });
    else if (chunk.type === 'table-start') written.tables++;
    else if (chunk.type === 'tombstone') written.tombstones += chunk.entries.length;
    else if (chunk.type === 'column-versions') written.entries += chunk.entries.length;
    // A reader that went away (a closed pipe) destroys the stream without a 'drain' ever coming.
    if (out.destroyed) throw out.errored ?? new Error('the output was closed before the snapshot was written');
    const line = `${text}\n`;
    written.chunks++;
    written.bytes += Buffer.byteLength(line);
    if (!out.write(line)) await drained(out);
    if (chunk.type === 'column-versions') options.onProgress?.({ phase: 'export', entries: written.entries, total });
  }
  return written;
}

/** Resolves once `out` drains; rejects when it fails or closes first (a reader that went away). */
function drained(out: Writable): Promise<void> {
  if (out.destroyed || out.writableEnded) return Promise.reject(out.errored ?? new Error('the output was closed before the snapshot was written'));
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      out.off('drain', onDrain);
      out.off('error', onError);
      out.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done();
    const onError = (err: Error): void => done(err);
    const onClose = (): void => done(new Error('the output was closed before the snapshot was written'));
    out.on('drain', onDrain);
    out.on('error', onError);
    out.on('close', onClose);
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
