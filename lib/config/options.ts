import { Registry } from 'prom-client';
import type { CoordinatorHooks } from '../service/hooks.js';

/** How clients prove who they are. */
export type AuthMode = 'none' | 'token-whitelist';

/** CORS origin setting: `true` reflects any origin, `false` disables CORS headers. */
export type CorsOrigin = boolean | string | string[];

/** Public options of `createSyncRouter()`. Every field is optional. */
export interface SyncRouterOptions {
  /** Where the router is mounted; WebSocket upgrades are accepted at `<path>/ws`. @default '/sync' */
  path?: string;
  /** Directory with one LevelDB store per database. @default './.data' */
  dataDir?: string;
  /** @default 'none' */
  authMode?: AuthMode;
  /** Accepted bearer tokens for `token-whitelist`. @default [] */
  authTokens?: string[];
  /** Lifecycle and policy hooks, all optional and async. */
  hooks?: CoordinatorHooks;
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
  /** Largest accepted WebSocket frame or HTTP body, in bytes. @default 16777216 (16 MiB) */
  maxMessageBytes?: number;
  /** Close sockets that have not completed a handshake within this time, in ms. @default 10000 */
  handshakeTimeoutMs?: number;
  /** Interval of server WebSocket pings; a socket that misses one is terminated. 0 disables. @default 30000 */
  heartbeatIntervalMs?: number;
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
  readonly handshakeTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
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
  maxMessageBytes: 16 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  heartbeatIntervalMs: 30_000,
});

const KNOWN = new Set<string>([...Object.keys(DEFAULTS), 'hooks', 'registry', 'now']);

const HOOK_NAMES = ['onAuthenticate', 'onAuthorize', 'onBeforeApplyChanges', 'onAfterApplyChanges', 'onClientConnect', 'onClientDisconnect'];

/**
 * Applies defaults and checks every option. Misuse (an unknown key, a wrong
 * type, an out-of-range number) is a TypeError that names the option, the
 * value and what to pass instead.
 */
export function parseOptions(options: SyncRouterOptions = {}): Config {
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
    maxMessageBytes: intOption(o, 'maxMessageBytes', DEFAULTS.maxMessageBytes, 1024),
    handshakeTimeoutMs: intOption(o, 'handshakeTimeoutMs', DEFAULTS.handshakeTimeoutMs, 0),
    heartbeatIntervalMs: intOption(o, 'heartbeatIntervalMs', DEFAULTS.heartbeatIntervalMs, 0),
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
