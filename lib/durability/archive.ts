/**
 * The object store that durability is built on: databases are archived as
 * objects (batches of accepted transactions, snapshots, a manifest) under
 * '/'-separated keys. Implementations: S3 (durability/s3-archive.ts, the only
 * importer of the AWS SDK) and a local directory (durability/fs-archive.ts).
 * Every implementation passes spec/durability/archive-suite.ts.
 *
 * Error contract, the same for every implementation:
 * - A failure a later retry may cure (endpoint unreachable, connection reset,
 *   timeout, HTTP 5xx, throttling; a vanished or full volume) rejects with
 *   SyncError STORAGE_UNAVAILABLE. The operation may or may not have taken
 *   effect, except that a put never leaves a partial object (see `put`).
 * - Any other failure of the store (access denied, no such bucket, a read-only
 *   volume) rejects with SyncError INTERNAL_ERROR whose message names the
 *   bucket or directory and the key; the SDK or system error is its `cause`.
 * - Misuse (an invalid key, a body of the wrong type) throws or rejects with a
 *   TypeError naming the argument; nothing is sent.
 * - After `close()`, every call rejects with SyncError STORE_CLOSED.
 */
import type { Readable } from 'node:stream';
import { describeValue } from '../errors.js';

/** One stored object, as listed. */
export interface ArchiveObject {
  /** The object's key, without the implementation's own prefix. */
  key: string;
  /** Size in bytes. */
  size: number;
}

/** Options of {@link Archive.put}. */
export interface ArchivePutOptions {
  /** Media type stored with the object where the store keeps one (S3's Content-Type); ignored by a directory. @default application/octet-stream */
  contentType?: string;
}

export interface Archive {
  /**
   * Human-readable location for logs and /status, e.g. `s3://bucket/prefix/`
   * or `file:///var/archive`. Never contains credentials.
   */
  readonly location: string;
  /**
   * Stores `body` at `key`, replacing any object there, and resolves once the
   * object is durable. The replacement is atomic: readers see the previous
   * object or the whole new one, and a put that rejects leaves the previous
   * object (or nothing) in place. A Readable of unknown length is streamed in
   * bounded memory (S3: multipart, at most a few parts in memory).
   *
   * The put consumes a Readable body; when the put fails the body is
   * destroyed, and when the body fails (emits 'error') the put rejects with
   * that same error and stores nothing. Destroying the body is therefore the
   * way to cancel a streamed put.
   *
   * @throws TypeError for an invalid key (see {@link checkArchiveKey}) or body.
   */
  put(key: string, body: Buffer | Readable, options?: ArchivePutOptions): Promise<void>;
  /**
   * The object as a stream, or undefined when there is none. A transient
   * failure while the stream is read destroys it with SyncError
   * STORAGE_UNAVAILABLE; like any stream it then emits 'error', so read it
   * (or listen for 'error') at once. Consume or destroy the stream promptly:
   * an S3 stream holds a connection, and one left unread longer than the
   * idle timeout fails. `close()` destroys streams still open (a reader gets
   * STORE_CLOSED).
   */
  get(key: string): Promise<Readable | undefined>;
  /**
   * Objects whose key starts with `prefix` (any string; '' for all), in
   * ascending byte order of the keys' UTF-8 encoding (S3's order), fetched
   * page by page as the iteration proceeds. Objects written or deleted during
   * the iteration may or may not be listed. Keys that are not valid archive
   * keys (written to the store by something else) are skipped.
   */
  list(prefix: string): AsyncIterable<ArchiveObject>;
  /** Deletes the objects at `keys`; absent ones are ignored. Not atomic across keys. */
  delete(keys: readonly string[]): Promise<void>;
  /**
   * Waits for the calls in progress to settle, destroys streams returned by
   * `get` that are still open, and releases connections and handles. Later
   * calls reject with SyncError STORE_CLOSED. Safe to call twice.
   */
  close(): Promise<void>;
}

/** Longest key in UTF-8 bytes: S3's limit (an implementation's own prefix counts against it there). */
export const MAX_ARCHIVE_KEY_BYTES = 1024;

// C0 and C1 controls and DEL: S3 lists keys in XML 1.0, which cannot carry most of them.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * Why `key` is not a valid archive key, or undefined when it is. A valid key
 * is 1-1024 bytes of UTF-8 (well-formed: no lone surrogates), without control
 * characters, made of '/'-separated segments that are non-empty and neither
 * `.` nor `..`: so no leading, trailing or doubled '/'. These keep a key the
 * same object on S3 and in a directory tree.
 */
export function archiveKeyProblem(key: unknown): string | undefined {
  if (typeof key !== 'string') return `expected a string, got ${describeValue(key)}`;
  if (key.length === 0) return 'expected a non-empty key';
  if (LONE_SURROGATE.test(key)) return `${describeValue(key)} contains a lone surrogate (not encodable as UTF-8)`;
  if (CONTROL.test(key)) return `${describeValue(key)} contains a control character`;
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_ARCHIVE_KEY_BYTES) return `${describeValue(key)} is ${bytes} bytes of UTF-8, more than ${MAX_ARCHIVE_KEY_BYTES}`;
  for (const segment of key.split('/')) {
    if (segment === '') return `${describeValue(key)} has an empty segment (a leading, trailing or doubled "/")`;
    if (segment === '.' || segment === '..') return `${describeValue(key)} has a "${segment}" segment`;
  }
  return undefined;
}

/** Returns `key` when it is a valid archive key (see {@link archiveKeyProblem}); throws a TypeError naming `field` otherwise. */
export function checkArchiveKey(key: unknown, field = 'key'): string {
  const problem = archiveKeyProblem(key);
  if (problem !== undefined) throw new TypeError(`archive ${field}: ${problem}`);
  return key as string;
}

/** Compares two keys in the order `list` yields them: bytewise on UTF-8 (not JavaScript's UTF-16 order). */
export function compareArchiveKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Options of {@link readArchiveObject}. */
export interface ReadArchiveObjectOptions {
  /** Largest object accepted, in bytes; a larger one rejects with a RangeError and is not read further. @default 16 MiB */
  maxBytes?: number;
}

/**
 * The whole object at `key` as one Buffer, or undefined when there is none:
 * for small objects such as a manifest. Rejects like `get`, and with a
 * RangeError naming the key when the object is larger than `maxBytes`.
 */
export async function readArchiveObject(archive: Archive, key: string, options: ReadArchiveObjectOptions = {}): Promise<Buffer | undefined> {
  const maxBytes = options.maxBytes ?? 16 * 1024 * 1024;
  const stream = await archive.get(key);
  if (stream === undefined) return undefined;
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer | string>) {
      const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      total += buffer.length;
      if (total > maxBytes) throw new RangeError(`archive object ${JSON.stringify(key)} is larger than ${maxBytes} bytes`);
      chunks.push(buffer);
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks, total);
}
