import { sep } from 'node:path';
import { databaseDirectory, databaseIdFromDirectory } from '../storage/database-id.js';
import { HLC_BYTES } from '../protocol/hlc.js';

/**
 * Where a database's archive lives, relative to the archive's own prefix:
 *
 *   databases/<dir>/manifest.json                    which snapshots make the state
 *   databases/<dir>/snapshots/<stamp>-<id>.kv.gz     a whole store at <stamp>
 *   databases/<dir>/batches/<after>-<last>.json.gz   the transactions stamped in (after, last]
 *
 * `<dir>` is the database's directory name on disk (an injective,
 * prefix-free encoding of its id, see storage/database-id.ts), so two ids
 * never share objects. Stamps are 60 lowercase hex digits, so keys sort in
 * stamp order; a batch names the stamp it follows, so a missing batch shows
 * as a gap in the chain.
 */
export const LAYOUT_FORMAT = 1;

const HEX_STAMP = new RegExp(`^[0-9a-f]{${HLC_BYTES * 2}}$`);
/** The `after` of the first batch of a database: nothing before it. */
const ZERO_STAMP = Buffer.alloc(HLC_BYTES);

/** The key prefix (ending in "/") of everything archived for `databaseId`. */
export function databaseKey(databaseId: string): string {
  return `databases/${databaseDirectory('', databaseId).split(sep).join('/')}/`;
}

/** The database id of a key under `databases/`, or undefined. */
export function databaseIdOfKey(key: string): string | undefined {
  const rest = key.startsWith('databases/') ? key.slice('databases/'.length) : undefined;
  if (rest === undefined) return undefined;
  const parts = rest.split('/');
  for (let n = parts.length - 1; n > 0; n--) {
    const id = databaseIdFromDirectory(parts.slice(0, n).join('/'));
    if (id !== undefined) return id;
  }
  return undefined;
}

export function manifestKey(databaseId: string): string {
  return `${databaseKey(databaseId)}manifest.json`;
}

export function stampHex(stamp: Buffer | undefined): string {
  return (stamp ?? ZERO_STAMP).toString('hex');
}

function stampOf(hex: string): Buffer | undefined {
  return HEX_STAMP.test(hex) ? Buffer.from(hex, 'hex') : undefined;
}

/** Key of the batch holding the transactions stamped after `after` (undefined: the first) up to `last`. */
export function batchKey(databaseId: string, after: Buffer | undefined, last: Buffer): string {
  return `${databaseKey(databaseId)}batches/${stampHex(after)}-${stampHex(last)}.json.gz`;
}

/** What a batch key says: the stamp it follows (all zeros for the first) and its last stamp; undefined for a foreign key. */
export function parseBatchKey(databaseId: string, key: string): { after: Buffer; last: Buffer } | undefined {
  const prefix = `${databaseKey(databaseId)}batches/`;
  const m = key.startsWith(prefix) ? /^([0-9a-f]+)-([0-9a-f]+)\.json\.gz$/.exec(key.slice(prefix.length)) : null;
  const after = m ? stampOf(m[1]!) : undefined;
  const last = m ? stampOf(m[2]!) : undefined;
  return after && last ? { after, last } : undefined;
}

/** Key of a snapshot of the store as of `stamp`. */
export function snapshotKey(databaseId: string, stamp: Buffer | undefined, id: string): string {
  return `${databaseKey(databaseId)}snapshots/${stampHex(stamp)}-${id}.kv.gz`;
}

/** The stamp a snapshot key names; undefined for a foreign key. */
export function parseSnapshotKey(databaseId: string, key: string): { stamp: Buffer } | undefined {
  const prefix = `${databaseKey(databaseId)}snapshots/`;
  const m = key.startsWith(prefix) ? /^([0-9a-f]+)-[0-9a-f-]+\.kv\.gz$/.exec(key.slice(prefix.length)) : null;
  const stamp = m ? stampOf(m[1]!) : undefined;
  return stamp ? { stamp } : undefined;
}

/** The manifest object of a database (JSON). */
export interface Manifest {
  format: typeof LAYOUT_FORMAT;
  databaseId: string;
  /** The database's server site id (base64url), kept across restores. */
  siteId: string;
  /** Snapshots to restore from, newest first: key and stamp (hex). */
  snapshots: { key: string; stamp: string }[];
  /** When it was written (ms since the epoch). */
  updatedAt: number;
}

/** A manifest read back, or undefined when `value` is not one of this database. */
export function parseManifest(databaseId: string, value: unknown): Manifest | undefined {
  const m = value as Partial<Manifest> | null;
  if (!m || typeof m !== 'object' || m.format !== LAYOUT_FORMAT || m.databaseId !== databaseId || typeof m.siteId !== 'string') return undefined;
  if (!Array.isArray(m.snapshots) || !m.snapshots.every((s) => s && typeof s.key === 'string' && typeof s.stamp === 'string' && HEX_STAMP.test(s.stamp))) return undefined;
  return m as Manifest;
}
