/**
 * The small key-value interface the replica is written against. Keys and
 * values are bytes; keys sort bytewise. Implementations: LevelDB
 * (storage/leveldb.ts). Every implementation passes spec/storage/kv-suite.ts.
 */

export interface KvPut { type: 'put'; key: Buffer; value: Buffer }
export interface KvDel { type: 'del'; key: Buffer }
export type KvOp = KvPut | KvDel;

export interface KvRange {
  gt?: Buffer;
  gte?: Buffer;
  lt?: Buffer;
  lte?: Buffer;
  reverse?: boolean;
  /** Maximum number of entries; absent or -1 means no limit. */
  limit?: number;
  /** Bytes to read ahead per native call, for long scans. @default 16 KiB */
  readAhead?: number;
  /** Read values too; when false, entries carry empty values. @default true */
  values?: boolean;
}

/**
 * A cursor over a range. It reads from one consistent view of the store taken
 * when the iterator was created: later writes are invisible to it, including
 * after `seek`.
 */
export interface KvIterator {
  /** The next entry, or undefined at the end of the range. */
  next(): Promise<[Buffer, Buffer] | undefined>;
  /** Up to `max` next entries (at least one unless the range is done; [] at the end). */
  nextBatch(max: number): Promise<[Buffer, Buffer][]>;
  /** Moves to the first key at or after `target` (at or before, in reverse). */
  seek(target: Buffer): void;
  /** Releases the view. Safe to call twice. */
  close(): Promise<void>;
}

export interface KvWriteOptions {
  /** fsync before resolving (survives power loss, not only process death). */
  sync?: boolean;
}

export interface KvStore {
  get(key: Buffer): Promise<Buffer | undefined>;
  getMany(keys: Buffer[]): Promise<(Buffer | undefined)[]>;
  /** Applies every op or none. */
  write(ops: KvOp[], options?: KvWriteOptions): Promise<void>;
  iterator(range?: KvRange): KvIterator;
  close(): Promise<void>;
  readonly isOpen: boolean;
}
