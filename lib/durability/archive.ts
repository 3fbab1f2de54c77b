import type { Readable } from 'node:stream';

/** One object in an archive. */
export interface ArchiveObject {
  key: string;
  size: number;
}

/**
 * An object store that holds databases' archives (S3 or compatible, or a
 * directory). Keys are '/'-separated, relative to the archive's own prefix.
 * A transient failure (unreachable, timeouts, 5xx) rejects with SyncError
 * STORAGE_UNAVAILABLE.
 */
export interface Archive {
  /** Stores `body` at `key`, replacing any object there; resolves once durable. */
  put(key: string, body: Buffer | Readable, options?: { contentType?: string }): Promise<void>;
  /** The object as a stream, or undefined when absent. */
  get(key: string): Promise<Readable | undefined>;
  /** Objects whose key starts with `prefix`, in ascending key order. */
  list(prefix: string): AsyncIterable<ArchiveObject>;
  /** Deletes the objects; absent ones are ignored. */
  delete(keys: readonly string[]): Promise<void>;
  close(): Promise<void>;
}
