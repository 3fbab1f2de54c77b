import { randomUUID } from 'node:crypto';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SyncError, ErrorCode, isSyncError, messageOf } from '../errors.js';
import { compareHlc, hlcFromWire, hlcSiteId } from '../protocol/hlc.js';
import type { ChangeSet } from '../protocol/messages.js';
import { siteIdFromWire } from '../protocol/site-id.js';
import { validateChangeSets } from '../protocol/validate.js';
import { KEY_FORMAT, META_FORMAT, META_SITE_ID } from '../replica/keys.js';
import { Replica, type ReplicaOptions } from '../replica/replica.js';
import type { KvOp } from '../storage/kv.js';
import { openLevelStore } from '../storage/leveldb.js';
import type { Archive } from './archive.js';
import { databaseKey, manifestKey, parseBatchKey, parseManifest, parseSnapshotKey, stampHex, type Manifest } from './layout.js';
import { SnapshotCorruptError, decodeSnapshot, type SnapshotInfo } from './snapshot-format.js';

/** Entries (or bytes) written to the store per batch while loading a snapshot. */
const LOAD_BATCH_ENTRIES = 1000;
const LOAD_BATCH_BYTES = 4 * 1024 * 1024;

/** What a restore did. */
export interface RestoreResult {
  /** False when the archive holds nothing of this database (it is new). */
  restored: boolean;
  /** The snapshot it started from, if any. */
  snapshot?: string;
  /** Snapshots that could not be read, newest first, with why. */
  skipped: { key: string; reason: string }[];
  /** Batches replayed after the snapshot, and their transactions. */
  batches: number;
  transactions: number;
  /** Column versions, tombstones and other entries loaded from the snapshot. */
  entries: number;
  /** The last stamp restored. */
  stamp?: Buffer;
}

/** Progress of a restore, for a CLI progress bar. */
export interface RestoreProgress {
  phase: 'snapshot' | 'batches';
  /** Entries loaded, or batches replayed, so far. */
  done: number;
  /** Batches to replay (known once the snapshot is loaded). */
  total?: number;
}

export interface RestoreOptions {
  /** Options of the restored replica; merge rules must be those the database is served with. */
  replicaOptions?: ReplicaOptions;
  /** A snapshot that cannot be read (corrupt, unknown format) is reported here and skipped. */
  onSkip?(key: string, reason: string): void;
  onProgress?(progress: RestoreProgress): void;
}

/**
 * Restores database `databaseId` from `archive` into the LevelDB directory
 * `dir`, which must not exist: the newest snapshot that reads whole
 * (skipping corrupt or unknown ones, each reported to `onSkip`), then every
 * later batch, replayed under its original stamps, so the restored replica
 * keeps its server site id and every cursor or checkpoint handed out before
 * stays valid. The store is built beside `dir` and renamed into place only
 * when complete, so a failed restore leaves nothing behind.
 *
 * Resolves `{ restored: false }` when the archive holds nothing of the
 * database. Rejects with STORAGE_UNAVAILABLE when the archive cannot be
 * reached, and with an Error when the archive has a gap (a missing batch):
 * restoring around it would silently lose acknowledged changes.
 */
export async function restoreDatabase(archive: Archive, databaseId: string, dir: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const result: RestoreResult = { restored: false, skipped: [], batches: 0, transactions: 0, entries: 0 };
  const manifest = await readManifest(archive, databaseId);
  const snapshots = new Map<string, Buffer>();
  for (const s of manifest?.snapshots ?? []) snapshots.set(s.key, Buffer.from(s.stamp, 'hex'));
  const batches: { key: string; after: Buffer; last: Buffer }[] = [];
  for await (const object of archive.list(databaseKey(databaseId))) {
    const snapshot = parseSnapshotKey(databaseId, object.key);
    if (snapshot) snapshots.set(object.key, snapshot.stamp);
    const batch = parseBatchKey(databaseId, object.key);
    if (batch) batches.push({ key: object.key, ...batch });
  }
  if (!manifest && snapshots.size === 0 && batches.length === 0) return result;
  batches.sort((a, b) => compareHlc(a.after, b.after) || compareHlc(a.last, b.last));
  const newestFirst = [...snapshots].sort((a, b) => compareHlc(b[1], a[1])).map(([key]) => key);

  const building = `${dir}.restoring-${randomUUID()}`;
  await mkdir(dirname(dir), { recursive: true });
  try {
    let replica: Replica | undefined;
    for (const key of newestFirst) {
      try {
        replica = await loadSnapshot(archive, key, databaseId, building, options, result);
        result.snapshot = key;
        break;
      } catch (err) {
        if (isSyncError(err) && err.code === ErrorCode.StorageUnavailable) throw err;
        const reason = messageOf(err);
        result.skipped.push({ key, reason });
        options.onSkip?.(key, reason);
        await rm(building, { recursive: true, force: true });
      }
    }
    // No readable snapshot: start empty, under the database's own site id.
    replica ??= await emptyReplica(building, siteOf(manifest?.siteId, batches[0]?.last, databaseId), options.replicaOptions);
    try {
      let position = replica.committedStamp;
      const pending = batches.filter((b) => !position || compareHlc(b.last, position) > 0);
      let done = 0;
      options.onProgress?.({ phase: 'batches', done, total: pending.length });
      for (;;) {
        // The chain continues with the batch that follows the position and
        // reaches furthest. Two batches can follow the same stamp: a
        // re-upload after a crash (the longer holds the shorter) or, in ack
        // mode, an upload whose commit was refused after all (its answer was
        // lost): the commit after it follows the same stamp and reaches
        // further, so the orphan is never replayed.
        let next: (typeof batches)[number] | undefined;
        for (const b of pending) {
          const follows = position ? compareHlc(b.after, position) <= 0 : b.after.equals(Buffer.alloc(b.after.length));
          if (follows && (!position || compareHlc(b.last, position) > 0) && (!next || compareHlc(b.last, next.last) > 0)) next = b;
        }
        if (!next) {
          const beyond = pending.find((b) => !position || compareHlc(b.last, position) > 0);
          if (beyond) {
            throw new Error(`the archive of ${databaseId} has a gap: no batch follows stamp ${stampHex(position)} (the next starts after ${stampHex(beyond.after)}); restoring past it would lose acknowledged changes`);
          }
          break;
        }
        const sets = (await readBatch(archive, next.key)).filter((set) => !position || compareHlc(hlcFromWire(set.hlc), position) > 0);
        if (sets.length > 0) {
          // Stamps are the coordinator's own clock: any drift is fine here.
          const valid = validateChangeSets(sets, { now: Date.now(), maxDriftMs: Number.MAX_SAFE_INTEGER }, next.key);
          await replica.replay(valid, valid.map((set) => set.hlc));
          result.transactions += sets.length;
        }
        result.batches++;
        position = next.last;
        options.onProgress?.({ phase: 'batches', done: ++done, total: pending.length });
      }
      if (position) await replica.markArchived(position);
      result.stamp = position;
    } finally {
      await replica.close();
    }
    await rename(building, dir);
    result.restored = true;
    return result;
  } catch (err) {
    await rm(building, { recursive: true, force: true });
    throw err;
  }
}

/** The manifest, or undefined when absent or unreadable (listing still finds the snapshots). */
async function readManifest(archive: Archive, databaseId: string): Promise<Manifest | undefined> {
  const stream = await archive.get(manifestKey(databaseId));
  if (!stream) return undefined;
  try {
    return parseManifest(databaseId, JSON.parse((await readAll(stream)).toString('utf8')));
  } catch (err) {
    if (isSyncError(err) && err.code === ErrorCode.StorageUnavailable) throw err;
    return undefined;
  }
}

/** Loads snapshot `key` into a new store at `dir` and opens it; throws (leaving `dir` to the caller) when it does not read whole. */
async function loadSnapshot(archive: Archive, key: string, databaseId: string, dir: string, options: RestoreOptions, result: RestoreResult): Promise<Replica> {
  const stream = await archive.get(key);
  if (!stream) throw new SnapshotCorruptError('listed but gone');
  const store = await openLevelStore(dir);
  let info: SnapshotInfo | undefined;
  let loaded = 0;
  options.onProgress?.({ phase: 'snapshot', done: 0 });
  try {
    let ops: KvOp[] = [];
    let bytes = 0;
    for await (const [k, v] of decodeSnapshot(stream, (i) => { info = i; })) {
      ops.push({ type: 'put', key: k, value: v });
      bytes += k.length + v.length;
      if (ops.length >= LOAD_BATCH_ENTRIES || bytes >= LOAD_BATCH_BYTES) {
        await store.write(ops);
        loaded += ops.length;
        ops = [];
        bytes = 0;
        options.onProgress?.({ phase: 'snapshot', done: loaded });
      }
    }
    await store.write(ops);
    loaded += ops.length;
    options.onProgress?.({ phase: 'snapshot', done: loaded });
    if (info?.databaseId !== databaseId) throw new SnapshotCorruptError(`snapshot of ${JSON.stringify(info?.databaseId)}, not ${JSON.stringify(databaseId)}`);
  } catch (err) {
    await store.close();
    throw err;
  }
  const replica = await Replica.open(store, options.replicaOptions);
  if (replica.siteIdWire !== info.siteId) {
    await replica.close();
    throw new SnapshotCorruptError(`snapshot header names site ${info.siteId}, its store holds ${replica.siteIdWire}`);
  }
  result.entries = loaded;
  return replica;
}

/** A store with nothing but its format and site id, opened as a replica. */
async function emptyReplica(dir: string, siteId: Buffer, replicaOptions?: ReplicaOptions): Promise<Replica> {
  const store = await openLevelStore(dir);
  const version = Buffer.allocUnsafe(4);
  version.writeUInt32BE(KEY_FORMAT, 0);
  await store.write([{ type: 'put', key: META_FORMAT, value: version }, { type: 'put', key: META_SITE_ID, value: siteId }]);
  return Replica.open(store, replicaOptions);
}

/** The database's server site id: from the manifest, else from a stamp (stamps carry it). */
function siteOf(manifestSite: string | undefined, stamp: Buffer | undefined, databaseId: string): Buffer {
  if (manifestSite !== undefined) return siteIdFromWire(manifestSite, 'manifest.siteId');
  if (stamp) return Buffer.from(hlcSiteId(stamp));
  throw new Error(`the archive of ${databaseId} has neither a manifest, a snapshot nor a batch to take its site id from`);
}

/** The change sets of a batch object (each `hlc` is its stamp). */
async function readBatch(archive: Archive, key: string): Promise<ChangeSet[]> {
  const stream = await archive.get(key);
  if (!stream) throw new Error(`batch ${key} was listed but is gone`);
  const gunzip = createGunzip();
  const [text] = await Promise.all([readAll(gunzip), pipeline(stream, gunzip)]);
  const sets = JSON.parse(text.toString('utf8')) as unknown;
  if (!Array.isArray(sets)) throw new SyncError(ErrorCode.InvalidChangeSet, `${key}: not an array of change sets`);
  return sets as ChangeSet[];
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
