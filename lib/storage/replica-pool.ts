/**
 * Keeps a bounded number of per-database resources (store + replica) open.
 *
 * Each open LevelDB holds file descriptors, a lock and caches, so a server
 * with many databases cannot keep them all open. Resources are opened on
 * first use, leased while in use, and closed when least recently used or
 * idle, never while leased.
 */
import { ErrorCode, SyncError } from '../errors.js';
import { logs } from '../log.js';

const log = logs.storage;

/** setTimeout fires almost at once for delays beyond this, so longer idle times are refused. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** How a {@link ReplicaPool} opens and closes the resource for one database id. */
export interface ReplicaPoolOptions<T> {
  /** Opens the resource for `id`, e.g. its store and replica. */
  open(id: string): Promise<T>;
  /** Closes a resource `open` returned. Never called while the resource is leased (except by `ReplicaPool.close`). */
  close(resource: T, id: string): Promise<void>;
  /**
   * Most resources kept open at once. Exceeded only while every open resource is leased.
   * @default 100
   */
  maxOpen?: number;
  /**
   * Close a resource nobody has used for this long, in ms; 0 disables.
   * @default 300000
   */
  idleMs?: number;
}

/** The right to use one open resource until `release()`. */
export interface Lease<T> {
  readonly resource: T;
  readonly id: string;
  /** Gives the resource back to the pool. Calling it again does nothing. */
  release(): void;
}

interface Entry<T> {
  readonly id: string;
  readonly resource: T;
  leases: number;
  timer: NodeJS.Timeout | undefined;
  /** Set once retired: closes it when its last lease is released. */
  retired?: () => void;
}

/**
 * A lease, with `release` on its prototype: a WebSocket session holds one
 * for its whole life, and a closure per lease would cost every idle socket.
 */
class PoolLease<T> implements Lease<T> {
  readonly resource: T;
  readonly id: string;
  /** Cleared by the first release(). */
  #entry: Entry<T> | undefined;
  readonly #giveBack: (entry: Entry<T>) => void;

  constructor(entry: Entry<T>, giveBack: (entry: Entry<T>) => void) {
    this.resource = entry.resource;
    this.id = entry.id;
    this.#entry = entry;
    this.#giveBack = giveBack;
  }

  release(): void {
    const entry = this.#entry;
    if (!entry) return;
    this.#entry = undefined;
    this.#giveBack(entry);
  }
}

class Opening<T> {
  /** Acquirers waiting on this open; the opened entry starts with this many leases. */
  waiters = 0;
  promise!: Promise<Entry<T>>;
}

/**
 * A pool that keeps at most `maxOpen` resources open, one per database id,
 * opened on demand and closed least-recently-used first or when idle.
 * The pool keys by string and does not validate ids; callers do.
 */
export class ReplicaPool<T> {
  readonly #open: (id: string) => Promise<T>;
  readonly #closeResource: (resource: T, id: string) => Promise<void>;
  readonly #maxOpen: number;
  readonly #idleMs: number;
  /** Open resources, least recently used first (a Map keeps insertion order). */
  readonly #entries = new Map<string, Entry<T>>();
  readonly #opening = new Map<string, Opening<T>>();
  /** Closes in flight; an id is only reopened once its close has finished (LevelDB's lock). */
  readonly #closing = new Map<string, Promise<unknown>>();
  /** Retired resources still leased (retire). */
  readonly #retired = new Set<Entry<T>>();
  #closed: Promise<void> | undefined;
  /** What every lease of this pool calls on its first release(): one function per pool, not one per lease. */
  readonly #giveBack = (entry: Entry<T>): void => this.#release(entry);

  /** Throws TypeError when an option is missing or out of range. */
  constructor(options: ReplicaPoolOptions<T>) {
    if (typeof options !== 'object' || options === null) throw new TypeError('ReplicaPool: options must be an object');
    const { open, close, maxOpen = 100, idleMs = 300_000 } = options;
    if (typeof open !== 'function') throw new TypeError('ReplicaPool: options.open must be a function');
    if (typeof close !== 'function') throw new TypeError('ReplicaPool: options.close must be a function');
    if (!Number.isSafeInteger(maxOpen) || maxOpen < 1) {
      throw new TypeError(`ReplicaPool: options.maxOpen must be an integer >= 1, got ${String(maxOpen)}`);
    }
    if (typeof idleMs !== 'number' || !(idleMs >= 0 && idleMs <= MAX_TIMER_MS)) {
      throw new TypeError(`ReplicaPool: options.idleMs must be a number of ms from 0 to ${MAX_TIMER_MS}, got ${String(idleMs)}`);
    }
    // Bound to the options object so implementations may use `this`.
    this.#open = open.bind(options);
    this.#closeResource = close.bind(options);
    this.#maxOpen = maxOpen;
    this.#idleMs = idleMs;
  }

  /** Number of open resources. */
  get size(): number {
    return this.#entries.size;
  }

  /** Ids of the open resources, least recently used first. */
  openIds(): string[] {
    return [...this.#entries.keys()];
  }

  /**
   * The open resource for `id`, or undefined, without leasing or touching
   * it: for a look at its figures (the dashboard), which must neither keep
   * it open nor change which closes first.
   */
  peek(id: string): T | undefined {
    return this.#entries.get(id)?.resource;
  }

  /** Whether the resource for `id` is open (not merely being opened or closed). */
  isOpen(id: string): boolean {
    return this.#entries.has(id);
  }

  /**
   * Leases the resource for `id`, opening it if needed. Concurrent acquires
   * of one id share one open; if it fails they all reject, and the next
   * acquire tries again. Rejects with SyncError STORE_CLOSED once the pool
   * is closing.
   */
  async acquire(id: string): Promise<Lease<T>> {
    for (;;) {
      if (this.#closed) throw poolClosedError();
      const entry = this.#entries.get(id);
      if (entry) {
        entry.leases++;
        this.#touch(entry);
        return this.#lease(entry);
      }
      const closing = this.#closing.get(id);
      if (closing) {
        await closing;
        continue;
      }
      let opening = this.#opening.get(id);
      if (!opening) {
        opening = new Opening<T>();
        // Registered before #openEntry runs so its eviction pass counts this open.
        this.#opening.set(id, opening);
        opening.promise = this.#openEntry(id, opening);
      }
      opening.waiters++;
      const opened = await opening.promise;
      // The pool closes every resource once in-flight opens settle, so a
      // lease handed out now would be on a resource about to close.
      if (this.#closed) {
        opened.leases--;
        throw poolClosedError();
      }
      return this.#lease(opened);
    }
  }

  /**
   * Retires the open resource for `id` (it no longer matches its source):
   * it closes once its last lease is released, at once when it has none,
   * and acquires of `id` meanwhile wait for that close and open a fresh one.
   * Holders should be told to let go. Does nothing when `id` is not open.
   */
  retire(id: string): void {
    const entry = this.#entries.get(id);
    if (!entry) return;
    if (entry.leases === 0) {
      void this.#closeEntry(entry);
      return;
    }
    this.#entries.delete(id);
    if (entry.timer) clearTimeout(entry.timer);
    const released = new Promise<void>((resolve) => { entry.retired = resolve; });
    const closed = released.then(() => this.#closeEntry(entry));
    this.#retired.add(entry);
    this.#closing.set(id, closed);
    void closed.then(() => {
      this.#retired.delete(entry);
      if (this.#closing.get(id) === closed) this.#closing.delete(id);
    });
  }

  /** Runs `fn` with the resource for `id` leased, releasing it afterwards. */
  async use<R>(id: string, fn: (resource: T) => Promise<R> | R): Promise<R> {
    const lease = await this.acquire(id);
    try {
      return await fn(lease.resource);
    } finally {
      lease.release();
    }
  }

  /**
   * Stops the pool: later acquires reject with SyncError STORE_CLOSED. Waits
   * for in-flight opens and closes, then closes every resource, leased or
   * not (their holders see the resource's own closed errors). Rejects with
   * the close failure (an AggregateError for several) after closing the rest.
   */
  close(): Promise<void> {
    this.#closed ??= this.#closeAll();
    return this.#closed;
  }

  async #closeAll(): Promise<void> {
    await Promise.allSettled([...this.#opening.values()].map((o) => o.promise));
    // Retired but still leased: closed now like the rest.
    for (const entry of this.#retired) entry.retired?.();
    const results = await Promise.all([...this.#entries.values()].map((e) => this.#closeEntry(e)));
    await Promise.all(this.#closing.values());
    const errors = results.filter((r) => r !== undefined);
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `ReplicaPool: ${errors.length} resources failed to close`);
  }

  async #openEntry(id: string, opening: Opening<T>): Promise<Entry<T>> {
    try {
      // Counting this open, make room first so the cap holds for file
      // descriptors too, not just for the map.
      const evictions = this.#evictExcess();
      if (evictions.length > 0) await Promise.all(evictions);
      const resource = await this.#open(id);
      const entry: Entry<T> = { id, resource, leases: opening.waiters, timer: undefined };
      // Same tick as the lease count above, so no acquirer can slip between them.
      this.#opening.delete(id);
      this.#entries.set(id, entry);
      log('opened %s (%d open)', id, this.#entries.size);
      return entry;
    } catch (err) {
      this.#opening.delete(id);
      throw err;
    }
  }

  /** Starts closing least-recently-used unleased resources until opens fit under the cap. */
  #evictExcess(): Promise<unknown>[] {
    const closes: Promise<unknown>[] = [];
    for (const entry of this.#entries.values()) {
      if (this.#entries.size + this.#opening.size <= this.#maxOpen) break;
      if (entry.leases === 0) closes.push(this.#closeEntry(entry));
    }
    return closes;
  }

  #touch(entry: Entry<T>): void {
    this.#entries.delete(entry.id);
    this.#entries.set(entry.id, entry);
  }

  #lease(entry: Entry<T>): Lease<T> {
    return new PoolLease(entry, this.#giveBack);
  }

  #release(entry: Entry<T>): void {
    if (--entry.leases > 0) return;
    if (entry.retired) {
      entry.retired();
      return;
    }
    if (this.#entries.get(entry.id) !== entry) return;
    if (this.#entries.size + this.#opening.size > this.#maxOpen) {
      this.#evictExcess();
      if (!this.#entries.has(entry.id)) return;
    }
    if (this.#idleMs === 0) return;
    if (entry.timer) {
      // Cheaper than a new timer per release, and re-arms one that already fired.
      entry.timer.refresh();
    } else {
      entry.timer = setTimeout(() => this.#onIdle(entry), this.#idleMs);
      entry.timer.unref();
    }
  }

  #onIdle(entry: Entry<T>): void {
    // A leased entry is re-armed when its last lease is released.
    if (entry.leases === 0 && this.#entries.get(entry.id) === entry) {
      log('closing idle %s', entry.id);
      void this.#closeEntry(entry);
    }
  }

  /** Resolves to the close error, or undefined; never rejects (failures are logged). */
  #closeEntry(entry: Entry<T>): Promise<unknown> {
    const { id } = entry;
    this.#entries.delete(id);
    if (entry.timer) clearTimeout(entry.timer);
    const done = (async () => this.#closeResource(entry.resource, id))().then(
      () => {
        log('closed %s', id);
        return undefined;
      },
      (err: unknown) => {
        log('closing %s failed: %O', id, err);
        return err ?? new Error(`closing ${id} failed`);
      },
    );
    this.#closing.set(id, done);
    // Registered before any acquirer can await `done`, so they see the id as closed.
    void done.then(() => {
      if (this.#closing.get(id) === done) this.#closing.delete(id);
    });
    return done;
  }
}

function poolClosedError(): SyncError {
  return new SyncError(ErrorCode.StoreClosed, 'replica pool is closed');
}
