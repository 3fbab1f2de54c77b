/**
 * Database ids and where each one lives on disk.
 *
 * Ids arrive from clients, so the directory encoding has to be injective on
 * every filesystem we may run on: no two ids may share a directory, and no
 * id's directory may sit inside another's (opening one LevelDB inside another
 * would corrupt both). Hence case-folding filesystems get no uppercase letters,
 * and long ids are split into path components that each stay under the usual
 * 255-byte file name limit.
 */
import { join, sep } from 'node:path';
import { describeValue, ErrorCode, SyncError } from '../errors.js';

const ID_PATTERN = /^(?!\.)[A-Za-z0-9_:.-]{1,128}$/;
const MAX_ID_LENGTH = 128;

/** Original characters per path component: 64 chars encode to at most 192 + 1 bytes. */
const SEGMENT_LENGTH = 64;

/** Characters stored verbatim; everything else becomes `_` + two hex digits. */
const PLAIN_CHAR = /[a-z0-9-]/;
const ENCODED_SEGMENT = /^(?:[a-z0-9-]|_[0-9a-f]{2})+$/;

/** Marks a component that continues in a subdirectory, so a short id's directory is never a parent of a longer id's. */
const CONTINUES = '+';

/**
 * Returns `value` when it is a valid database id: 1-128 characters of
 * `[A-Za-z0-9_:.-]`, not starting with `.`. Otherwise throws SyncError
 * INVALID_DATABASE_ID naming `field` and the value.
 */
export function validateDatabaseId(value: unknown, field = 'databaseId'): string {
  if (typeof value === 'string' && ID_PATTERN.test(value)) return value;
  throw new SyncError(
    ErrorCode.InvalidDatabaseId,
    `${field}: expected 1-${MAX_ID_LENGTH} characters of [A-Za-z0-9_:.-] not starting with ".", got ${describeValue(value)}`,
  );
}

function encodeSegment(segment: string): string {
  let out = '';
  for (const ch of segment) {
    // Every valid id character is ASCII, so two hex digits always suffice.
    out += PLAIN_CHAR.test(ch) ? ch : `_${ch.charCodeAt(0).toString(16).padStart(2, '0')}`;
  }
  return out;
}

/**
 * The directory under `dataDir` that holds database `id`. Distinct ids always
 * get distinct directories, none nested in another's, and every path
 * component is at most 193 bytes. Throws like {@link validateDatabaseId}
 * for an invalid id.
 */
export function databaseDirectory(dataDir: string, id: string): string {
  validateDatabaseId(id, 'databaseId');
  const parts: string[] = [];
  for (let i = 0; i < id.length; i += SEGMENT_LENGTH) {
    const encoded = encodeSegment(id.slice(i, i + SEGMENT_LENGTH));
    parts.push(i + SEGMENT_LENGTH < id.length ? encoded + CONTINUES : encoded);
  }
  return join(dataDir, ...parts);
}

/**
 * The database id whose directory is `relPath` (relative to the data
 * directory, components separated by `/` or the platform separator), or
 * undefined when `relPath` is not exactly what {@link databaseDirectory}
 * produces for some id.
 */
export function databaseIdFromDirectory(relPath: string): string | undefined {
  if (typeof relPath !== 'string') return undefined;
  const parts = sep === '/' ? relPath.split('/') : relPath.split(/[\\/]/);
  let id = '';
  for (let i = 0; i < parts.length; i++) {
    let part = parts[i]!;
    const last = i === parts.length - 1;
    if (!last) {
      if (!part.endsWith(CONTINUES)) return undefined;
      part = part.slice(0, -1);
    }
    if (!ENCODED_SEGMENT.test(part)) return undefined;
    id += part.replace(/_([0-9a-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
    if (id.length > MAX_ID_LENGTH) return undefined;
  }
  // Re-encoding rejects everything non-canonical in one place: escapes of
  // plain characters, escapes of characters ids may not contain, and
  // segments split at other than 64-character boundaries.
  if (!ID_PATTERN.test(id)) return undefined;
  const canonical = databaseDirectory('', id).split(sep);
  return canonical.length === parts.length && canonical.every((p, i) => p === parts[i]) ? id : undefined;
}
