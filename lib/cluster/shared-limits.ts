/**
 * Per-address limits across the nodes of a cluster (README "Scale out"):
 * `maxConnectionsPerIp` and `messagesPerSecondPerIp` hold for the cluster as
 * a whole, not per node. `maxConnections` (the total) stays per node: it
 * protects this process's memory and file descriptors, which other nodes'
 * sockets do not use.
 *
 * The checks stay local and synchronous (they run per frame and request):
 * every `intervalMs` a sync loop publishes this node's usage to Redis and
 * reads the other nodes', which the local limits then count
 * (service/limits.ts AddressUsage):
 *
 * - connections: other nodes' open connections per address are added to
 *   this node's own when checking `maxConnectionsPerIp`;
 * - rate: each node publishes the tokens it granted per address during its
 *   last interval and the interval's length; every other node charges that
 *   rate, times the time since its own previous charge, to its copy of the
 *   address's bucket, which may go into debt (TokenBucket.charge). Each
 *   copy thus refills at the configured rate and pays for every node's
 *   consumption, so the cluster grants about that rate in total.
 *
 * Approximate by design: another node's use is counted one to two intervals
 * late, so the cluster can let through up to one burst per node when an
 * address starts, and about one interval of its rate per node when its
 * traffic moves between nodes.
 *
 * Keys (one hash tag, so that a node's transaction stays in one slot):
 * `<prefix>{limits}:nodes`, the set of members (`<nodeId>:<instance>`), and
 * per member `<prefix>{limits}:node:<member>`, a hash rewritten whole at each
 * sync and expiring `ttlMs` (3 intervals, at least 2 s) after it: `ms` the
 * length of the interval its counts cover, `c:<address>` open connections,
 * `t:<address>` tokens granted in that interval. A member whose hash is gone
 * died (or lost Redis for that long): readers drop it from the set, and its
 * usage no longer counts. A node that closes deletes its own at once.
 *
 * Bounded: at most `maxAddresses` (65,536) addresses of each kind are
 * published per node (those with the most connections), and counted from
 * the other nodes together; the rest go uncounted across nodes.
 *
 * Redis unreachable: a sync fails, `onError` counts it, and nothing is
 * refused or thrown for it. Other nodes' usage stays counted as last heard
 * for `ttlMs`, then the limits are this node's alone until Redis answers.
 *
 * Its connection comes from RedisLog (`connection('limits')`), with the same
 * failure options, so its commands never wait behind the log's appends.
 */
import { randomUUID } from 'node:crypto';
import { messageOf } from '../errors.js';
import { logs } from '../log.js';
import type { AddressUsage } from '../service/limits.js';
import { RedisLog } from './redis-log.js';

const log = logs.cluster;

/** Addresses of each kind one node publishes, and counts from the others, at most. */
export const MAX_SHARED_ADDRESSES = 65_536;

/** A Redis connection and key prefix, as RedisLog.connection gives them. */
export type SharedLimitsConnection = ReturnType<RedisLog['connection']>;

/** Options of {@link SharedLimits}. */
export interface SharedLimitsOptions {
  /** This node's usage and where the others' is counted (createLimits(...).usage). */
  usage: AddressUsage;
  /** Its own Redis connection (RedisLog.connection('limits')); SharedLimits closes it. */
  connection: SharedLimitsConnection;
  /** This node's id (a member is `<nodeId>:<random instance>`, so a restarted node never reads its old self). */
  nodeId: string;
  /** Sync period in ms (SyncRouterOptions.clusterLimitsSyncMs); 0 runs no loop, only explicit `sync()` calls. @default 1000 */
  intervalMs?: number;
  /** Addresses of each kind published and counted at most. @default 65536 */
  maxAddresses?: number;
  /** Called with the error of each failed sync (e.g. to count it); connection errors go to RedisLog's `onError`. */
  onError?: (err: Error) => void;
  /** Monotonic ms. @default performance.now */
  now?: () => number;
}

/** What the other members published, summed per address. */
interface Heard {
  connections: Map<string, number>;
  /** Tokens per ms. */
  rates: Map<string, number>;
  /** Members whose hash is gone. */
  gone: string[];
}

/**
 * Shares this node's per-address usage through Redis and counts the other
 * nodes' in the local limits; see the module comment. Starts its loop when
 * built; `close()` it (that also removes this node's usage from Redis).
 */
export class SharedLimits {
  readonly #usage: AddressUsage;
  readonly #redis: SharedLimitsConnection['redis'];
  readonly #member: string;
  readonly #nodesKey: string;
  readonly #nodeKeyPrefix: string;
  readonly #key: string;
  readonly #intervalMs: number;
  readonly #ttlMs: number;
  readonly #maxAddresses: number;
  readonly #maxDebt: number;
  readonly #onError: (err: Error) => void;
  readonly #now: () => number;
  /** Members found gone, removed from the set at the next sync. */
  readonly #gone = new Set<string>();
  #drainedAt: number;
  #chargedAt: number;
  #heardAt: number | undefined;
  #last: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(options: SharedLimitsOptions) {
    const intervalMs = options.intervalMs ?? 1000;
    if (!Number.isSafeInteger(intervalMs) || intervalMs < 0) throw new TypeError(`SharedLimits option "intervalMs" must be an integer >= 0 (ms), got ${String(intervalMs)}`);
    const maxAddresses = options.maxAddresses ?? MAX_SHARED_ADDRESSES;
    if (!Number.isSafeInteger(maxAddresses) || maxAddresses < 1) throw new TypeError(`SharedLimits option "maxAddresses" must be a positive integer, got ${String(maxAddresses)}`);
    this.#usage = options.usage;
    this.#redis = options.connection.redis;
    this.#member = `${options.nodeId}:${randomUUID()}`;
    this.#nodesKey = `${options.connection.keyPrefix}{limits}:nodes`;
    this.#nodeKeyPrefix = `${options.connection.keyPrefix}{limits}:node:`;
    this.#key = this.#nodeKeyPrefix + this.#member;
    this.#intervalMs = intervalMs;
    // A few intervals, so that one slow sync does not make a live node look dead.
    this.#ttlMs = Math.max(3 * intervalMs, 2000);
    this.#maxAddresses = maxAddresses;
    // Enough debt for what other nodes can report within the TTL; beyond it, a
    // wrong report (a node configured with a higher rate) cannot lock an address out for long.
    this.#maxDebt = this.#usage.burst + (this.#usage.ratePerSecond * this.#ttlMs) / 1000;
    const onError = options.onError;
    this.#onError = (err) => {
      try {
        onError?.(err);
      } catch (hookErr) {
        log('shared limits: onError threw: %s', messageOf(hookErr));
      }
    };
    this.#now = options.now ?? (() => performance.now());
    // The first drain starts the count of tokens.
    this.#usage.drainTaken();
    this.#drainedAt = this.#now();
    this.#chargedAt = this.#drainedAt;
    this.#schedule();
  }

  /** How long a member's usage counts after its last sync, in ms. */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  /**
   * Publishes this node's usage and counts the other nodes' now (the loop
   * calls it every `intervalMs`; calls queue behind each other). Resolves
   * true when both went through, false when Redis failed (counted through
   * `onError`) or the instance is closed. Never rejects.
   */
  sync(): Promise<boolean> {
    const run = this.#last.then(() => this.#syncOnce());
    this.#last = run;
    return run;
  }

  /** Stops the loop, waits for a sync in flight, removes this node's usage from Redis (when it answers) and closes the connection. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#last;
    if (this.#redis.status === 'ready') {
      try {
        await this.#redis.multi().del(this.#key).srem(this.#nodesKey, this.#member).exec();
      } catch (err) {
        log('shared limits: removing %s on close failed: %s', this.#member, messageOf(err));
      }
    }
    this.#usage.setRemoteConnections(new Map());
    await RedisLog.closeConnection(this.#redis);
  }

  #schedule(): void {
    if (this.#closed || this.#intervalMs === 0) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.sync().then(() => this.#schedule());
    }, this.#intervalMs);
    // The connection keeps a process alive until close(); the timer need not.
    this.#timer.unref();
  }

  async #syncOnce(): Promise<boolean> {
    if (this.#closed) return false;
    try {
      const members = await this.#publish();
      if (this.#closed) return false;
      const heard = await this.#read(members);
      this.#count(heard);
      return true;
    } catch (err) {
      const error = err instanceof Error ? err : new Error(messageOf(err));
      log('shared limits: sync failed: %s', error.message);
      this.#onError(error);
      // Other nodes' usage heard too long ago no longer says anything: this node's own limits only.
      if (this.#heardAt !== undefined && this.#now() - this.#heardAt > this.#ttlMs) {
        this.#usage.setRemoteConnections(new Map());
        this.#heardAt = undefined;
      }
      return false;
    }
  }

  /** Rewrites this member's hash, renews its TTL and membership; resolves with the members of the set. */
  async #publish(): Promise<string[]> {
    const now = this.#now();
    const taken = this.#usage.drainTaken();
    const spanMs = Math.max(1, Math.round(now - this.#drainedAt));
    this.#drainedAt = now;
    const fields = new Map<string, string>([['ms', String(spanMs)]]);
    for (const [address, n] of largest(this.#usage.connections(), this.#maxAddresses)) fields.set(`c:${address}`, String(n));
    for (const [address, n] of largest(taken, this.#maxAddresses)) fields.set(`t:${address}`, String(n));
    const tx = this.#redis.multi().del(this.#key).hset(this.#key, fields).pexpire(this.#key, this.#ttlMs).sadd(this.#nodesKey, this.#member);
    const gone = [...this.#gone];
    if (gone.length > 0) tx.srem(this.#nodesKey, ...gone);
    tx.smembers(this.#nodesKey);
    const replies = await tx.exec();
    if (!replies) throw new Error('shared limits: the transaction was aborted');
    for (const [err] of replies) if (err) throw err;
    for (const member of gone) this.#gone.delete(member);
    const members = replies.at(-1)![1];
    return Array.isArray(members) ? members.filter((m): m is string => typeof m === 'string' && m !== this.#member) : [];
  }

  /** Reads the other members' hashes, summing their counts per address (at most `maxAddresses` of each kind). */
  async #read(members: string[]): Promise<Heard> {
    const heard: Heard = { connections: new Map(), rates: new Map(), gone: [] };
    if (members.length === 0) return heard;
    const pipeline = this.#redis.pipeline();
    for (const member of members) pipeline.hgetall(this.#nodeKeyPrefix + member);
    const replies = (await pipeline.exec()) ?? [];
    members.forEach((member, i) => {
      const [err, hash] = replies[i] ?? [new Error('no reply')];
      if (err) throw err;
      const fields = hash as Record<string, string>;
      const spanMs = Number(fields.ms);
      // An expired hash reads as empty.
      if (fields.ms === undefined) {
        this.#gone.add(member);
        return;
      }
      if (!(spanMs > 0)) return;
      for (const [field, value] of Object.entries(fields)) {
        const n = Number(value);
        if (!(n > 0) || !Number.isFinite(n)) continue;
        const kind = field.slice(0, 2);
        const target = kind === 'c:' ? heard.connections : kind === 't:' ? heard.rates : undefined;
        if (!target) continue;
        const address = field.slice(2);
        const known = target.get(address);
        const add = kind === 't:' ? n / spanMs : n;
        if (known !== undefined) target.set(address, known + add);
        else if (target.size < this.#maxAddresses) target.set(address, add);
      }
    });
    return heard;
  }

  /** Counts what was heard in the local limits: connections as they are now, tokens over the time since the previous charge. */
  #count(heard: Heard): void {
    const now = this.#now();
    // After a gap (Redis was away), the rates last heard are no guide to all of it.
    const elapsed = Math.min(Math.max(0, now - this.#chargedAt), this.#ttlMs);
    this.#chargedAt = now;
    this.#heardAt = now;
    this.#usage.setRemoteConnections(heard.connections);
    if (this.#usage.ratePerSecond === 0) return;
    for (const [address, perMs] of heard.rates) this.#usage.charge(address, perMs * elapsed, this.#maxDebt);
  }
}

/** The entries of `map`, or when it has more than `max`, the `max` with the highest counts. */
function largest(map: ReadonlyMap<string, number>, max: number): Iterable<[string, number]> {
  if (map.size <= max) return map;
  return [...map].sort((a, b) => b[1] - a[1]).slice(0, max);
}
