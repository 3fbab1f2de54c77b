import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { Registry } from 'prom-client';
import type { CoordinatorHooks, DashboardAuth } from './hooks.js';
import { archiveKeyProblem, type Archive } from '../durability/archive.js';
import { describeValue } from '../errors.js';

/** How clients prove who they are. */
export type AuthMode = 'none' | 'token-whitelist';

/** CORS origin setting: `true` reflects any origin, `false` disables CORS headers. */
export type CorsOrigin = boolean | string | string[];

/** Public options of `createSyncRouter()`. Every field is optional. `I` is the identity type of the hooks. */
export interface SyncRouterOptions<I = unknown> {
  /** Where the router is mounted; WebSocket upgrades are accepted at `<path>/ws`. @default '/sync' */
  path?: string;
  /** Directory with one LevelDB store per database. @default './.data' */
  dataDir?: string;
  /** @default 'none' */
  authMode?: AuthMode;
  /** Accepted bearer tokens for `token-whitelist`. @default [] */
  authTokens?: string[];
  /** Lifecycle and policy hooks, all optional and async. */
  hooks?: CoordinatorHooks<I>;
  /** CORS origin for the HTTP routes. @default true */
  corsOrigin?: CorsOrigin;
  /** Changes per `get_changes` page (whole transactions, so a page may overshoot). @default 1000 */
  batchSize?: number;
  /** Tombstones older than this are swept; older cursors must re-bootstrap. @default 2592000000 (30 days) */
  retentionHorizonMs?: number;
  /** How often retention sweeps open databases, in ms; 0 disables. @default 3600000 */
  sweepIntervalMs?: number;
  /** Let a column write newer than a row's tombstone bring the row back. @default false */
  allowResurrection?: boolean;
  /** Largest clock lead accepted on any HLC of a message, in ms. @default 60000 */
  maxDriftMs?: number;
  /** Column versions per snapshot chunk. @default 1000 */
  snapshotChunkSize?: number;
  /** fsync each write before acknowledging it (survives power loss). @default false */
  syncWrites?: boolean;
  /** Most database stores open at once (least recently used close first). @default 100 */
  maxOpenStores?: number;
  /** Close a store nobody has used for this long, in ms; 0 disables. @default 300000 */
  storeIdleMs?: number;
  /**
   * LevelDB memtable size per open database, in bytes: writes are held in
   * memory up to this much before being flushed to a table file. Larger
   * costs less CPU per write (fewer flushes and compactions), smaller less
   * memory: up to this much per open database that is being written.
   * @default 4194304 (4 MiB, LevelDB's own default)
   */
  storeWriteBufferBytes?: number;
  /**
   * Largest accepted WebSocket frame or HTTP body, in bytes; a larger frame
   * closes the socket with 1009, a larger body gets 413. A real client's
   * batch is 1,000 changes whatever their size (docs/protocol.md §8) and it cannot
   * split a refused one, so this must hold its biggest batch. 1 KiB to 1 GiB.
   * @default 67108864 (64 MiB)
   */
  maxMessageBytes?: number;
  /**
   * Bytes of WebSocket frames and HTTP bodies being received or parsed at
   * once, across all connections of this router (docs/protocol.md §9). Above it
   * the server stops reading from sockets that send more (TCP pushes back on
   * their clients) until handled messages free room; an HTTP body waits for
   * room before it is read. At least `maxMessageBytes`.
   * @default 2 × maxMessageBytes (128 MiB with the default): one largest message being handled while the next is read
   */
  maxInboundBytes?: number;
  /** Close sockets that have not completed a handshake within this time, in ms; a handshake sent in time that waits for a rate limit is not closed. @default 10000 */
  handshakeTimeoutMs?: number;
  /** Interval of server WebSocket pings; a socket that misses one is terminated. 0 disables. @default 30000 */
  heartbeatIntervalMs?: number;
  /**
   * Most changes plus schema migrations in one message (an empty change set
   * counts as one); more is refused whole with PAYLOAD_TOO_LARGE (HTTP 413).
   * Bounds the memory one message can take once parsed. @default 50000
   */
  maxChangesPerMessage?: number;
  /** Deepest JSON nesting accepted in a frame or body; deeper is INVALID_MESSAGE. Protocol messages need 7. @default 32 */
  maxJsonDepth?: number;
  /** Open WebSocket connections at most; further upgrades get 503. 0 disables. @default 10000 */
  maxConnections?: number;
  /** Open WebSocket connections per client address; further upgrades get 429. 0 disables. @default 500 */
  maxConnectionsPerIp?: number;
  /** Sustained messages per second per WebSocket; more get RATE_LIMITED. 0 disables. @default 1000 */
  messagesPerSecond?: number;
  /** Messages a WebSocket may send at once before `messagesPerSecond` applies. @default 5000 */
  messageBurst?: number;
  /**
   * Sustained messages per second per client address, over WebSocket frames,
   * upgrades and HTTP requests together (429 with Retry-After over HTTP).
   * 0 disables. @default 5000
   */
  messagesPerSecondPerIp?: number;
  /** Messages a client address may send at once before `messagesPerSecondPerIp` applies. @default 20000 */
  messageBurstPerIp?: number;
  /**
   * Above this many bytes queued on a socket, live pushes stop being queued
   * for it; once its buffer drains, it is sent what it missed from the
   * stored log, then goes live again (docs/protocol.md §9). Nothing is skipped
   * and the client need not do anything. @default 8388608 (8 MiB)
   */
  pushHighWaterBytes?: number;
  /** Above this many bytes queued on a socket, replies and snapshot chunks wait for it to drain. @default 1048576 (1 MiB) */
  sendHighWaterBytes?: number;
  /** A socket with more than this many bytes queued for `sendHardLimitMs` is closed with 1013. @default 16777216 (16 MiB) */
  sendHardLimitBytes?: number;
  /**
   * How long a socket may stay over `sendHardLimitBytes` (WebSocket), or an
   * HTTP snapshot may wait for its client to read, before it is closed. 0
   * disables. @default 30000
   */
  sendHardLimitMs?: number;
  /**
   * Bearer tokens that `GET <path>/status` and `GET <path>/metrics` require
   * (`Authorization: Bearer <token>`, 401 AUTH_FAILED without one). Empty
   * leaves them open, as health checks and scrapers usually need; they never
   * show tokens or data, only counts. @default []
   */
  statusTokens?: string[];
  /**
   * Take the client address from the last `X-Forwarded-For` entry (the one
   * your reverse proxy appended) instead of the socket, for the per-address
   * limits and `remoteAddress` in hooks. Only enable behind a proxy that sets
   * it. @default false
   */
  trustProxy?: boolean;
  /**
   * Archive every database in S3 (or a compatible store), restore databases
   * that are not on disk from it, and evict idle ones from disk. Off without
   * it (and without `archive`): one local disk holds everything.
   */
  s3?: S3Options;
  /** An archive implementation to use instead of `s3` (e.g. a directory archive). */
  archive?: Archive;
  /**
   * `async`: a write is acknowledged once stored locally and archived right
   * behind it (the store is the outbox: a crash or an S3 outage loses
   * nothing acknowledged). `ack`: acknowledged only once its batch is in the
   * archive; while S3 is unreachable writes get STORAGE_UNAVAILABLE (503).
   * @default 'async'
   */
  s3Durability?: 'async' | 'ack';
  /** With an archive, a database idle for `diskEvictionIdleMs` whose archive is complete is removed from disk. @default true */
  diskEviction?: boolean;
  /** Idle time before eviction, in ms. @default 3600000 */
  diskEvictionIdleMs?: number;
  /** A database that changed gets an archive snapshot at least this often, in ms. @default 300000 */
  snapshotIntervalMs?: number;
  /**
   * ...or once this many changes were committed since its last one, and at
   * least half the database's size (a snapshot streams the whole
   * database; its batches carry the changes meanwhile). @default 1000
   */
  snapshotChanges?: number;
  /** Archive snapshots kept per database. @default 5 */
  snapshotsKept?: number;
  /**
   * Join a cluster: a Redis URL (`redis://host:6379`). Every database's
   * writes then go through a shared log (a Redis Stream) that every node
   * applies, so any node serves any database. Without it the coordinator is
   * a single node.
   */
  redis?: string;
  /** This node's name in a cluster (logs, `/status`). @default host name, pid and a random suffix */
  nodeId?: string;
  /**
   * In a cluster, how long a database's log keeps an entry, in ms. Older
   * entries are trimmed, but with an archive only once archived: a node whose
   * copy is older than the log (it was away, or it is new) then restores it
   * from the archive and follows the log from there. Without an archive such a
   * node cannot serve that database (STORAGE_UNAVAILABLE): give a cluster an
   * archive, or a retention longer than any node stays away. Redis holds about
   * this much of the write volume. @default 86400000 (24 h)
   */
  clusterLogRetentionMs?: number;
  /**
   * In a cluster, how often a node shares its per-address usage (open
   * connections, rate tokens taken) through Redis and reads the other nodes',
   * in ms: `maxConnectionsPerIp` and `messagesPerSecondPerIp` then hold for
   * the cluster as a whole, about one to two intervals late (README "Scale
   * out"). 0 keeps every limit per node. @default 1000
   */
  clusterLimitsSyncMs?: number;
  /**
   * Serve the live status page at `<path>/dashboard` (README "Dashboard");
   * false removes its routes (404). @default true
   */
  dashboard?: boolean;
  /**
   * Who may see the status page: `'off'` anyone; `'token'` a token of
   * `authTokens` or `statusTokens`, sent as `?token=` or `Authorization:
   * Bearer` (401 AUTH_FAILED without one); or a function of the request
   * that returns true to let it through. Its script and style sheet hold no
   * figures and are served to anyone.
   * @default 'off' unless authMode is 'token-whitelist', statusTokens is set or hooks.onAuthenticate is given: then 'token'
   */
  dashboardAuth?: DashboardAuth;
  /** Prometheus registry for the metrics. @default a new Registry */
  registry?: Registry;
  /** Wall clock in ms, for tests. @default Date.now */
  now?: () => number;
}

/** Where the S3 archive is (the `S3_*` settings of the standalone server). */
export interface S3Options {
  bucket: string;
  /** @default 'us-east-1' */
  region?: string;
  /** For S3-compatible stores (MinIO, R2, ...): e.g. `http://127.0.0.1:9000`. */
  endpoint?: string;
  /** Without both keys, the AWS SDK's default credential chain is used. */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Path-style URLs (most S3-compatible stores need them). @default false */
  forcePathStyle?: boolean;
  /** Prefix of every key the coordinator writes. @default '' */
  keyPrefix?: string;
}

/** Options whose value is plain data: described by OPTION_SPECS, defaulted and checked from it. */
export type PlainOptionKey = Exclude<keyof SyncRouterOptions, 'hooks' | 'registry' | 'now' | 's3' | 'archive' | 'redis' | 'nodeId'>;

/** The checked, complete, frozen configuration the layers read. */
export type Config = { readonly [K in PlainOptionKey]-?: NonNullable<SyncRouterOptions[K]> } & {
  readonly s3?: Readonly<S3Options>;
  readonly archive?: Archive;
  readonly redis?: string;
  readonly nodeId: string;
  readonly hooks: CoordinatorHooks;
  readonly registry: Registry;
  readonly now: () => number;
};

/**
 * How one plain option is defaulted and checked. Its type and its doc are
 * those of SyncRouterOptions; OPTION_SPECS must have an entry for every
 * plain option (a missing one does not compile), and DEFAULTS, Config,
 * parseOptions and the config file's `router` section all derive from it.
 */
export interface OptionSpec<T> {
  readonly default: T;
  /** What a valid value is, for messages: `an integer >= 1`. */
  readonly expected: string;
  /** The value to keep (possibly normalized), or undefined when `value` is invalid. */
  readonly check: (value: unknown) => T | undefined;
  /** The lowest accepted value of an integer option (the CLI states it in its messages). */
  readonly min?: number;
  /** Holds secrets: a refusal describes the value's shape, never its text. */
  readonly secret?: boolean;
}

/** setTimeout fires at once for delays beyond 2^31-1 ms, so longer ones are refused. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function int(fallback: number, min: number, max = Number.MAX_SAFE_INTEGER, unit = ''): OptionSpec<number> {
  const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
  return {
    default: fallback, min, expected: `an integer ${range}${unit}`,
    check: (v) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max ? v : undefined),
  };
}

function timer(fallback: number): OptionSpec<number> {
  return int(fallback, 0, MAX_TIMER_MS, ' (ms; 0 disables)');
}

function bool(fallback: boolean): OptionSpec<boolean> {
  return { default: fallback, expected: 'true or false', check: (v) => (typeof v === 'boolean' ? v : undefined) };
}

function text(fallback: string): OptionSpec<string> {
  return { default: fallback, expected: 'a non-empty string', check: (v) => (typeof v === 'string' && v.length > 0 ? v : undefined) };
}

/**
 * A list of tokens. One with whitespace at either end could never be
 * presented over HTTP, where `Authorization: Bearer` is read trimmed.
 */
function tokens(): OptionSpec<string[]> {
  return {
    default: [], expected: 'an array of non-empty strings without whitespace at either end', secret: true,
    check: (v) => (Array.isArray(v) && v.every((t) => typeof t === 'string' && t.length > 0 && t.trim() === t) ? Object.freeze([...v]) as string[] : undefined),
  };
}

/** What a mount path may be: "/" or plain segments (Express 5 gives ":", "*", "(", "{" … a meaning). */
export const MOUNT_PATH_EXPECTED = 'a path like "/sync" (starts with "/", no trailing "/", segments of letters, digits, "-", ".", "_", "~")';

/** The mount path, or undefined when it is not one (see MOUNT_PATH_EXPECTED). */
export function checkMountPath(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const plain = value === '/' || /^(\/[A-Za-z0-9._~-]+)+$/.test(value);
  return plain && !value.split('/').some((segment) => segment === '.' || segment === '..') ? value : undefined;
}

/** Default and check of every plain option, in the order of SyncRouterOptions. */
export const OPTION_SPECS: { readonly [K in PlainOptionKey]-?: OptionSpec<NonNullable<SyncRouterOptions[K]>> } = Object.freeze({
  path: { default: '/sync', expected: MOUNT_PATH_EXPECTED, check: checkMountPath },
  dataDir: text('./.data'),
  authMode: {
    default: 'none', expected: '"none" or "token-whitelist"',
    check: (v: unknown) => (v === 'none' || v === 'token-whitelist' ? v : undefined),
  },
  authTokens: tokens(),
  corsOrigin: {
    default: true, expected: 'a boolean, an origin string or an array of origins',
    check: (v: unknown) => (typeof v === 'boolean' || typeof v === 'string' || (Array.isArray(v) && v.every((x) => typeof x === 'string')) ? v as CorsOrigin : undefined),
  },
  batchSize: int(1000, 1),
  retentionHorizonMs: int(30 * 24 * 60 * 60 * 1000, 1, Number.MAX_SAFE_INTEGER, ' (ms)'),
  sweepIntervalMs: timer(60 * 60 * 1000),
  allowResurrection: bool(false),
  maxDriftMs: int(60_000, 0, Number.MAX_SAFE_INTEGER, ' (ms)'),
  snapshotChunkSize: int(1000, 1),
  syncWrites: bool(false),
  maxOpenStores: int(100, 1),
  storeIdleMs: timer(5 * 60 * 1000),
  storeWriteBufferBytes: int(4 * 1024 * 1024, 64 * 1024, 1024 * 1024 * 1024, ' (bytes)'),
  // At most 1 GiB: twice it (the default maxInboundBytes) must stay an exact integer, and no frame
  // near it could be decoded anyway (V8 strings stop at 2^29 - 24 characters).
  maxMessageBytes: int(64 * 1024 * 1024, 1024, 1024 * 1024 * 1024, ' (bytes)'),
  // Derived from maxMessageBytes when not given (see parseOptions); this is the value with the default.
  maxInboundBytes: int(2 * 64 * 1024 * 1024, 1024),
  handshakeTimeoutMs: timer(10_000),
  heartbeatIntervalMs: timer(30_000),
  maxChangesPerMessage: int(50_000, 1),
  maxJsonDepth: int(32, 8),
  maxConnections: int(10_000, 0),
  maxConnectionsPerIp: int(500, 0),
  messagesPerSecond: int(1000, 0),
  messageBurst: int(5000, 1),
  messagesPerSecondPerIp: int(5000, 0),
  messageBurstPerIp: int(20_000, 1),
  pushHighWaterBytes: int(8 * 1024 * 1024, 1024),
  sendHighWaterBytes: int(1024 * 1024, 1024),
  sendHardLimitBytes: int(16 * 1024 * 1024, 1024),
  sendHardLimitMs: timer(30_000),
  statusTokens: tokens(),
  trustProxy: bool(false),
  s3Durability: {
    default: 'async', expected: '"async" or "ack"',
    check: (v: unknown) => (v === 'async' || v === 'ack' ? v : undefined),
  },
  diskEviction: bool(true),
  diskEvictionIdleMs: int(60 * 60 * 1000, 0, MAX_TIMER_MS, ' (ms)'),
  snapshotIntervalMs: int(5 * 60 * 1000, 1000, MAX_TIMER_MS, ' (ms)'),
  snapshotChanges: int(1000, 1),
  snapshotsKept: int(5, 1),
  clusterLogRetentionMs: int(24 * 60 * 60 * 1000, 1000, Number.MAX_SAFE_INTEGER, ' (ms)'),
  clusterLimitsSyncMs: {
    // Below 10 ms a node would mostly be talking to Redis.
    default: 1000, min: 0, expected: '0 (limits per node) or an integer from 10 to 60000 (ms)',
    check: (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && (v === 0 || (v >= 10 && v <= 60_000)) ? v : undefined),
  },
  dashboard: bool(true),
  // Derived from the other auth settings when not given (see parseOptions); this is the value with the defaults.
  dashboardAuth: {
    default: 'off', expected: '"off", "token" or a function (ctx) => boolean',
    check: (v: unknown) => (v === 'off' || v === 'token' || typeof v === 'function' ? v as DashboardAuth : undefined),
  },
});

type Defaults = { readonly [K in PlainOptionKey]-?: NonNullable<SyncRouterOptions[K]> };

/** Defaults of every plain option. */
export const DEFAULTS: Defaults = Object.freeze(
  Object.fromEntries(Object.entries(OPTION_SPECS).map(([key, spec]) => [key, spec.default])) as unknown as Defaults,
);

const KNOWN = new Set<string>([...Object.keys(OPTION_SPECS), 'hooks', 'registry', 'now', 's3', 'archive', 'redis', 'nodeId']);

const HOOK_NAMES = ['onAuthenticate', 'onAuthorize', 'onBeforeApplyChanges', 'onAfterApplyChanges', 'onClientConnect', 'onClientDisconnect'];

/**
 * Applies defaults and checks every option. Misuse (an unknown key, a wrong
 * type, an out-of-range number) is a TypeError that names the option, the
 * value and what to pass instead.
 */
export function parseOptions<I>(options: SyncRouterOptions<I> = {}): Config {
  if (typeof options !== 'object' || options === null) throw new TypeError('createSyncRouter(options): options must be an object');
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) {
      const hint = [...KNOWN].find((k) => k.toLowerCase() === key.toLowerCase());
      throw new TypeError(`Unknown option "${key}"${hint ? ` (did you mean "${hint}"?)` : ''}`);
    }
  }
  const o = options as Record<string, unknown>;
  const plain: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(OPTION_SPECS) as [PlainOptionKey, OptionSpec<unknown>][]) {
    const raw = o[key];
    if (raw === undefined) {
      plain[key] = spec.default;
      continue;
    }
    const value = spec.check(raw);
    if (value === undefined) throw new TypeError(`Option "${key}" must be ${spec.expected}, got ${spec.secret ? describeValue(raw) : JSON.stringify(raw) ?? String(raw)}`);
    plain[key] = value;
  }
  const maxMessageBytes = plain.maxMessageBytes as number;
  if (o.maxInboundBytes === undefined) plain.maxInboundBytes = 2 * maxMessageBytes;
  if ((plain.maxInboundBytes as number) < maxMessageBytes) {
    throw new TypeError(`Option "maxInboundBytes" must be at least maxMessageBytes (${maxMessageBytes}) so one largest message fits, got ${String(plain.maxInboundBytes)}`);
  }
  if (plain.authMode === 'token-whitelist' && (plain.authTokens as string[]).length === 0 && !(o.hooks as CoordinatorHooks | undefined)?.onAuthenticate) {
    throw new TypeError('Option "authTokens" must list at least one token when authMode is "token-whitelist"');
  }
  const hooks = (o.hooks ?? {}) as CoordinatorHooks;
  if (typeof hooks !== 'object' || hooks === null) throw new TypeError('Option "hooks" must be an object of hook functions');
  for (const [name, fn] of Object.entries(hooks)) {
    if (!HOOK_NAMES.includes(name)) throw new TypeError(`Unknown hook "${name}"; hooks are ${HOOK_NAMES.join(', ')}`);
    if (fn !== undefined && typeof fn !== 'function') throw new TypeError(`Hook "${name}" must be a function`);
  }
  const statusTokens = plain.statusTokens as string[];
  // The page shows what /status shows and more: closed by default when anything else is.
  if (o.dashboardAuth === undefined) {
    const guarded = plain.authMode === 'token-whitelist' || statusTokens.length > 0 || typeof hooks.onAuthenticate === 'function';
    plain.dashboardAuth = guarded ? 'token' : 'off';
  } else if (plain.dashboardAuth === 'token' && (plain.authTokens as string[]).length === 0 && statusTokens.length === 0) {
    throw new TypeError('Option "dashboardAuth" is "token", but authTokens and statusTokens are empty, so no token could open the dashboard: list tokens in statusTokens, or pass a function or "off"');
  }
  const registry = o.registry ?? new Registry();
  if (!(registry instanceof Registry)) throw new TypeError('Option "registry" must be a prom-client Registry');
  const now = o.now ?? Date.now;
  if (typeof now !== 'function') throw new TypeError('Option "now" must be a function returning ms since the epoch');
  const s3 = o.s3 === undefined ? undefined : checkS3(o.s3);
  const archive = o.archive as Archive | undefined;
  if (archive !== undefined && (typeof archive !== 'object' || archive === null || typeof archive.put !== 'function' || typeof archive.list !== 'function')) {
    throw new TypeError('Option "archive" must be an Archive (put, get, list, delete, close)');
  }
  if (s3 && archive) throw new TypeError('Options "s3" and "archive" exclude each other: give one archive');
  const redis = o.redis === undefined ? undefined : checkRedisUrl(o.redis);
  if (redis && (s3 || archive) && plain.s3Durability === 'ack') {
    throw new TypeError(
      'Options "redis" and "s3Durability": "ack" exclude each other: in a cluster a write is acknowledged once it is in the Redis log ' +
        '(made durable by AOF and replicas, see the README), and the archive follows the log; use "async"',
    );
  }
  const nodeId = o.nodeId === undefined ? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}` : checkNodeId(o.nodeId);
  return Object.freeze({
    ...plain, ...(s3 ? { s3 } : {}), ...(archive ? { archive } : {}), ...(redis ? { redis } : {}), nodeId, hooks: Object.freeze({ ...hooks }), registry, now,
  }) as Config;
}

/** What option "redis" takes. */
export const REDIS_URL_EXPECTED = 'a redis:// or rediss:// URL';
/** What option "nodeId" takes. */
export const NODE_ID_EXPECTED = '1-128 printable characters without spaces';

/**
 * Checks option `redis` (also the CLI's `--redis-url`). Throws TypeError
 * naming the option; the message never holds the URL's password.
 */
export function checkRedisUrl(value: unknown): string {
  if (typeof value === 'string' && /^rediss?:\/\/\S+$/.test(value)) return value;
  const shown = typeof value === 'string' ? JSON.stringify(value.replace(/\/\/[^@/]*@/, '//***@')) : typeof value;
  throw new TypeError(`Option "redis" must be ${REDIS_URL_EXPECTED}, got ${shown}`);
}

/** Checks option `nodeId` (also the CLI's `--node-id`). Throws TypeError naming the option. */
export function checkNodeId(value: unknown): string {
  if (typeof value === 'string' && /^[\x21-\x7e]{1,128}$/.test(value)) return value;
  throw new TypeError(`Option "nodeId" must be ${NODE_ID_EXPECTED}, got ${JSON.stringify(value)}`);
}

const S3_KEYS = new Set(['bucket', 'region', 'endpoint', 'accessKeyId', 'secretAccessKey', 'forcePathStyle', 'keyPrefix']);

/** Checks the `s3` option (secrets are never echoed in messages). */
export function checkS3(value: unknown): Readonly<S3Options> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError('Option "s3" must be an object { bucket, region?, endpoint?, accessKeyId?, secretAccessKey?, forcePathStyle?, keyPrefix? }');
  const o = value as Record<string, unknown>;
  for (const key of Object.keys(o)) if (!S3_KEYS.has(key)) throw new TypeError(`Unknown option "s3.${key}"; s3 takes ${[...S3_KEYS].join(', ')}`);
  if (typeof o.bucket !== 'string' || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(o.bucket)) {
    throw new TypeError(`Option "s3.bucket" must be a bucket name (3-63 characters of a-z, 0-9, ".", "-"), got ${JSON.stringify(o.bucket)}`);
  }
  for (const key of ['region', 'endpoint', 'keyPrefix'] as const) {
    if (o[key] !== undefined && typeof o[key] !== 'string') throw new TypeError(`Option "s3.${key}" must be a string, got ${JSON.stringify(o[key])}`);
  }
  if (o.region === '') throw new TypeError('Option "s3.region" must be a region name such as "eu-west-1", got ""');
  const prefix = o.keyPrefix as string | undefined;
  if (prefix && archiveKeyProblem(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix) !== undefined) {
    throw new TypeError(`Option "s3.keyPrefix" must be "" or "/"-separated segments such as "sync/" (no leading or doubled "/", no "." or ".." segment, no control characters), got ${JSON.stringify(prefix)}`);
  }
  if (typeof o.endpoint === 'string' && !/^https?:\/\/[^\s/]+/.test(o.endpoint)) throw new TypeError(`Option "s3.endpoint" must be an http(s) URL, got ${JSON.stringify(o.endpoint)}`);
  for (const key of ['accessKeyId', 'secretAccessKey'] as const) {
    if (o[key] !== undefined && (typeof o[key] !== 'string' || o[key] === '')) throw new TypeError(`Option "s3.${key}" must be a non-empty string`);
  }
  if ((o.accessKeyId === undefined) !== (o.secretAccessKey === undefined)) throw new TypeError('Options "s3.accessKeyId" and "s3.secretAccessKey" go together (or neither, for the default credential chain)');
  if (o.forcePathStyle !== undefined && typeof o.forcePathStyle !== 'boolean') throw new TypeError(`Option "s3.forcePathStyle" must be true or false, got ${JSON.stringify(o.forcePathStyle)}`);
  return Object.freeze({ ...(o as unknown as S3Options) });
}

/**
 * Configuration of the standalone server (`createCoordinatorServer`, the
 * CLI): where to listen plus the router options that can come from the CLI,
 * the environment or a config file.
 */
export interface CoordinatorConfig {
  /** @default '0.0.0.0' */
  host: string;
  /** 0 picks a free port. @default 3000 */
  port: number;
  /** Mount path of the router. @default '/sync' */
  basePath: string;
  /** @default './.data' */
  dataDir: string;
  /** @default true */
  corsOrigin: CorsOrigin;
  /** @default 'none' */
  authMode: AuthMode;
  /** @default [] */
  authTokens: string[];
  /** @default 2592000000 (30 days) */
  retentionHorizonMs: number;
  /** @default 1000 */
  batchSize: number;
  /**
   * Archive every database in this S3 bucket (`S3_*` settings); absent, one
   * local disk holds everything. See SyncRouterOptions.s3.
   */
  s3?: S3Options;
  /** `async` or `ack` (see SyncRouterOptions.s3Durability); only with `s3`. @default 'async' */
  s3Durability: 'async' | 'ack';
  /** Remove idle, fully archived databases from disk; only with `s3`. @default true */
  diskEviction: boolean;
  /** Idle time before eviction, in ms. @default 3600000 (1 h) */
  diskEvictionIdleMs: number;
  /** Join a cluster through this Redis (`SYNC_REDIS_URL`, `--redis-url`); see SyncRouterOptions.redis. @default none: a single node */
  redisUrl?: string;
  /** This node's name in a cluster (`SYNC_NODE_ID`, `--node-id`). @default host name, pid and a random suffix */
  nodeId?: string;
  /** Further router options (limits, intervals, snapshots), passed through as they are. */
  router?: Omit<SyncRouterOptions, 'path' | 'dataDir' | 'corsOrigin' | 'authMode' | 'authTokens' | 'retentionHorizonMs' | 'batchSize' | 'hooks' | 's3' | 's3Durability' | 'diskEviction' | 'diskEvictionIdleMs' | 'redis' | 'nodeId'>;
}

/** Defaults of the standalone server. */
export const SERVER_DEFAULTS: Readonly<CoordinatorConfig> = Object.freeze({
  host: '0.0.0.0',
  port: 3000,
  basePath: DEFAULTS.path,
  dataDir: DEFAULTS.dataDir,
  corsOrigin: DEFAULTS.corsOrigin,
  authMode: DEFAULTS.authMode,
  authTokens: [],
  retentionHorizonMs: DEFAULTS.retentionHorizonMs,
  batchSize: DEFAULTS.batchSize,
  s3Durability: DEFAULTS.s3Durability,
  diskEviction: DEFAULTS.diskEviction,
  diskEvictionIdleMs: DEFAULTS.diskEvictionIdleMs,
});
