import type { Metrics } from '../metrics/metrics.js';
import type { Config } from '../config/options.js';

/** Client addresses whose rate state is kept at most; the least recently seen are forgotten first. */
const MAX_TRACKED_ADDRESSES = 65_536;

/**
 * A token bucket: `burst` tokens at most, refilled at `rate` per second.
 * Refills lazily from the timestamps given, so it needs no timer.
 */
export class TokenBucket {
  private readonly rate: number;
  private readonly burst: number;
  private tokens: number;
  private last: number;

  /** `rate` tokens per second, `burst` at most; starts full at `now` (ms, monotonic). */
  constructor(rate: number, burst: number, now: number) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.last = now;
  }

  /** Takes one token. Returns 0 when granted, else the ms until one will be available. */
  take(now: number): number {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000);
      this.last = now;
    }
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil(((1 - this.tokens) * 1000) / this.rate));
  }

  /**
   * Removes `tokens` taken elsewhere (by other nodes of a cluster), going
   * below zero (a debt the refill pays back first) down to `-maxDebt` at
   * most: the sum of what every holder of a copy of the bucket takes then
   * stays near the rate, where clamping at zero would let each copy spend the
   * whole rate itself.
   */
  charge(tokens: number, now: number, maxDebt: number): void {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000);
      this.last = now;
    }
    this.tokens = Math.max(-maxDebt, this.tokens - tokens);
  }
}

/**
 * Token buckets per client address. The map is bounded: an attacker with
 * many addresses evicts the least recently seen buckets rather than growing
 * memory without limit (an evicted address starts again with a full bucket).
 */
export class AddressRateLimiter {
  private readonly rate: number;
  private readonly burst: number;
  private readonly maxAddresses: number;
  /** Least recently seen first (a Map keeps insertion order). */
  private readonly buckets = new Map<string, TokenBucket>();
  /** Tokens granted per address since the last drainTaken(); kept only once a cluster asks for them. */
  private taken: Map<string, number> | undefined;

  /** `rate` per second with `burst` per address, tracking `maxAddresses` addresses at most. */
  constructor(rate: number, burst: number, maxAddresses = MAX_TRACKED_ADDRESSES) {
    this.rate = rate;
    this.burst = burst;
    this.maxAddresses = maxAddresses;
  }

  /** Takes one token for `address`. Returns 0 when granted, else the ms until one will be available. */
  take(address: string, now: number): number {
    const wait = this.bucketOf(address, now).take(now);
    const taken = this.taken;
    if (wait === 0 && taken !== undefined) {
      const n = taken.get(address);
      // Beyond the bound (more addresses within one sync than are tracked), the excess goes unshared.
      if (n !== undefined) taken.set(address, n + 1);
      else if (taken.size < this.maxAddresses) taken.set(address, 1);
    }
    return wait;
  }

  /**
   * Charges `tokens` that other nodes granted to `address` (TokenBucket.charge),
   * making its bucket when this node has none yet: the address is then known
   * here with what the cluster has left of its burst.
   */
  charge(address: string, tokens: number, now: number, maxDebt: number): void {
    this.bucketOf(address, now).charge(tokens, now, maxDebt);
  }

  /**
   * Tokens granted per address since the previous call, at most `maxAddresses`
   * addresses. Counting starts with the first call: a single node never pays for it.
   */
  drainTaken(): Map<string, number> {
    const taken = this.taken ?? new Map<string, number>();
    this.taken = new Map();
    return taken;
  }

  /** The bucket of `address`, made most recently seen; a new one (full) when it had none, forgetting the least recently seen beyond the bound. */
  private bucketOf(address: string, now: number): TokenBucket {
    let bucket = this.buckets.get(address);
    if (bucket) {
      this.buckets.delete(address);
    } else {
      bucket = new TokenBucket(this.rate, this.burst, now);
      for (const oldest of this.buckets.keys()) {
        if (this.buckets.size < this.maxAddresses) break;
        this.buckets.delete(oldest);
      }
    }
    this.buckets.set(address, bucket);
    return bucket;
  }

  /** Addresses currently tracked. */
  get size(): number {
    return this.buckets.size;
  }
}

/** Why a connection was refused. */
export type ConnectionRefusal = 'total' | 'address';

/**
 * Counts open connections, in total and per client address. In a cluster,
 * the per-address limit also counts what the other nodes hold open
 * (`setRemote`); the total stays this node's own.
 */
export class ConnectionCounter {
  private readonly maxTotal: number;
  private readonly maxPerAddress: number;
  private readonly perAddress = new Map<string, number>();
  private remote: ReadonlyMap<string, number> = new Map();
  private open = 0;

  /** 0 disables a limit. */
  constructor(maxTotal: number, maxPerAddress: number) {
    this.maxTotal = maxTotal;
    this.maxPerAddress = maxPerAddress;
  }

  /** Which limit one more connection from `address` would break, if any. */
  check(address: string): ConnectionRefusal | undefined {
    if (this.maxTotal > 0 && this.open >= this.maxTotal) return 'total';
    if (this.maxPerAddress > 0 && (this.perAddress.get(address) ?? 0) + (this.remote.get(address) ?? 0) >= this.maxPerAddress) return 'address';
    return undefined;
  }

  /** Connections other nodes hold open per address, as last heard; replaces the previous (an empty map: this node alone). */
  setRemote(counts: ReadonlyMap<string, number>): void {
    this.remote = counts;
  }

  /** Open connections per address on this node (addresses with at least one). */
  byAddress(): ReadonlyMap<string, number> {
    return this.perAddress;
  }

  /** Counts a connection from `address` until `closed(address)`. */
  opened(address: string): void {
    this.open++;
    this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1);
  }

  /** Ends the count of one connection from `address`. */
  closed(address: string): void {
    const n = this.perAddress.get(address);
    if (n === undefined) return;
    this.open--;
    if (n <= 1) this.perAddress.delete(address);
    else this.perAddress.set(address, n - 1);
  }

  /** Open connections in total. */
  get size(): number {
    return this.open;
  }
}

/**
 * True when the JSON text in `bytes` nests arrays and objects deeper than
 * `max`. JSON.parse has no depth limit, and code that walks a parsed value
 * recursively (hooks, error rendering) would overflow the stack on a few
 * megabytes of brackets, so frames are scanned before they are parsed. The
 * scan works on UTF-8 bytes: quotes, backslashes and brackets are ASCII and
 * never occur inside a multi-byte sequence. Malformed text is left to
 * JSON.parse to refuse.
 */
export function exceedsJsonDepth(bytes: Uint8Array, max: number): boolean {
  // Fewer bytes than the limit cannot hold that many openers.
  if (bytes.length <= max) return false;
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  let depth = 0;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (c === 0x22) {
      // Skip the string natively: its closing quote is the next one not escaped by an odd run of backslashes.
      let end = buf.indexOf(0x22, i + 1);
      while (end !== -1 && escaped(buf, end)) end = buf.indexOf(0x22, end + 1);
      if (end === -1) return false;
      i = end;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return false;
}

function escaped(buf: Buffer, quote: number): boolean {
  let backslashes = 0;
  for (let j = quote - 1; buf[j] === 0x5c; j--) backslashes++;
  return backslashes % 2 === 1;
}

/**
 * The address limits are keyed by: the socket's peer, or with `trustProxy`
 * the last `X-Forwarded-For` entry, which is the one the nearest proxy
 * appended (earlier entries are whatever the client claimed).
 */
export function clientAddress(forwardedFor: string | string[] | undefined, socketAddress: string | undefined, trustProxy: boolean): string {
  if (trustProxy && forwardedFor !== undefined) {
    const header = Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor;
    const last = header.split(',').map((part) => part.trim()).filter((part) => part.length > 0).at(-1);
    if (last !== undefined && last.length <= 64) return last;
  }
  return socketAddress ?? 'unknown';
}

/** Names of the limits, as the `limit` label of `sync_limit_refusals_total`. */
export type LimitName =
  | 'rate_connection' | 'rate_address' | 'connections_total' | 'connections_address' | 'origin'
  | 'changes_per_message' | 'json_depth' | 'handshake_timeout' | 'send_buffer';

/** The limits one router enforces, shared by its HTTP routes and WebSocket sessions. */
export interface Limits {
  /**
   * Takes one token of the per-address rate (WebSocket frames, upgrades and
   * HTTP requests share it). When the address has none left, counts the
   * refusal (unless `counted` is false: a delayed frame asking again) and
   * returns how long to wait and the RATE_LIMITED text naming `what` was
   * refused; undefined when allowed or when the limit is off.
   */
  takeAddress(address: string, what: 'messages' | 'requests', counted?: boolean): { waitMs: number; message: string } | undefined;
  /** Open WebSocket connections. */
  readonly connections: ConnectionCounter;
  /** Counts a refusal by one of the limits. */
  refused(limit: LimitName): void;
  /** Counts a session whose pushes stopped because it read too slowly. */
  lagged(): void;
  /** Monotonic ms for the token buckets (wall-clock jumps must not refill or drain them). */
  now(): number;
}

/**
 * This node's side of the per-address limits as a cluster shares them
 * (lib/cluster/shared-limits.ts): what it used, and where the other nodes'
 * use is counted. Nothing here talks to Redis; every method is synchronous.
 */
export interface AddressUsage {
  /** `messagesPerSecondPerIp` (0: the rate limit is off, and `charge` does nothing). */
  readonly ratePerSecond: number;
  /** `messageBurstPerIp`. */
  readonly burst: number;
  /** `maxConnectionsPerIp` (0: off). */
  readonly maxConnectionsPerAddress: number;
  /** Open WebSocket connections per address on this node. */
  connections(): ReadonlyMap<string, number>;
  /** Rate tokens granted per address on this node since the previous call (the first call starts the count). */
  drainTaken(): Map<string, number>;
  /** Takes `tokens` other nodes granted to `address` from its bucket here, owing at most `maxDebt` (TokenBucket.charge). */
  charge(address: string, tokens: number, maxDebt: number): void;
  /** What other nodes hold open per address, counted against `maxConnectionsPerIp` until replaced. */
  setRemoteConnections(counts: ReadonlyMap<string, number>): void;
}

/** The limits of a router, with the side a cluster shares. */
export interface RouterLimits extends Limits {
  readonly usage: AddressUsage;
}

/**
 * Builds a router's limits, counting refusals in its metrics. `now` is the
 * clock of the token buckets in ms: monotonic, since wall-clock jumps must
 * not refill or drain them (tests may pass their own).
 */
export function createLimits(config: Config, metrics: Metrics, now: () => number = () => performance.now()): RouterLimits {
  const refusals = metrics.limitRefusalsTotal;
  const lagging = metrics.laggingSessionsTotal;
  const addressRate = config.messagesPerSecondPerIp > 0 ? new AddressRateLimiter(config.messagesPerSecondPerIp, config.messageBurstPerIp) : undefined;
  const connections = new ConnectionCounter(config.maxConnections, config.maxConnectionsPerIp);
  return {
    takeAddress(address, what, counted = true) {
      const waitMs = addressRate?.take(address, now()) ?? 0;
      if (waitMs === 0) return undefined;
      if (counted) refusals.inc({ limit: 'rate_address' });
      return { waitMs, message: `too many ${what} from this address (limit ${config.messagesPerSecondPerIp}/s, burst ${config.messageBurstPerIp}); retry in ${waitMs} ms` };
    },
    connections,
    refused: (limit) => refusals.inc({ limit }),
    lagged: () => lagging.inc(),
    now,
    usage: {
      ratePerSecond: addressRate ? config.messagesPerSecondPerIp : 0,
      burst: config.messageBurstPerIp,
      maxConnectionsPerAddress: config.maxConnectionsPerIp,
      connections: () => connections.byAddress(),
      drainTaken: () => addressRate?.drainTaken() ?? new Map(),
      charge: (address, tokens, maxDebt) => addressRate?.charge(address, tokens, now(), maxDebt),
      setRemoteConnections: (counts) => connections.setRemote(counts),
    },
  };
}
