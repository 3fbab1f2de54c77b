import type { KvStore } from '../storage/kv.js';

/**
 * The view of a replica that its change log, snapshot and retention code
 * read: its own file, so those modules need not import replica.ts (which
 * imports them).
 */
export interface ReplicaContext {
  readonly store: KvStore;
  readonly siteId: Buffer;
  readonly now: () => number;
  readonly retentionHorizonMs: number;
  readonly snapshotChunkSize: number;
  readonly syncWrites: boolean;
  /** The stamp of the last committed transaction (undefined: none yet); see `Replica.committedStamp`. */
  readonly committedStamp: Buffer | undefined;
}
