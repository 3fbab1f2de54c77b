import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { describeValue } from '../errors.js';
import { logs } from '../log.js';
import {
  DEFAULTS, MOUNT_PATH_EXPECTED, OPTION_SPECS, SERVER_DEFAULTS, checkMountPath, checkNodeId, checkRedisUrl, checkS3,
  type AuthMode, type CoordinatorConfig, type CorsOrigin, type OptionSpec, type PlainOptionKey, type S3Options,
} from './options.js';

const log = logs.config;

/** File looked up in the working directory when no config file is named. */
const DEFAULT_CONFIG_FILE = 'sync-coordinator.json';

/**
 * Values that win over every other source (the CLI's flags, see
 * `parseCliOverrides`). `s3` may hold some fields only: each S3 field is
 * taken from the highest source that sets it.
 */
export type ConfigOverrides = Omit<Partial<CoordinatorConfig>, 's3'> & { s3?: Partial<S3Options> };

/** Arguments of `loadConfig`. */
export interface LoadConfigOptions {
  /** Values from the CLI (see `parseCliOverrides`); they win over everything else. `undefined` fields are ignored. */
  overrides?: ConfigOverrides;
  /** Environment to read `SYNC_*`, `S3_*` and `DISK_EVICTION_*` variables from. @default process.env */
  env?: Record<string, string | undefined>;
  /**
   * JSON config file, relative to `cwd`. When given it must exist; when not,
   * `sync-coordinator.json` in `cwd` is read only if it exists.
   */
  configFile?: string;
  /** Base for relative paths (`configFile`, `dataDir`). @default process.cwd() */
  cwd?: string;
  /**
   * Whether the configuration is for a server that will listen. False (the
   * CLI's restore and export) leaves out the warning about who can reach it.
   * @default true
   */
  serving?: boolean;
}

/**
 * A setting has a bad value. `message` is one line naming where the setting
 * came from (`SYNC_PORT`, `--port`, `sync-coordinator.json: port`) and the
 * offending value, so the CLI can print it as is.
 */
export class ConfigError extends Error {
  /** Where the value came from: an env var, a CLI flag, or `<file>: <key>`. */
  readonly setting: string;
  /** The offending value as it was given (raw text for env vars and flags). */
  readonly value: unknown;
  /** The message without the leading `<setting>: `, so a caller that knows the source better can rename it. */
  readonly problem: string;

  constructor(setting: string, value: unknown, problem: string, options?: { cause?: unknown }) {
    const oneLine = (text: string): string => text.replace(/\s*[\r\n]+\s*/g, ' ');
    // One line, always: the CLI prints the message verbatim as its only output.
    super(oneLine(`${setting}: ${problem}`), options);
    this.name = 'ConfigError';
    this.setting = setting;
    this.value = value;
    this.problem = oneLine(problem);
  }
}

/** The settings that have an env var, a CLI flag and a config file key. */
export type ConfigSettingKey = Exclude<keyof CoordinatorConfig, 'router' | 's3'>;

/** The fields of the `s3` setting, each with its own env var (`S3_*`), CLI flag (`--s3-*`) and config file key (`s3.<field>`). */
export type S3SettingKey = keyof S3Options;

/** Text forms of settings, keyed by setting, as CLI flags carry them. */
export type ConfigText = Partial<Record<ConfigSettingKey, string>> & { s3?: Partial<Record<S3SettingKey, string>> };

/** Thrown by the value checkers; turned into a ConfigError once the source is known. */
class Invalid extends Error {}

interface SettingSpec<K extends ConfigSettingKey> {
  readonly env: string;
  readonly flag: string;
  /** Parses the text form (env var, CLI flag). */
  readonly fromText: (text: string) => CoordinatorConfig[K];
  /** Checks a typed value (config file, programmatic overrides). */
  readonly fromValue: (value: unknown) => CoordinatorConfig[K];
  /** Values that must never be echoed in messages (tokens). */
  readonly secret?: boolean;
}

type SettingSpecs = { readonly [K in ConfigSettingKey]: SettingSpec<K> };

const PORT_EXPECTED = 'an integer 0-65535';
const HOST_EXPECTED = 'an IP address or a host name';
const CORS_EXPECTED = 'true, false, "*" or origins like "https://app.example.com"';
const AUTH_MODE_EXPECTED = '"none" or "token-whitelist"';

function got(value: unknown): string {
  return `got ${describeValue(value)}`;
}

function fail(expected: string, value: unknown): never {
  throw new Invalid(`expected ${expected}, ${got(value)}`);
}

function checkString(value: unknown, expected: string): string {
  if (typeof value !== 'string' || value.length === 0) fail(expected, value);
  return value;
}

function checkHost(value: unknown): string {
  const host = checkString(value, HOST_EXPECTED);
  if (isIP(host) !== 0) return host;
  // Underscores are tolerated because container service names use them.
  const label = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;
  const labels = host.split('.');
  if (host.length > 253 || !labels.every((part) => label.test(part))) fail(HOST_EXPECTED, value);
  // No top-level domain is all digits (RFC 3696 §2): "999.1.1.1" is a mistyped IPv4 address, not a name to look up.
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) fail(HOST_EXPECTED, value);
  return host;
}

function checkIntInRange(value: unknown, min: number, max: number, expected: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) fail(expected, value);
  return value;
}

function parseIntText(text: string, min: number, max: number, expected: string): number {
  // Number() alone would accept "", " 1", "1e3", "0x10" and "1.0".
  const value = Number(text);
  // The message quotes the text as typed, so a range error shows "65536" rather than 65536.
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(value) || value < min || value > max) fail(expected, text);
  return value;
}

/** The router's own rule (options.ts), so the CLI and createSyncRouter accept the same mount paths. */
function checkBasePath(value: unknown): string {
  return checkMountPath(value) ?? fail(MOUNT_PATH_EXPECTED, value);
}

/** An integer router option as text (env var, CLI flag), with the router's own minimum. */
function intSettingText(key: PlainOptionKey, unit = ''): (text: string) => number {
  const { min = 0 } = OPTION_SPECS[key];
  return (text) => parseIntText(text, min, Number.MAX_SAFE_INTEGER, `an integer >= ${min}${unit}`);
}

/** An integer router option as a value (config file, overrides), with the router's own minimum. */
function intSettingValue(key: PlainOptionKey, unit = ''): (value: unknown) => number {
  const { min = 0 } = OPTION_SPECS[key];
  return (value) => checkIntInRange(value, min, Number.MAX_SAFE_INTEGER, `an integer >= ${min}${unit}`);
}

function checkDataDir(value: unknown): string {
  const dir = checkString(value, 'a directory path');
  if (dir.includes('\0')) fail('a directory path', value);
  return dir;
}

function checkOrigin(value: unknown): string {
  // Browsers send the origin as scheme://host[:port] with no path; anything else would never match.
  // Custom schemes (capacitor://, app://) are allowed because app shells send them.
  if (typeof value !== 'string' || !/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#\s,]+$/.test(value)) fail(CORS_EXPECTED, value);
  return value;
}

function parseCorsText(text: string): CorsOrigin {
  if (text === 'true' || text === '*') return true;
  if (text === 'false') return false;
  return text.split(',').map((part) => checkOrigin(part.trim()));
}

function checkCors(value: unknown): CorsOrigin {
  if (typeof value === 'boolean') return value;
  if (value === '*') return true;
  if (typeof value === 'string') return [checkOrigin(value)];
  if (Array.isArray(value) && value.length > 0) return value.map(checkOrigin);
  fail(CORS_EXPECTED, value);
}

function checkAuthMode(value: unknown): AuthMode {
  if (value !== 'none' && value !== 'token-whitelist') fail(AUTH_MODE_EXPECTED, value);
  return value;
}

function checkTokens(tokens: readonly unknown[]): string[] {
  // The tokens are secrets: problems are reported by position only.
  tokens.forEach((token, i) => {
    const where = `token ${i + 1} of ${tokens.length}`;
    if (typeof token !== 'string') throw new Invalid(`${where} is not a string (${typeof token})`);
    if (token.length === 0) throw new Invalid(`${where} is empty`);
    if (/[\s,]/.test(token)) throw new Invalid(`${where} contains whitespace or a comma`);
  });
  return [...(tokens as string[])];
}

function checkTokenList(value: unknown): string[] {
  if (!Array.isArray(value)) throw new Invalid(`expected an array of token strings, got ${typeof value === 'string' ? 'a string' : describeValue(value)}`);
  return checkTokens(value);
}

const BOOL_EXPECTED = 'true or false (or 1 or 0)';

/** A switch as text. Empty is true: it is a flag given without a value (`--disk-eviction`); an empty env var never gets here (it means unset). */
function parseBoolText(text: string): boolean {
  const word = text.trim().toLowerCase();
  if (word === '' || word === 'true' || word === '1') return true;
  if (word === 'false' || word === '0') return false;
  fail(BOOL_EXPECTED, text);
}

/** A value checked by one of the router's own checkers (TypeError 'Option "x" must be X, got Y'), reported as 'expected X, got Y'. */
function byRouterRule<T>(check: (value: unknown) => T, value: unknown): T {
  try {
    return check(value);
  } catch (err) {
    if (err instanceof TypeError) throw new Invalid(err.message.replace(/^Option "[A-Za-z]+" must be /, 'expected '));
    throw err;
  }
}

/** A router option checked by the router's own rule (OPTION_SPECS), so the CLI and createSyncRouter accept the same values. */
function routerValue<K extends PlainOptionKey>(key: K): (value: unknown) => NonNullable<CoordinatorConfig[K & keyof CoordinatorConfig]> {
  const spec = OPTION_SPECS[key] as OptionSpec<unknown>;
  return (value) => (spec.check(value) ?? fail(spec.expected, value)) as NonNullable<CoordinatorConfig[K & keyof CoordinatorConfig]>;
}

/** An integer router option as text, checked by the router's own rule (its range, including any maximum). */
function routerIntText<K extends PlainOptionKey>(key: K): (text: string) => NonNullable<CoordinatorConfig[K & keyof CoordinatorConfig]> {
  const check = routerValue(key);
  return (text) => {
    if (!/^[0-9]+$/.test(text)) fail(OPTION_SPECS[key].expected, text);
    try {
      return check(Number(text));
    } catch (err) {
      // The message quotes the text as typed.
      if (err instanceof Invalid) fail(OPTION_SPECS[key].expected, text);
      throw err;
    }
  };
}

const SETTINGS: SettingSpecs = {
  host: { env: 'SYNC_HOST', flag: '--host', fromText: checkHost, fromValue: checkHost },
  port: {
    env: 'SYNC_PORT',
    flag: '--port',
    fromText: (text) => parseIntText(text, 0, 65535, PORT_EXPECTED),
    fromValue: (value) => checkIntInRange(value, 0, 65535, PORT_EXPECTED),
  },
  basePath: { env: 'SYNC_BASE_PATH', flag: '--base-path', fromText: checkBasePath, fromValue: checkBasePath },
  dataDir: { env: 'SYNC_DATA_DIR', flag: '--data-dir', fromText: checkDataDir, fromValue: checkDataDir },
  corsOrigin: { env: 'SYNC_CORS_ORIGIN', flag: '--cors-origin', fromText: parseCorsText, fromValue: checkCors },
  authMode: { env: 'SYNC_AUTH_MODE', flag: '--auth-mode', fromText: checkAuthMode, fromValue: checkAuthMode },
  authTokens: {
    env: 'SYNC_AUTH_TOKENS',
    flag: '--auth-tokens',
    fromText: (text) => checkTokens(text.split(',').map((token) => token.trim())),
    fromValue: checkTokenList,
    secret: true,
  },
  retentionHorizonMs: {
    env: 'SYNC_RETENTION_HORIZON_MS',
    flag: '--retention-horizon-ms',
    fromText: intSettingText('retentionHorizonMs', ' (milliseconds)'),
    fromValue: intSettingValue('retentionHorizonMs', ' (milliseconds)'),
  },
  batchSize: {
    env: 'SYNC_BATCH_SIZE',
    flag: '--batch-size',
    fromText: intSettingText('batchSize'),
    fromValue: intSettingValue('batchSize'),
  },
  s3Durability: {
    env: 'SYNC_S3_DURABILITY',
    flag: '--s3-durability',
    fromText: routerValue('s3Durability'),
    fromValue: routerValue('s3Durability'),
  },
  diskEviction: {
    env: 'DISK_EVICTION_ENABLED',
    flag: '--disk-eviction',
    fromText: parseBoolText,
    fromValue: routerValue('diskEviction'),
  },
  diskEvictionIdleMs: {
    env: 'DISK_EVICTION_IDLE_MS',
    flag: '--disk-eviction-idle-ms',
    fromText: routerIntText('diskEvictionIdleMs'),
    fromValue: routerValue('diskEvictionIdleMs'),
  },
  redisUrl: { env: 'SYNC_REDIS_URL', flag: '--redis-url', fromText: (text) => byRouterRule(checkRedisUrl, text), fromValue: (value) => byRouterRule(checkRedisUrl, value), secret: true },
  nodeId: { env: 'SYNC_NODE_ID', flag: '--node-id', fromText: (text) => byRouterRule(checkNodeId, text), fromValue: (value) => byRouterRule(checkNodeId, value) },
};

interface S3FieldSpec {
  readonly env: string;
  readonly flag: string;
  /** The text form (env var, CLI flag) as the value to check. */
  readonly fromText: (text: string) => unknown;
  /** Credentials: never echoed in messages or logs. */
  readonly secret?: boolean;
}

/** The `s3` setting's fields, named as the reference product names them (its README's `S3_*` table). */
const S3_FIELDS: { readonly [K in S3SettingKey]-?: S3FieldSpec } = {
  bucket: { env: 'S3_BUCKET', flag: '--s3-bucket', fromText: (text) => text },
  region: { env: 'S3_REGION', flag: '--s3-region', fromText: (text) => text },
  endpoint: { env: 'S3_ENDPOINT', flag: '--s3-endpoint', fromText: (text) => text },
  accessKeyId: { env: 'S3_ACCESS_KEY_ID', flag: '--s3-access-key-id', fromText: (text) => text, secret: true },
  secretAccessKey: { env: 'S3_SECRET_ACCESS_KEY', flag: '--s3-secret-access-key', fromText: (text) => text, secret: true },
  forcePathStyle: { env: 'S3_FORCE_PATH_STYLE', flag: '--s3-force-path-style', fromText: parseBoolText },
  keyPrefix: { env: 'S3_KEY_PREFIX', flag: '--s3-key-prefix', fromText: (text) => text },
};

const S3_KEYS = Object.keys(S3_FIELDS) as S3SettingKey[];

/**
 * The spec of setting `key` (of an `s3` field), or undefined when `key` is
 * not one. Only own keys count: "toString", "constructor" or "__proto__" in
 * a file or in overrides are unknown keys, not members of Object.prototype.
 */
function settingSpec(key: string): SettingSpec<ConfigSettingKey> | undefined {
  return Object.hasOwn(SETTINGS, key) ? (SETTINGS as Record<string, SettingSpec<ConfigSettingKey>>)[key] : undefined;
}

function s3FieldSpec(key: string): S3FieldSpec | undefined {
  return Object.hasOwn(S3_FIELDS, key) ? (S3_FIELDS as Record<string, S3FieldSpec>)[key] : undefined;
}

/** A valid bucket name that only stands in while one field is checked on its own. */
const PROBE_BUCKET = 'probe-bucket';

/**
 * One field of `s3`, checked by the router's own checkS3 (so the CLI and
 * createSyncRouter accept the same values), plus what S3Archive would
 * otherwise only refuse at the first database open: an empty region and a
 * key prefix that is not '/'-separated segments.
 */
function checkS3Field<K extends S3SettingKey>(key: K, value: unknown): S3Options[K] {
  const probe: Record<string, unknown> = { bucket: PROBE_BUCKET, [key]: value };
  // The keys go in pairs; the other one stands in so that only this one is judged.
  if (key === 'accessKeyId') probe.secretAccessKey = 'probe';
  if (key === 'secretAccessKey') probe.accessKeyId = 'probe';
  try {
    checkS3(probe);
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    // 'Option "s3.bucket" must be X, got Y' → 'expected X, got Y', as every other setting says it.
    throw new Invalid(err.message.replace(/^Option "s3\.[A-Za-z]+" must be /, 'expected '));
  }
  return value as S3Options[K];
}

const SETTING_KEYS = Object.keys(SETTINGS) as ConfigSettingKey[];

/** Env var and CLI flag of each field of the `s3` setting, for help texts and docs. */
export const S3_SETTINGS: Readonly<Record<S3SettingKey, { readonly env: string; readonly flag: string }>> = Object.freeze(
  Object.fromEntries(S3_KEYS.map((key) => [key, Object.freeze({ env: S3_FIELDS[key].env, flag: S3_FIELDS[key].flag })])) as Record<
    S3SettingKey,
    { readonly env: string; readonly flag: string }
  >,
);

/** Env var and CLI flag of each setting, for help texts and docs. */
export const CONFIG_SETTINGS: Readonly<Record<ConfigSettingKey, { readonly env: string; readonly flag: string }>> = Object.freeze(
  Object.fromEntries(SETTING_KEYS.map((key) => [key, Object.freeze({ env: SETTINGS[key].env, flag: SETTINGS[key].flag })])) as Record<
    ConfigSettingKey,
    { readonly env: string; readonly flag: string }
  >,
);

/**
 * Router options a config file may set under `router`: every plain option of
 * the router (OPTION_SPECS, so defaults and checks are the router's own)
 * except those that are top-level settings. A bad file value is reported
 * with its file and key at load time, not as a TypeError when the server is
 * built.
 */
const TOP_LEVEL_OPTIONS: ReadonlySet<string> = new Set([
  'path', 'dataDir', 'corsOrigin', 'authMode', 'authTokens', 'retentionHorizonMs', 'batchSize', 's3Durability', 'diskEviction', 'diskEvictionIdleMs',
  'redis', 'nodeId',
]);
const ROUTER_SPECS: ReadonlyMap<string, OptionSpec<unknown>> = new Map(
  (Object.entries(OPTION_SPECS) as [string, OptionSpec<unknown>][]).filter(([key]) => !TOP_LEVEL_OPTIONS.has(key)),
);
/** Not expressible in JSON, so only programmatic overrides may carry them; the router checks them. */
const ROUTER_OBJECTS: ReadonlySet<string> = new Set(['registry', 'now']);

type RouterConfig = NonNullable<CoordinatorConfig['router']>;

/** Suggests the intended key for a misspelt one: same letters ignoring case, "-" and "_". */
function hintFor(key: string, known: Iterable<string>): string {
  const squash = (s: string): string => s.toLowerCase().replace(/[-_]/g, '');
  const match = [...known].find((k) => squash(k) === squash(key));
  return match ? ` (did you mean "${match}"?)` : '';
}

/** Edit distance (insertions, deletions, substitutions) between two short strings. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/**
 * Names people reach for that are not settings, with where the thing they
 * want actually lives.
 */
const ENV_NOT_SETTINGS: Readonly<Record<string, string>> = {
  SYNC_DEBUG: 'use DEBUG=sync-coordinator:* or --debug',
  SYNC_CONFIG: 'the config file is named with --config',
  SYNC_CONFIG_FILE: 'the config file is named with --config',
  SYNC_PATH: 'did you mean SYNC_BASE_PATH?',
  SYNC_TOKENS: 'did you mean SYNC_AUTH_TOKENS?',
  SYNC_TOKEN: 'did you mean SYNC_AUTH_TOKENS?',
};

/** The hint for an unknown SYNC_* variable: a near miss (ignoring "_"), else a known confusion, else nothing. */
function envHint(name: string, known: readonly string[]): string {
  const squash = (s: string): string => s.toUpperCase().replace(/_/g, '');
  const special = ENV_NOT_SETTINGS[name.toUpperCase()];
  if (special) return ` (${special})`;
  let best: { name: string; distance: number } | undefined;
  for (const candidate of known) {
    const distance = editDistance(squash(name), squash(candidate));
    if (!best || distance < best.distance) best = { name: candidate, distance };
  }
  // Two edits catch a dropped, doubled or swapped letter without pairing unrelated names.
  return best && best.distance <= 2 ? ` (did you mean ${best.name}?)` : '';
}

/** True for an address that listens on every interface (0.0.0.0, ::, ::0 ...). */
function isWildcardHost(host: string): boolean {
  return host === '0.0.0.0' || (isIP(host) === 6 && /^[0:]+$/.test(host));
}

function checkRouter(value: unknown, name: (key: string) => string, allowObjects: boolean): RouterConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(name(''), value, `expected an object of router options, ${got(value)}`);
  }
  const router: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    if (item === undefined) continue;
    const setting = name(key);
    const spec = ROUTER_SPECS.get(key);
    if (spec) {
      const checked = spec.check(item);
      if (checked === undefined) throw new ConfigError(setting, item, `expected ${spec.expected}, ${got(item)}`);
      router[key] = checked;
    } else if (allowObjects && ROUTER_OBJECTS.has(key)) {
      router[key] = item;
    } else {
      const topLevel = key === 'path' ? 'basePath' : key === 's3' || (SETTING_KEYS as string[]).includes(key) ? key : undefined;
      const hint = topLevel
        ? ` (set "${topLevel}" at the top level instead)`
        : hintFor(key, [...ROUTER_SPECS.keys(), ...(allowObjects ? ROUTER_OBJECTS : [])]);
      throw new ConfigError(setting, item, `unknown router option "${key}"${hint}`);
    }
  }
  return router as RouterConfig;
}

/**
 * The router's rules that join two options (options.ts, parseOptions), at
 * load time, so that a refusal names the file or flag the value came from
 * like every other bad setting, not only the option.
 */
function checkRouterCombination(router: RouterConfig, authTokens: readonly string[], name: (key: string) => string): void {
  const maxMessageBytes = router.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
  if (router.maxInboundBytes !== undefined && router.maxInboundBytes < maxMessageBytes) {
    throw new ConfigError(name('maxInboundBytes'), router.maxInboundBytes, `expected at least maxMessageBytes (${maxMessageBytes}) so that one largest message fits, got ${router.maxInboundBytes}`);
  }
  if (router.dashboardAuth === 'token' && authTokens.length === 0 && (router.statusTokens ?? []).length === 0) {
    throw new ConfigError(name('dashboardAuth'), 'token', 'no token could open the dashboard: authTokens and statusTokens are empty; list tokens in router.statusTokens, or use "off"');
  }
}

/** Runs a checker and names the source in its failure. */
function named<T>(setting: string, value: unknown, check: () => T, secret = false): T {
  try {
    return check();
  } catch (err) {
    if (!(err instanceof Invalid)) throw err;
    // Secret checkers already avoid the value; the rest say "got <value>" themselves.
    throw new ConfigError(setting, secret ? '[redacted]' : value, err.message);
  }
}

/** One layer's values, each with the name of where it came from. */
type Layer = { [K in ConfigSettingKey]?: { value: CoordinatorConfig[K]; setting: string } };

/** One layer's `s3` fields, each with the name of where it came from. */
type S3Layer = { [K in S3SettingKey]?: { value: S3Options[K]; setting: string } };

function setS3Layer<K extends S3SettingKey>(layer: S3Layer, key: K, value: S3Options[K], setting: string): void {
  (layer as Record<K, { value: S3Options[K]; setting: string }>)[key] = { value, setting };
}

/** The `s3` fields of an object (config file, overrides): unknown keys are errors, each field is checked and named by `name`. */
function s3ObjectLayer(value: unknown, name: (key: string) => string): S3Layer {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(name(''), value, `expected an object { ${S3_KEYS.join(', ')} }, ${got(value)}`);
  }
  const layer: S3Layer = {};
  for (const [key, item] of Object.entries(value)) {
    if (item === undefined) continue;
    const spec = s3FieldSpec(key);
    if (!spec) throw new ConfigError(name(key), item, `unknown S3 setting "${key}"${hintFor(key, S3_KEYS)}; s3 takes ${S3_KEYS.join(', ')}`);
    const field = key as S3SettingKey;
    setS3Layer(layer, field, named(name(key), item, () => checkS3Field(field, item), spec.secret), name(key));
  }
  return layer;
}

function setLayer<K extends ConfigSettingKey>(layer: Layer, key: K, value: CoordinatorConfig[K], setting: string): void {
  (layer as Record<K, { value: CoordinatorConfig[K]; setting: string }>)[key] = { value, setting };
}

/**
 * Parses CLI flag texts (as typed by the user) into `loadConfig` overrides.
 * Errors name the flag, e.g. `--port: expected an integer 0-65535, got "abc"`.
 * Undefined texts are skipped so that flags not given do not override.
 */
export function parseCliOverrides(texts: ConfigText): ConfigOverrides {
  const overrides: Record<string, unknown> = {};
  for (const [key, text] of Object.entries(texts)) {
    if (text === undefined) continue;
    if (key === 's3') {
      const s3: Record<string, unknown> = {};
      for (const [field, fieldText] of Object.entries(text as Partial<Record<string, string>>)) {
        if (fieldText === undefined) continue;
        const fieldSpec = s3FieldSpec(field);
        if (!fieldSpec) throw new ConfigError(`s3.${field}`, fieldText, `unknown S3 setting${hintFor(field, S3_KEYS)}`);
        s3[field] = named(fieldSpec.flag, fieldText, () => checkS3Field(field as S3SettingKey, fieldSpec.fromText(fieldText)), fieldSpec.secret);
      }
      if (Object.keys(s3).length > 0) overrides.s3 = s3;
      continue;
    }
    const spec = settingSpec(key);
    if (!spec || typeof text !== 'string') throw new ConfigError(key, text, `unknown setting${hintFor(key, SETTING_KEYS)}`);
    overrides[key] = named(spec.flag, text, () => spec.fromText(text), spec.secret);
  }
  return overrides as ConfigOverrides;
}

/** What one source sets: plain settings, `s3` fields, router options. */
interface Layers {
  layer: Layer;
  s3: S3Layer;
  router?: RouterConfig;
  /** How this source names one of its router options in an error. */
  routerName?: (key: string) => string;
}

function overridesLayer(overrides: ConfigOverrides): Layers {
  const routerName = (k: string): string => (k ? `router.${k}` : 'router');
  const layer: Layer = {};
  let s3: S3Layer = {};
  let router: RouterConfig | undefined;
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    if (key === 'router') {
      router = checkRouter(value, routerName, true);
      continue;
    }
    if (key === 's3') {
      // Overrides are the CLI's: each field is named by its flag.
      s3 = s3ObjectLayer(value, (k) => (k ? s3FieldSpec(k)?.flag ?? `s3.${k}` : 's3'));
      continue;
    }
    const spec = settingSpec(key);
    if (!spec) throw new ConfigError(`overrides.${key}`, value, `unknown setting${hintFor(key, [...SETTING_KEYS, 'router'])}`);
    setLayer(layer, key as ConfigSettingKey, named(spec.flag, value, () => spec.fromValue(value), spec.secret), spec.flag);
  }
  return { layer, s3, router, routerName };
}

function envLayer(env: Record<string, string | undefined>, warnings: string[]): Layers {
  const layer: Layer = {};
  const s3: S3Layer = {};
  for (const key of S3_KEYS) {
    const spec = S3_FIELDS[key];
    const text = env[spec.env];
    if (text === undefined || text.trim() === '') continue;
    setS3Layer(s3, key, named(spec.env, text, () => checkS3Field(key, spec.fromText(text)), spec.secret), spec.env);
  }
  const known = SETTING_KEYS.map((key) => SETTINGS[key].env);
  for (const key of SETTING_KEYS) {
    const spec = SETTINGS[key] as SettingSpec<ConfigSettingKey>;
    const text = env[spec.env];
    // Empty means unset: deployment templates often render `SYNC_PORT=` for "not configured".
    if (text === undefined || text.trim() === '') continue;
    setLayer(layer, key, named(spec.env, text, () => spec.fromText(text), spec.secret), spec.env);
  }
  const s3Names = S3_KEYS.map((key) => S3_FIELDS[key].env);
  // Warnings, not errors: the environment is shared with other programs, which may own SYNC_* names too.
  for (const name of Object.keys(env).sort()) {
    // Case-blind: `sync_port=` is an easy slip, and POSIX names are case-sensitive.
    const upper = name.toUpperCase();
    if ((upper.startsWith('SYNC_') || upper.startsWith('DISK_EVICTION_')) && !known.includes(name)) {
      warnings.push(`ignoring unknown environment variable ${name}${envHint(name, known)}`);
    } else if (upper.startsWith('S3_') && !s3Names.includes(name)) {
      // Other programs name their own settings S3_* too: only a near miss of ours
      // (S3_BUCKT, which would leave S3 off without a word) is worth a line.
      const hint = envHint(name, s3Names);
      if (hint) warnings.push(`ignoring unknown environment variable ${name}${hint}`);
    }
  }
  return { layer, s3 };
}

function readConfigFile(cwd: string, configFile: string | undefined): { label: string; data: Record<string, unknown> } | undefined {
  const label = configFile ?? DEFAULT_CONFIG_FILE;
  const path = resolve(cwd, label);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (configFile === undefined && code === 'ENOENT') return undefined;
    const reason = code === 'ENOENT' ? 'not found' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${code ?? (err as Error).message})`;
    throw new ConfigError('config file', configFile ?? path, `${JSON.stringify(label)} ${reason}${label === path ? '' : ` (looked at ${path})`}`, { cause: err });
  }
  let data: unknown;
  try {
    // Editors on Windows like to prepend a BOM, which JSON.parse rejects.
    data = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (err) {
    throw new ConfigError(label, path, `invalid JSON (${(err as Error).message})`, { cause: err });
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigError(label, data, `expected a JSON object of settings, ${got(data)}`);
  }
  log('read config file %s', path);
  return { label, data: data as Record<string, unknown> };
}

function fileLayer(file: { label: string; data: Record<string, unknown> }): Layers {
  const routerName = (k: string): string => `${file.label}: router${k ? `.${k}` : ''}`;
  const layer: Layer = {};
  let s3: S3Layer = {};
  let router: RouterConfig | undefined;
  for (const [key, value] of Object.entries(file.data)) {
    const setting = `${file.label}: ${key}`;
    if (key === 'router') {
      router = checkRouter(value, routerName, false);
      continue;
    }
    if (key === 's3') {
      s3 = s3ObjectLayer(value, (k) => `${file.label}: s3${k ? `.${k}` : ''}`);
      continue;
    }
    const spec = settingSpec(key);
    if (!spec) throw new ConfigError(setting, value, `unknown key "${key}"${hintFor(key, [...SETTING_KEYS, 's3', 'router'])}`);
    setLayer(layer, key as ConfigSettingKey, named(setting, value, () => spec.fromValue(value), spec.secret), setting);
  }
  return { layer, s3, router, routerName };
}

/** What `resolveConfig` returns. */
export interface ResolvedConfig {
  /** The configuration, as `loadConfig` returns it. */
  config: CoordinatorConfig;
  /**
   * Where each setting came from, in the form errors use: a CLI flag
   * (`--data-dir`), an env var (`SYNC_DATA_DIR`), `<file>: <key>`, or
   * `default`.
   */
  sources: Record<ConfigSettingKey, string>;
  /** Where each `s3` field that is set came from, named the same way (`S3_BUCKET`, `--s3-region`, `<file>: s3.endpoint`). */
  s3Sources: Partial<Record<S3SettingKey, string>>;
  /**
   * One-line warnings about settings that are legal but probably not what
   * the operator meant: unknown `SYNC_*` variables (with a did-you-mean),
   * S3 settings without a bucket (S3 stays off; names only, never values),
   * and an unauthenticated server on every interface. Without a trailing
   * newline.
   */
  warnings: string[];
}

/**
 * Builds the standalone server's configuration from, highest precedence
 * first: `overrides` (the CLI), env vars (`SYNC_*`, and the reference
 * product's `S3_*` and `DISK_EVICTION_*`), the JSON config file and
 * SERVER_DEFAULTS. Each field of `s3` is taken from the highest source that
 * sets it; S3 is on once a bucket is set (README "Storage and S3"). Every
 * value from every source is checked, by the router's own rules where the
 * router has one (OPTION_SPECS, checkS3); a bad one is a ConfigError naming
 * its source and value (never a key's value). `dataDir` comes back
 * absolute. Returns a fresh object the caller may mutate. Warnings go to
 * the `sync-coordinator:config` debug log; `resolveConfig` returns them
 * instead.
 */
export function loadConfig(options: LoadConfigOptions = {}): CoordinatorConfig {
  const { config, warnings } = resolveConfig(options);
  for (const warning of warnings) log('warning: %s', warning);
  return config;
}

/**
 * `loadConfig`, plus where each setting came from and the warnings the CLI
 * prints (see {@link ResolvedConfig}). Throws ConfigError like `loadConfig`.
 */
export function resolveConfig(options: LoadConfigOptions = {}): ResolvedConfig {
  const cwd = options.cwd ?? process.cwd();
  const env = options.env ?? process.env;
  const warnings: string[] = [];
  const file = readConfigFile(cwd, options.configFile);
  const fromFile: Layers = file ? fileLayer(file) : { layer: {}, s3: {} };
  const fromEnv = envLayer(env, warnings);
  const fromOverrides = overridesLayer(options.overrides ?? {});
  const layers = [fromOverrides.layer, fromEnv.layer, fromFile.layer];

  const pick = <K extends ConfigSettingKey>(key: K): { value: CoordinatorConfig[K]; setting: string } => {
    for (const layer of layers) {
      const entry = layer[key];
      if (entry) return entry as { value: CoordinatorConfig[K]; setting: string };
    }
    return { value: SERVER_DEFAULTS[key], setting: 'default' };
  };

  const authMode = pick('authMode');
  const authTokens = pick('authTokens');
  if (authMode.value === 'token-whitelist' && authTokens.value.length === 0) {
    throw new ConfigError(
      authMode.setting,
      authMode.value,
      `"token-whitelist" needs at least one token (set ${SETTINGS.authTokens.env}, ${SETTINGS.authTokens.flag} or "authTokens" in the config file)`,
    );
  }

  const corsOrigin = pick('corsOrigin').value;
  const config: CoordinatorConfig = {
    host: pick('host').value,
    port: pick('port').value,
    basePath: pick('basePath').value,
    dataDir: resolve(cwd, pick('dataDir').value),
    corsOrigin: Array.isArray(corsOrigin) ? [...corsOrigin] : corsOrigin,
    authMode: authMode.value,
    authTokens: [...authTokens.value],
    retentionHorizonMs: pick('retentionHorizonMs').value,
    batchSize: pick('batchSize').value,
    s3Durability: pick('s3Durability').value,
    diskEviction: pick('diskEviction').value,
    diskEvictionIdleMs: pick('diskEvictionIdleMs').value,
  };
  const redisUrl = pick('redisUrl').value;
  if (redisUrl !== undefined) config.redisUrl = redisUrl;
  const nodeId = pick('nodeId').value;
  if (nodeId !== undefined) config.nodeId = nodeId;
  if (fromFile.router || fromOverrides.router) {
    config.router = { ...fromFile.router, ...fromOverrides.router };
    const routerName = (key: string): string => {
      const layer = fromOverrides.router?.[key as keyof RouterConfig] !== undefined ? fromOverrides : fromFile;
      return layer.routerName?.(key) ?? `router.${key}`;
    };
    checkRouterCombination(config.router, config.authTokens, routerName);
  }

  const s3 = pickS3([fromOverrides.s3, fromEnv.s3, fromFile.s3]);
  if (s3.options) config.s3 = s3.options;

  const sources = Object.fromEntries(SETTING_KEYS.map((key) => [key, pick(key).setting])) as Record<ConfigSettingKey, string>;
  if (config.redisUrl !== undefined && config.s3 && config.s3Durability === 'ack') {
    throw new ConfigError(
      sources.s3Durability!,
      'ack',
      `"ack" cannot be used in a cluster (${sources.redisUrl} is set): a write is acknowledged once it is in the Redis log, and the archive follows the log; use "async"`,
    );
  }
  for (const key of SETTING_KEYS) {
    if (!SETTINGS[key].secret) log('%s = %o (from %s)', key, config[key], sources[key]);
  }
  if (config.s3) {
    const { bucket, keyPrefix = '', endpoint, region = 'us-east-1', accessKeyId } = config.s3;
    // Never the keys themselves, only where they came from.
    const credentials = accessKeyId === undefined ? "the AWS SDK's default chain" : `${s3.sources.accessKeyId} and ${s3.sources.secretAccessKey}`;
    log('s3 = s3://%s/%s%s, region %s, credentials from %s (bucket from %s)', bucket, keyPrefix, endpoint ? ` at ${endpoint}` : '', region, credentials, s3.sources.bucket);
  } else if (Object.keys(s3.sources).length > 0) {
    // Names only: some of these hold credentials.
    const names = S3_KEYS.map((key) => s3.sources[key]).filter((name): name is string => name !== undefined);
    warnings.push(
      `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} set, but S3 stays off without a bucket ` +
        `(set ${S3_FIELDS.bucket.env}, ${S3_FIELDS.bucket.flag} or "s3.bucket" in the config file): databases are stored only in ${JSON.stringify(config.dataDir)}`,
    );
  }
  if ((options.serving ?? true) && isWildcardHost(config.host) && config.authMode === 'none') {
    const origin = (key: ConfigSettingKey): string => (sources[key] === 'default' ? 'the default' : `from ${sources[key]}`);
    const reach = config.port === 0 ? 'the server' : `port ${config.port}`;
    warnings.push(
      `host ${config.host} (${origin('host')}) listens on every interface and authMode is "none" (${origin('authMode')}): ` +
        `anyone who can reach ${reach} can read and write every database; ` +
        `set ${SETTINGS.host.flag} 127.0.0.1 or ${SETTINGS.authMode.flag} token-whitelist`,
    );
  }
  return { config, sources, s3Sources: s3.sources, warnings };
}

/**
 * The `s3` setting: each field from the highest layer that sets it. S3 is
 * on once a bucket is set; then the fields are checked together (the keys
 * go in pairs), naming where each came from.
 */
function pickS3(layers: readonly S3Layer[]): { options?: S3Options; sources: Partial<Record<S3SettingKey, string>> } {
  const values: Record<string, unknown> = {};
  const sources: Partial<Record<S3SettingKey, string>> = {};
  for (const key of S3_KEYS) {
    const entry = layers.map((layer) => layer[key]).find((e) => e !== undefined);
    if (!entry) continue;
    values[key] = entry.value;
    sources[key] = entry.setting;
  }
  if (values.bucket === undefined) return { sources };
  const hasId = values.accessKeyId !== undefined;
  if (hasId !== (values.secretAccessKey !== undefined)) {
    const [given, missing] = hasId ? (['accessKeyId', 'secretAccessKey'] as const) : (['secretAccessKey', 'accessKeyId'] as const);
    throw new ConfigError(
      sources[given]!,
      '[redacted]',
      `${S3_FIELDS[missing].env} (or ${S3_FIELDS[missing].flag}, or "s3.${missing}" in the config file) must be set too: ` +
        "give both keys, or neither to use the AWS SDK's default credential chain",
    );
  }
  try {
    return { options: { ...checkS3(values) }, sources };
  } catch (err) {
    // Each field passed on its own, so this is a rule across fields; the message never holds a key.
    if (err instanceof TypeError) throw new ConfigError(sources.bucket!, '[redacted]', err.message);
    throw err;
  }
}
