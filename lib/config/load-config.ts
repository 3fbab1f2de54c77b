import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { describeValue } from '../errors.js';
import { logs } from '../log.js';
import { MOUNT_PATH_EXPECTED, OPTION_SPECS, SERVER_DEFAULTS, checkMountPath, type AuthMode, type CoordinatorConfig, type CorsOrigin, type OptionSpec, type PlainOptionKey } from './options.js';

const log = logs.config;

/** File looked up in the working directory when no config file is named. */
const DEFAULT_CONFIG_FILE = 'sync-coordinator.json';

/** Arguments of `loadConfig`. */
export interface LoadConfigOptions {
  /** Values from the CLI (see `parseCliOverrides`); they win over everything else. `undefined` fields are ignored. */
  overrides?: Partial<CoordinatorConfig>;
  /** Environment to read `SYNC_*` variables from. @default process.env */
  env?: Record<string, string | undefined>;
  /**
   * JSON config file, relative to `cwd`. When given it must exist; when not,
   * `sync-coordinator.json` in `cwd` is read only if it exists.
   */
  configFile?: string;
  /** Base for relative paths (`configFile`, `dataDir`). @default process.cwd() */
  cwd?: string;
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
export type ConfigSettingKey = Exclude<keyof CoordinatorConfig, 'router'>;

/** Text forms of settings, keyed by setting, as CLI flags carry them. */
export type ConfigText = Partial<Record<ConfigSettingKey, string>>;

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
  if (host.length > 253 || !host.split('.').every((part) => label.test(part))) fail(HOST_EXPECTED, value);
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
};

const SETTING_KEYS = Object.keys(SETTINGS) as ConfigSettingKey[];

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
const TOP_LEVEL_OPTIONS: ReadonlySet<string> = new Set(['path', 'dataDir', 'corsOrigin', 'authMode', 'authTokens', 'retentionHorizonMs', 'batchSize']);
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

/**
 * Storage settings of the S3 backend, which is not implemented yet: setting
 * them must not look like it worked, since the data would silently stay on
 * the local disk.
 */
export const S3_ENV_VARS: readonly string[] = Object.freeze([
  'S3_BUCKET',
  'S3_REGION',
  'S3_ENDPOINT',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
  'S3_FORCE_PATH_STYLE',
  'S3_KEY_PREFIX',
]);

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
      const topLevel = key === 'path' ? 'basePath' : (SETTING_KEYS as string[]).includes(key) ? key : undefined;
      const hint = topLevel
        ? ` (set "${topLevel}" at the top level instead)`
        : hintFor(key, [...ROUTER_SPECS.keys(), ...(allowObjects ? ROUTER_OBJECTS : [])]);
      throw new ConfigError(setting, item, `unknown router option "${key}"${hint}`);
    }
  }
  return router as RouterConfig;
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

function setLayer<K extends ConfigSettingKey>(layer: Layer, key: K, value: CoordinatorConfig[K], setting: string): void {
  (layer as Record<K, { value: CoordinatorConfig[K]; setting: string }>)[key] = { value, setting };
}

/**
 * Parses CLI flag texts (as typed by the user) into `loadConfig` overrides.
 * Errors name the flag, e.g. `--port: expected an integer 0-65535, got "abc"`.
 * Undefined texts are skipped so that flags not given do not override.
 */
export function parseCliOverrides(texts: ConfigText): Partial<CoordinatorConfig> {
  const overrides: Record<string, unknown> = {};
  for (const [key, text] of Object.entries(texts)) {
    if (text === undefined) continue;
    const spec = (SETTINGS as Record<string, SettingSpec<ConfigSettingKey>>)[key];
    if (!spec) throw new ConfigError(key, text, `unknown setting${hintFor(key, SETTING_KEYS)}`);
    overrides[key] = named(spec.flag, text, () => spec.fromText(text), spec.secret);
  }
  return overrides as Partial<CoordinatorConfig>;
}

function overridesLayer(overrides: Partial<CoordinatorConfig>): { layer: Layer; router?: RouterConfig } {
  const layer: Layer = {};
  let router: RouterConfig | undefined;
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    if (key === 'router') {
      router = checkRouter(value, (k) => (k ? `router.${k}` : 'router'), true);
      continue;
    }
    const spec = (SETTINGS as Record<string, SettingSpec<ConfigSettingKey>>)[key];
    if (!spec) throw new ConfigError(`overrides.${key}`, value, `unknown setting${hintFor(key, [...SETTING_KEYS, 'router'])}`);
    setLayer(layer, key as ConfigSettingKey, named(spec.flag, value, () => spec.fromValue(value), spec.secret), spec.flag);
  }
  return { layer, router };
}

function envLayer(env: Record<string, string | undefined>, warnings: string[]): Layer {
  const layer: Layer = {};
  const known = SETTING_KEYS.map((key) => SETTINGS[key].env);
  for (const key of SETTING_KEYS) {
    const spec = SETTINGS[key] as SettingSpec<ConfigSettingKey>;
    const text = env[spec.env];
    // Empty means unset: deployment templates often render `SYNC_PORT=` for "not configured".
    if (text === undefined || text.trim() === '') continue;
    setLayer(layer, key, named(spec.env, text, () => spec.fromText(text), spec.secret), spec.env);
  }
  // Warnings, not errors: the environment is shared with other programs, which may own SYNC_* names too.
  for (const name of Object.keys(env).sort()) {
    // Case-blind: `sync_port=` is an easy slip, and POSIX names are case-sensitive.
    if (name.toUpperCase().startsWith('SYNC_') && !known.includes(name)) {
      warnings.push(`ignoring unknown environment variable ${name}${envHint(name, known)}`);
    }
  }
  return layer;
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

function fileLayer(file: { label: string; data: Record<string, unknown> }): { layer: Layer; router?: RouterConfig } {
  const layer: Layer = {};
  let router: RouterConfig | undefined;
  for (const [key, value] of Object.entries(file.data)) {
    const setting = `${file.label}: ${key}`;
    if (key === 'router') {
      router = checkRouter(value, (k) => `${file.label}: router${k ? `.${k}` : ''}`, false);
      continue;
    }
    const spec = (SETTINGS as Record<string, SettingSpec<ConfigSettingKey>>)[key];
    if (!spec) throw new ConfigError(setting, value, `unknown key "${key}"${hintFor(key, [...SETTING_KEYS, 'router'])}`);
    setLayer(layer, key as ConfigSettingKey, named(setting, value, () => spec.fromValue(value), spec.secret), setting);
  }
  return { layer, router };
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
  /**
   * One-line warnings about settings that are legal but probably not what
   * the operator meant: unknown `SYNC_*` variables (with a did-you-mean),
   * `S3_*` variables (not supported yet; names only, never values), and an
   * unauthenticated server on every interface. Without a trailing newline.
   */
  warnings: string[];
}

/**
 * Builds the standalone server's configuration from, highest precedence
 * first: `overrides` (the CLI), `SYNC_*` env vars, the JSON config file and
 * SERVER_DEFAULTS. Every value from every source is checked; a bad one is a
 * ConfigError naming its source and value. `dataDir` comes back absolute.
 * Returns a fresh object the caller may mutate. Warnings go to the
 * `sync-coordinator:config` debug log; `resolveConfig` returns them instead.
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
  const fromFile = file ? fileLayer(file) : { layer: {} as Layer };
  const fromEnv = envLayer(env, warnings);
  const fromOverrides = overridesLayer(options.overrides ?? {});
  const layers = [fromOverrides.layer, fromEnv, fromFile.layer];

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
  };
  if (fromFile.router || fromOverrides.router) config.router = { ...fromFile.router, ...fromOverrides.router };

  const sources = Object.fromEntries(SETTING_KEYS.map((key) => [key, pick(key).setting])) as Record<ConfigSettingKey, string>;
  for (const key of SETTING_KEYS) {
    if (!SETTINGS[key].secret) log('%s = %o (from %s)', key, config[key], sources[key]);
  }
  // Names only: these hold credentials.
  const s3 = S3_ENV_VARS.filter((name) => (env[name] ?? '').trim() !== '');
  if (s3.length > 0) {
    warnings.push(
      `${s3.join(', ')} ${s3.length === 1 ? 'is' : 'are'} set, but S3 storage is not supported yet: ` +
        `${s3.length === 1 ? 'it is' : 'they are'} ignored and databases are stored in ${JSON.stringify(config.dataDir)}`,
    );
  }
  if (isWildcardHost(config.host) && config.authMode === 'none') {
    const origin = (key: ConfigSettingKey): string => (sources[key] === 'default' ? 'the default' : `from ${sources[key]}`);
    const reach = config.port === 0 ? 'the server' : `port ${config.port}`;
    warnings.push(
      `host ${config.host} (${origin('host')}) listens on every interface and authMode is "none" (${origin('authMode')}): ` +
        `anyone who can reach ${reach} can read and write every database; ` +
        `set ${SETTINGS.host.flag} 127.0.0.1 or ${SETTINGS.authMode.flag} token-whitelist`,
    );
  }
  return { config, sources, warnings };
}
