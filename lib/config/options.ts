import { Registry } from 'prom-client';
import type { CoordinatorHooks } from '../service/hooks.js';

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
   * Largest accepted WebSocket frame or HTTP body, in bytes; a larger frame
   * closes the socket with 1009, a larger body gets 413. A real client's
   * batch is 1,000 changes whatever their size (docs/protocol.md §8) and it cannot
   * split a refused one, so this must hold its biggest batch.
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
  /** Close sockets that have not completed a handshake within this time, in ms. @default 10000 */
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
   * Take the client address from the last `X-Forwarded-For` entry (the one
   * your reverse proxy appended) instead of the socket, for the per-address
   * limits and `remoteAddress` in hooks. Only enable behind a proxy that sets
   * it. @default false
   */
  trustProxy?: boolean;
  /** Prometheus registry for the metrics. @default a new Registry */
  registry?: Registry;
  /** Wall clock in ms, for tests. @default Date.now */
  now?: () => number;
}

/** The checked, complete, frozen configuration the layers read. */
export interface Config {
  readonly path: string;
  readonly dataDir: string;
  readonly authMode: AuthMode;
  readonly authTokens: readonly string[];
  readonly hooks: CoordinatorHooks;
  readonly corsOrigin: CorsOrigin;
  readonly batchSize: number;
  readonly retentionHorizonMs: number;
  readonly sweepIntervalMs: number;
  readonly allowResurrection: boolean;
  readonly maxDriftMs: number;
  readonly snapshotChunkSize: number;
  readonly syncWrites: boolean;
  readonly maxOpenStores: number;
  readonly storeIdleMs: number;
  readonly maxMessageBytes: number;
  readonly maxInboundBytes: number;
  readonly handshakeTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly maxChangesPerMessage: number;
  readonly maxJsonDepth: number;
  readonly maxConnections: number;
  readonly maxConnectionsPerIp: number;
  readonly messagesPerSecond: number;
  readonly messageBurst: number;
  readonly messagesPerSecondPerIp: number;
  readonly messageBurstPerIp: number;
  readonly pushHighWaterBytes: number;
  readonly sendHighWaterBytes: number;
  readonly sendHardLimitBytes: number;
  readonly sendHardLimitMs: number;
  readonly trustProxy: boolean;
  readonly registry: Registry;
  readonly now: () => number;
}

/** Defaults of every plain option. */
export const DEFAULTS = Object.freeze({
  path: '/sync',
  dataDir: './.data',
  authMode: 'none' as AuthMode,
  authTokens: [] as readonly string[],
  corsOrigin: true as CorsOrigin,
  batchSize: 1000,
  retentionHorizonMs: 30 * 24 * 60 * 60 * 1000,
  sweepIntervalMs: 60 * 60 * 1000,
  allowResurrection: false,
  maxDriftMs: 60_000,
  snapshotChunkSize: 1000,
  syncWrites: false,
  maxOpenStores: 100,
  storeIdleMs: 5 * 60 * 1000,
  maxMessageBytes: 64 * 1024 * 1024,
  /** With the default maxMessageBytes; otherwise 2 × the maxMessageBytes given. */
  maxInboundBytes: 2 * 64 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  heartbeatIntervalMs: 30_000,
  maxChangesPerMessage: 50_000,
  maxJsonDepth: 32,
  maxConnections: 10_000,
  maxConnectionsPerIp: 500,
  messagesPerSecond: 1000,
  messageBurst: 5000,
  messagesPerSecondPerIp: 5000,
  messageBurstPerIp: 20_000,
  pushHighWaterBytes: 8 * 1024 * 1024,
  sendHighWaterBytes: 1024 * 1024,
  sendHardLimitBytes: 16 * 1024 * 1024,
  sendHardLimitMs: 30_000,
  trustProxy: false,
});

const KNOWN = new Set<string>([...Object.keys(DEFAULTS), 'hooks', 'registry', 'now']);

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
  const path = stringOption(o, 'path', DEFAULTS.path);
  if (!path.startsWith('/') || (path.length > 1 && path.endsWith('/'))) {
    throw new TypeError(`Option "path" must start with "/" and not end with "/", got ${JSON.stringify(path)}`);
  }
  const authMode = stringOption(o, 'authMode', DEFAULTS.authMode) as AuthMode;
  if (authMode !== 'none' && authMode !== 'token-whitelist') {
    throw new TypeError(`Option "authMode" must be "none" or "token-whitelist", got ${JSON.stringify(authMode)}`);
  }
  const authTokens = o.authTokens ?? DEFAULTS.authTokens;
  if (!Array.isArray(authTokens) || authTokens.some((t) => typeof t !== 'string' || t.length === 0)) {
    throw new TypeError('Option "authTokens" must be an array of non-empty strings');
  }
  if (authMode === 'token-whitelist' && authTokens.length === 0 && !(o.hooks as CoordinatorHooks | undefined)?.onAuthenticate) {
    throw new TypeError('Option "authTokens" must list at least one token when authMode is "token-whitelist"');
  }
  const hooks = (o.hooks ?? {}) as CoordinatorHooks;
  if (typeof hooks !== 'object' || hooks === null) throw new TypeError('Option "hooks" must be an object of hook functions');
  for (const [name, fn] of Object.entries(hooks)) {
    if (!HOOK_NAMES.includes(name)) throw new TypeError(`Unknown hook "${name}"; hooks are ${HOOK_NAMES.join(', ')}`);
    if (fn !== undefined && typeof fn !== 'function') throw new TypeError(`Hook "${name}" must be a function`);
  }
  const corsOrigin = o.corsOrigin ?? DEFAULTS.corsOrigin;
  if (!(typeof corsOrigin === 'boolean' || typeof corsOrigin === 'string' || (Array.isArray(corsOrigin) && corsOrigin.every((x) => typeof x === 'string')))) {
    throw new TypeError('Option "corsOrigin" must be a boolean, an origin string or an array of origins');
  }
  const registry = o.registry ?? new Registry();
  if (!(registry instanceof Registry)) throw new TypeError('Option "registry" must be a prom-client Registry');
  const now = o.now ?? Date.now;
  if (typeof now !== 'function') throw new TypeError('Option "now" must be a function returning ms since the epoch');
  const maxMessageBytes = intOption(o, 'maxMessageBytes', DEFAULTS.maxMessageBytes, 1024);
  const maxInboundBytes = intOption(o, 'maxInboundBytes', 2 * maxMessageBytes, 1024);
  if (maxInboundBytes < maxMessageBytes) {
    throw new TypeError(`Option "maxInboundBytes" must be at least maxMessageBytes (${maxMessageBytes}) so one largest message fits, got ${maxInboundBytes}`);
  }

  return Object.freeze({
    path,
    dataDir: stringOption(o, 'dataDir', DEFAULTS.dataDir),
    authMode,
    authTokens: Object.freeze([...authTokens]),
    hooks: Object.freeze({ ...hooks }),
    corsOrigin,
    batchSize: intOption(o, 'batchSize', DEFAULTS.batchSize, 1),
    retentionHorizonMs: intOption(o, 'retentionHorizonMs', DEFAULTS.retentionHorizonMs, 1),
    sweepIntervalMs: intOption(o, 'sweepIntervalMs', DEFAULTS.sweepIntervalMs, 0),
    allowResurrection: boolOption(o, 'allowResurrection', DEFAULTS.allowResurrection),
    maxDriftMs: intOption(o, 'maxDriftMs', DEFAULTS.maxDriftMs, 0),
    snapshotChunkSize: intOption(o, 'snapshotChunkSize', DEFAULTS.snapshotChunkSize, 1),
    syncWrites: boolOption(o, 'syncWrites', DEFAULTS.syncWrites),
    maxOpenStores: intOption(o, 'maxOpenStores', DEFAULTS.maxOpenStores, 1),
    storeIdleMs: intOption(o, 'storeIdleMs', DEFAULTS.storeIdleMs, 0),
    maxMessageBytes,
    maxInboundBytes,
    handshakeTimeoutMs: timerOption(o, 'handshakeTimeoutMs', DEFAULTS.handshakeTimeoutMs),
    heartbeatIntervalMs: timerOption(o, 'heartbeatIntervalMs', DEFAULTS.heartbeatIntervalMs),
    maxChangesPerMessage: intOption(o, 'maxChangesPerMessage', DEFAULTS.maxChangesPerMessage, 1),
    maxJsonDepth: intOption(o, 'maxJsonDepth', DEFAULTS.maxJsonDepth, 8),
    maxConnections: intOption(o, 'maxConnections', DEFAULTS.maxConnections, 0),
    maxConnectionsPerIp: intOption(o, 'maxConnectionsPerIp', DEFAULTS.maxConnectionsPerIp, 0),
    messagesPerSecond: intOption(o, 'messagesPerSecond', DEFAULTS.messagesPerSecond, 0),
    messageBurst: intOption(o, 'messageBurst', DEFAULTS.messageBurst, 1),
    messagesPerSecondPerIp: intOption(o, 'messagesPerSecondPerIp', DEFAULTS.messagesPerSecondPerIp, 0),
    messageBurstPerIp: intOption(o, 'messageBurstPerIp', DEFAULTS.messageBurstPerIp, 1),
    pushHighWaterBytes: intOption(o, 'pushHighWaterBytes', DEFAULTS.pushHighWaterBytes, 1024),
    sendHighWaterBytes: intOption(o, 'sendHighWaterBytes', DEFAULTS.sendHighWaterBytes, 1024),
    sendHardLimitBytes: intOption(o, 'sendHardLimitBytes', DEFAULTS.sendHardLimitBytes, 1024),
    sendHardLimitMs: timerOption(o, 'sendHardLimitMs', DEFAULTS.sendHardLimitMs),
    trustProxy: boolOption(o, 'trustProxy', DEFAULTS.trustProxy),
    registry,
    now: now as () => number,
  });
}

function stringOption(o: Record<string, unknown>, key: string, fallback: string): string {
  const value = o[key] ?? fallback;
  if (typeof value !== 'string' || value.length === 0) throw new TypeError(`Option "${key}" must be a non-empty string, got ${JSON.stringify(value)}`);
  return value;
}

function intOption(o: Record<string, unknown>, key: string, fallback: number, min: number): number {
  const value = o[key] ?? fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new TypeError(`Option "${key}" must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** setTimeout fires at once for delays beyond 2^31-1 ms, so longer ones are refused. */
function timerOption(o: Record<string, unknown>, key: string, fallback: number): number {
  const value = intOption(o, key, fallback, 0);
  if (value > 2 ** 31 - 1) throw new TypeError(`Option "${key}" must be at most ${2 ** 31 - 1} ms, got ${value}`);
  return value;
}

function boolOption(o: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const value = o[key] ?? fallback;
  if (typeof value !== 'boolean') throw new TypeError(`Option "${key}" must be true or false, got ${JSON.stringify(value)}`);
  return value;
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
  /** Further router options (limits, intervals), passed through as they are. */
  router?: Omit<SyncRouterOptions, 'path' | 'dataDir' | 'corsOrigin' | 'authMode' | 'authTokens' | 'retentionHorizonMs' | 'batchSize' | 'hooks'>;
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
});
