/**
 * KvStore over LevelDB (levelup + leveldown).
 *
 * Most of this file exists to paper over sharp edges of leveldown 6:
 * - `seek()` on an iterator the native layer has already ended dereferences a
 *   freed pointer, so every iterator is guarded by its own JS-side state and
 *   ended by us before the database closes.
 * - Native seeks outside the iterator's bounds end the iteration, and an
 *   empty `lt`/`lte` bound is silently ignored; both are corrected here so
 *   the KvIterator contract holds for every range.
 * - The native `limit` also counts read-ahead entries that a seek discards,
 *   so the limit is enforced here instead.
 */
import { mkdir, stat } from 'node:fs/promises';
import type LevelUp from 'levelup';
import { ErrorCode, SyncError } from '../errors.js';
import { logs } from '../log.js';
import { requirePackage } from '../require-package.js';
import type { KvIterator, KvOp, KvRange, KvStore, KvWriteOptions } from './kv.js';

const log = logs.storage;

// @types/leveldown declares an ES default export, but the package is CommonJS: `module.exports = LevelDOWN`.
const leveldown = requirePackage('leveldown') as (location: string) => object;
const levelup = requirePackage('levelup') as typeof LevelUp;

type Callback = (err?: Error | null) => void;
type NextCallback = (err: Error | null | undefined, key?: Buffer, value?: Buffer) => void;

/** The subset of levelup / abstract-leveldown this module relies on. */
interface NativeIterator {
  next(callback: NextCallback): unknown;
  seek(target: Buffer): void;
  end(callback: Callback): void;
}

/** leveldown's own methods, called directly on the hot path (see LevelStore). */
interface RawDown {
  _getMany(keys: Buffer[], options: object, callback: (err: Error | null | undefined, values: (Buffer | undefined)[]) => void): void;
  _chainedBatch(): RawBatch;
}

/** leveldown's native chained batch: one native call per op, no per-op property reads. */
interface RawBatch {
  _put(key: Buffer, value: Buffer): void;
  _del(key: Buffer): void;
  _write(options: object, callback: Callback): void;
}

interface NativeDb {
  getMany(keys: Buffer[], options: object, callback: (err: Error | null | undefined, values: (Buffer | undefined)[]) => void): void;
  batch(ops: KvOp[], options: object, callback: Callback): void;
  iterator(options: object): NativeIterator;
  close(callback: Callback): void;
}

// Shared by every call, so frozen: if a leveldown version ever writes to its
// options argument, that fails loudly instead of leaking into later calls.
const GET_OPTIONS = Object.freeze({ asBuffer: true, fillCache: true });
const WRITE_ASYNC = Object.freeze({ sync: false });
const WRITE_SYNC = Object.freeze({ sync: true });
const DONE: Promise<undefined> = Promise.resolve(undefined);
const EMPTY = Buffer.alloc(0);

/** leveldown's default read-ahead per native call, in bytes. */
const READ_AHEAD_BYTES = 16 * 1024;

/** Options for {@link openLevelStore}. */
export interface LevelStoreOptions {
  /**
   * Create the database (and its directory) when it does not exist. When
   * false, a missing database rejects with SyncError NOT_FOUND.
   * @default true
   */
  createIfMissing?: boolean;
  /**
   * Memtable size in bytes: what a store holds of its recent writes before
   * it flushes them to a table file. Larger means fewer flushes and
   * compactions (a 1 MiB memtable cost about half again as much CPU per
   * write as 4 MiB), smaller less memory per open store.
   * @default 1 MiB (the router passes SyncRouterOptions.storeWriteBufferBytes, 4 MiB)
   */
  writeBufferSize?: number;
  /** Block cache size in bytes (LevelDB's default is 8 MiB). @default 2 MiB */
  cacheSize?: number;
}

/**
 * Opens (creating by default) the LevelDB database in `dir` as a KvStore.
 * Rejects with SyncError NOT_FOUND when `createIfMissing` is false and there
 * is no database, and with SyncError INTERNAL_ERROR for other open failures
 * (e.g. another process holds the database's lock).
 */
export async function openLevelStore(dir: string, options: LevelStoreOptions = {}): Promise<KvStore> {
  const createIfMissing = options.createIfMissing !== false;
  if (createIfMissing) {
    await mkdir(dir, { recursive: true });
  } else if (!(await pathExists(dir))) {
    // Checked here because LevelDB creates the directory (with LOCK and LOG
    // files) even when it then refuses to create the database.
    throw notFoundError(dir);
  }
  const down = leveldown(dir) as RawDown;
  const db = await new Promise<NativeDb>((resolve, reject) => {
    levelup(down as never, { createIfMissing, errorIfExists: false, writeBufferSize: options.writeBufferSize ?? 1024 * 1024, cacheSize: options.cacheSize ?? 2 * 1024 * 1024 }, ((err: Error | null | undefined, opened: NativeDb) => {
      if (!err) {
        resolve(opened);
      } else if (/does not exist/i.test(err.message)) {
        reject(notFoundError(dir, err));
      } else {
        reject(new SyncError(ErrorCode.Internal, `cannot open LevelDB database at ${JSON.stringify(dir)}: ${err.message}`, { cause: err }));
      }
    }) as () => void);
  });
  log('opened %s', dir);
  return new LevelStore(db, down, dir);
}

/** Whether `path` exists (false only for ENOENT; other errors, like EACCES, are thrown). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

function notFoundError(dir: string, cause?: unknown): SyncError {
  return new SyncError(ErrorCode.NotFound, `no LevelDB database at ${JSON.stringify(dir)}`, { cause });
}

function badOp(i: number): TypeError {
  return new TypeError(`batch op ${i}: expected a put with Buffer key and value or a del with a Buffer key`);
}

function storeClosedError(): SyncError {
  return new SyncError(ErrorCode.StoreClosed, 'store is closed');
}

class LevelStore implements KvStore {
  readonly #db: NativeDb;
  /**
   * The leveldown instance under levelup. Reads and writes of the replica go
   * straight to its native methods: keys and values are always Buffers here,
   * so levelup's and abstract-leveldown's per-operation checks and copies
   * only cost time on the hot path.
   */
  readonly #down: RawDown;
  readonly #dir: string;
  /** Iterators the store must end before the native close (see file comment). */
  readonly #iterators = new Set<LevelIterator>();
  #closing: Promise<void> | undefined;

  constructor(db: NativeDb, down: RawDown, dir: string) {
    this.#db = db;
    this.#down = down;
    this.#dir = dir;
  }

  get isOpen(): boolean {
    return this.#closing === undefined;
  }

  get(key: Buffer): Promise<Buffer | undefined> {
    if (this.#closing) return Promise.reject(storeClosedError());
    // getMany reports a missing key as undefined; get() would build and throw
    // a NotFound error per miss, which is costly for a common outcome.
    return new Promise((resolve, reject) => {
      this.#down._getMany([key], GET_OPTIONS, (err, values) => {
        if (err) reject(err);
        else resolve(values[0]);
      });
    });
  }

  getMany(keys: Buffer[]): Promise<(Buffer | undefined)[]> {
    if (this.#closing) return Promise.reject(storeClosedError());
    return new Promise((resolve, reject) => {
      this.#down._getMany(keys, GET_OPTIONS, (err, values) => {
        if (err) reject(err);
        else resolve(values);
      });
    });
  }

  write(ops: KvOp[], options?: KvWriteOptions): Promise<void> {
    if (this.#closing) return Promise.reject(storeClosedError());
    if (ops.length === 0) return Promise.resolve();
    // The chained batch hands each op to the native side in one call; the
    // array form reads type, key and value as properties of every op, which
    // costs twice the main-thread time for the same batch. The native calls
    // skip abstract-leveldown's checks, so a malformed op is refused here and
    // the batch, never written, writes nothing.
    const batch = this.#down._chainedBatch();
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      if (!Buffer.isBuffer(op.key) || op.key.length === 0) return Promise.reject(badOp(i));
      if (op.type === 'put') {
        if (!Buffer.isBuffer(op.value)) return Promise.reject(badOp(i));
        batch._put(op.key, op.value);
      } else if (op.type === 'del') {
        batch._del(op.key);
      } else {
        return Promise.reject(badOp(i));
      }
    }
    return new Promise((resolve, reject) => {
      batch._write(options?.sync === true ? WRITE_SYNC : WRITE_ASYNC, (err) => {
        if (err) reject(err);
        else resolve();
      });
    });
  }


  iterator(range: KvRange = {}): KvIterator {
    if (this.#closing) throw storeClosedError();
    const iterator = new LevelIterator(this.#db, range, this.#iterators);
    this.#iterators.add(iterator);
    return iterator;
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const ending: Promise<void>[] = [];
    for (const iterator of this.#iterators) ending.push(iterator.storeClosed());
    this.#iterators.clear();
    // leveldown defers an end behind a pending next() and defers the close
    // behind ending iterators and in-flight reads/writes, so nothing native
    // is torn down under a running operation.
    await Promise.all(ending);
    await new Promise<void>((resolve, reject) => {
      this.#db.close((err) => {
        if (err) reject(err);
        else resolve();
      });
    });
    log('closed %s', this.#dir);
  }
}

type State = 'open' | 'closed' | 'store-closed';

class LevelIterator implements KvIterator {
  /** Null when the range is provably empty, so no native resources are held. */
  readonly #it: NativeIterator | null;
  readonly #registry: Set<LevelIterator>;
  readonly #reverse: boolean;
  readonly #gt: Buffer | undefined;
  readonly #gte: Buffer | undefined;
  readonly #lte: Buffer | undefined;
  /**
   * A reverse range with `lt` is opened natively as `lte` so a seek past the
   * bound can land on the bound and step back (a native `lt` would end the
   * iteration instead); the bound key itself is then skipped here. It can only
   * be the first entry after creation or a seek.
   */
  readonly #skipKey: Buffer | undefined;
  #skipPending: boolean;
  #remaining: number;
  /** Set by a seek that no key can satisfy; cleared by the next seek. */
  #exhausted = false;
  #state: State = 'open';
  #ending: Promise<void> | undefined;
  #resolve: ((entry: [Buffer, Buffer] | undefined) => void) | undefined;
  #reject: ((err: Error) => void) | undefined;

  constructor(db: NativeDb, range: KvRange, registry: Set<LevelIterator>) {
    this.#registry = registry;
    const reverse = range.reverse === true;
    let { gt, gte, lt, lte } = range;
    // Every key is non-empty, hence greater than the empty key.
    if (gt !== undefined && gt.length === 0) gt = undefined;
    if (gte !== undefined && gte.length === 0) gte = undefined;
    // leveldown seeks to `gte` when both lower bounds are given, then rejects
    // it as out of range if `gt` is stricter: keep only the stricter bound.
    if (gt !== undefined && gte !== undefined) {
      if (Buffer.compare(gte, gt) > 0) gt = undefined;
      else gte = undefined;
    }
    if (lt !== undefined && lte !== undefined) {
      if (Buffer.compare(lte, lt) < 0) lt = undefined;
      else lte = undefined;
    }
    const limit = range.limit;
    this.#remaining = limit === undefined || !(limit >= 0) ? Infinity : Math.floor(limit);
    this.#reverse = reverse;
    this.#gt = gt;
    this.#gte = gte;
    this.#skipKey = reverse ? lt : undefined;
    this.#lte = this.#skipKey ?? lte;
    this.#skipPending = this.#skipKey !== undefined;

    // leveldown ignores empty upper bounds, which would widen the range to everything.
    if (this.#remaining === 0 || lt?.length === 0 || lte?.length === 0) {
      this.#it = null;
      return;
    }
    const options: Record<string, unknown> = { keyAsBuffer: true, valueAsBuffer: true, reverse, limit: -1, values: range.values !== false };
    if (gt !== undefined) options.gt = gt;
    if (gte !== undefined) options.gte = gte;
    if (this.#lte !== undefined) options.lte = this.#lte;
    else if (lt !== undefined) options.lt = lt;
    // Read ahead roughly as much as the limit can use (assuming ~64-byte
    // entries) so a small limited scan does not copy 16 KiB it will discard.
    if (this.#remaining !== Infinity) options.highWaterMark = Math.min(range.readAhead ?? READ_AHEAD_BYTES, this.#remaining * 64);
    else if (range.readAhead !== undefined && range.readAhead > 0) options.highWaterMark = range.readAhead;
    this.#it = db.iterator(options);
  }

  next(): Promise<[Buffer, Buffer] | undefined> {
    if (this.#state !== 'open') return Promise.reject(this.#closedError());
    if (this.#resolve) return Promise.reject(new Error('next() called before the previous next() settled'));
    if (this.#it === null || this.#exhausted || this.#remaining === 0) return DONE;
    return new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
      this.#it!.next(this.#onNext);
    });
  }

  /**
   * The next entries, at least one unless the range is done: after one
   * native read, whatever leveldown already holds in its read-ahead cache is
   * taken synchronously, so a scan costs one promise per batch, not per entry.
   */
  async nextBatch(max: number): Promise<[Buffer, Buffer][]> {
    const first = await this.next();
    if (first === undefined) return [];
    const out: [Buffer, Buffer][] = [first];
    // leveldown keeps read-ahead entries as a reversed [.., value, key] array.
    const native = this.#it as unknown as { cache?: Buffer[] | null };
    const cache = native.cache;
    if (!cache) return out;
    while (out.length < max && this.#remaining > 0 && cache.length >= 2 && this.#state === 'open') {
      const key = cache.pop()!;
      const value = cache.pop() ?? EMPTY;
      this.#remaining--;
      out.push([key, value]);
    }
    return out;
  }

  // One bound handler per iterator instead of a closure per next().
  readonly #onNext: NextCallback = (err, key, value) => {
    if (err) return this.#settle(undefined, err);
    if (key === undefined) return this.#settle(undefined, undefined);
    if (this.#skipPending) {
      this.#skipPending = false;
      if (key.equals(this.#skipKey!)) {
        // A close() while this read was in flight has already ended the native iterator.
        if (this.#state !== 'open') return this.#settle(undefined, undefined);
        this.#it!.next(this.#onNext);
        return;
      }
    }
    this.#remaining--;
    this.#settle([key, value ?? EMPTY], undefined);
  };

  #settle(entry: [Buffer, Buffer] | undefined, err: Error | undefined): void {
    const resolve = this.#resolve!;
    const reject = this.#reject!;
    this.#resolve = undefined;
    this.#reject = undefined;
    if (err) reject(err);
    else resolve(entry);
  }

  seek(target: Buffer): void {
    if (this.#state !== 'open') throw this.#closedError();
    if (this.#resolve) throw new Error('seek() called before the pending next() settled');
    if (this.#it === null) return;
    let to: Buffer | undefined = target;
    if (!this.#reverse) {
      if (this.#gte !== undefined && Buffer.compare(to, this.#gte) < 0) to = this.#gte;
      // gt + 0x00 is the smallest key above gt.
      else if (this.#gt !== undefined && Buffer.compare(to, this.#gt) <= 0) to = Buffer.concat([this.#gt, Buffer.alloc(1)]);
      // No key is empty, so the smallest possible key is the first one present.
      else if (to.length === 0) to = Buffer.alloc(1);
    } else {
      if (this.#lte !== undefined && Buffer.compare(to, this.#lte) > 0) to = this.#lte;
      // Nothing sorts at or before the empty key.
      else if (to.length === 0) to = undefined;
    }
    if (to === undefined) {
      this.#exhausted = true;
      return;
    }
    this.#it.seek(to);
    this.#exhausted = false;
    this.#skipPending = this.#skipKey !== undefined;
  }

  close(): Promise<void> {
    if (this.#state === 'open') this.#state = 'closed';
    this.#registry.delete(this);
    this.#ending ??= this.#end();
    return this.#ending;
  }

  /** Called by the store when it closes: later calls report the store as closed. */
  storeClosed(): Promise<void> {
    this.#state = 'store-closed';
    this.#ending ??= this.#end();
    return this.#ending;
  }

  #end(): Promise<void> {
    const it = this.#it;
    if (it === null) return DONE;
    return new Promise((resolve, reject) => {
      it.end((err) => {
        if (err) reject(err);
        else resolve();
      });
    });
  }

  #closedError(): Error {
    return this.#state === 'store-closed' ? storeClosedError() : new Error('iterator is closed');
  }
}
