#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import createDebug from 'debug';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError, CONFIG_SETTINGS, parseCliOverrides, resolveConfig, type ConfigSettingKey, type ConfigText, type ResolvedConfig } from '../lib/config/load-config.js';
import { SERVER_DEFAULTS } from '../lib/config/options.js';
import { createCoordinatorServer, type CoordinatorServer } from '../lib/create-coordinator-server.js';
import { LOG_LAYERS, LOG_PREFIX } from '../lib/log.js';

const NAME = 'sync-coordinator';
const DEFAULT_DEBUG = `${LOG_PREFIX}:*`;
/** How often to look whether npm, our parent's parent, is gone (see watchNpmParent). */
const PARENT_POLL_MS = 1000;

/** Exit codes, also listed in --help. */
const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

/**
 * The package version. Built, this file is dist/cli/ (package.json two levels
 * up); run from source with tsx it is cli/ (one level up), so both are tried.
 */
function packageVersion(): string {
  for (const relative of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === '@quereus/sync-coordinator' && pkg.version) return pkg.version;
    } catch {
      // Try the next candidate.
    }
  }
  return 'unknown';
}

/** Help line of a setting: what it does, its env var and its default, since yargs itself holds no defaults. */
function describe(key: ConfigSettingKey, text: string, shownDefault: string = JSON.stringify(SERVER_DEFAULTS[key])): string {
  return `${text} [env ${CONFIG_SETTINGS[key].env}] [default: ${shownDefault}]`;
}

/** Prints one line to stderr and exits; every failure of the CLI ends here. */
function die(code: number, message: string): never {
  process.stderr.write(`${message.replace(/\s*[\r\n]+\s*/g, ' ')}\n`);
  process.exit(code);
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}

function warn(message: string): void {
  process.stderr.write(`${NAME}: warning: ${message.replace(/\s*[\r\n]+\s*/g, ' ')}\n`);
}

/**
 * Turns a --debug list into `debug` namespaces. Layer names may be given
 * bare (`ws`, `http,service`, `-ws`, `re*`) and get the sync-coordinator
 * prefix; `*`, and names with a ":" (`sync-coordinator:ws`, `express:*`),
 * pass unchanged. Throws ConfigError for a bare name that is no layer,
 * which would otherwise enable nothing without a word.
 */
function debugNamespaces(spec: string): string {
  if (spec.trim() === '') return DEFAULT_DEBUG;
  return spec
    .split(/[\s,]+/)
    .filter((part) => part !== '')
    .map((part) => {
      const negated = part.startsWith('-');
      const name = negated ? part.slice(1) : part;
      let namespace: string;
      if (name === '*' || name.includes(':')) namespace = name;
      else if (name === LOG_PREFIX) namespace = DEFAULT_DEBUG;
      else if (LOG_LAYERS.includes(name) || name.includes('*')) namespace = `${LOG_PREFIX}:${name}`;
      else {
        throw new ConfigError('--debug', spec, `unknown namespace "${name}" (expected ${LOG_LAYERS.join(', ')}, "*", or a full name like "${LOG_PREFIX}:ws" or "express:*")`);
      }
      return negated ? `-${namespace}` : namespace;
    })
    .join(',');
}

/** How a setting's source is named in a message: the flag for defaults, since that is how to change it. */
function settingLabel(resolved: ResolvedConfig, key: ConfigSettingKey): string {
  const source = resolved.sources[key];
  return source === 'default' ? `${CONFIG_SETTINGS[key].flag} (default ${JSON.stringify(SERVER_DEFAULTS[key])})` : source;
}

/**
 * npm (npx, npm start, npm exec) runs us under `sh -c`, and forwards SIGTERM
 * to that shell only: the shell dies, npm exits, and we would live on as an
 * orphan holding the port and the data directory. Since npm never passes the
 * signal on, the only sign is that the shell is gone and we were reparented;
 * when that happens, shut down as if signalled. Outside npm a changed parent
 * is normal (`node ... &` from a shell that then exits), so only npm's
 * children watch.
 */
function watchNpmParent(onGone: () => void): void {
  if (process.env.npm_lifecycle_event === undefined) return;
  const parent = process.ppid;
  const timer = setInterval(function checkParent() {
    if (process.ppid === parent) return;
    clearInterval(timer);
    onGone();
  }, PARENT_POLL_MS);
  // The check must not keep the process alive once the server has stopped.
  timer.unref();
}

/** Writes to a closed stdout/stderr (the terminal or npm went away) must not crash a shutdown. */
function ignoreBrokenPipes(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
    });
  }
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName(NAME)
    .usage(`$0 [options]\n\nRuns a Quereus sync coordinator over HTTP and WebSocket.\nPrecedence: flags > SYNC_* env vars > config file > defaults.`)
    // No yargs defaults anywhere: a flag the user did not type must not hide env or file values.
    .option('host', { type: 'string', description: describe('host', 'Interface to listen on') })
    .option('port', { type: 'string', description: describe('port', 'Port to listen on; 0 picks a free one') })
    .option('base-path', { type: 'string', description: describe('basePath', 'Mount path of the sync routes (WebSocket at <path>/ws)') })
    .option('data-dir', { type: 'string', description: describe('dataDir', 'Directory of the database stores, relative to the working directory') })
    .option('cors-origin', { type: 'string', description: describe('corsOrigin', 'true, false, * or comma-separated origins') })
    .option('auth-mode', { type: 'string', description: describe('authMode', 'none or token-whitelist') })
    .option('auth-tokens', {
      type: 'string',
      description: describe('authTokens', 'Comma-separated bearer tokens for token-whitelist (visible in ps: prefer the env var)', 'none'),
    })
    .option('batch-size', { type: 'string', description: describe('batchSize', 'Changes per get_changes page') })
    .option('retention-horizon-ms', { type: 'string', description: describe('retentionHorizonMs', 'Tombstone retention in ms (30 days)') })
    .option('config', { type: 'string', description: 'JSON config file [default: ./sync-coordinator.json if it exists]' })
    .option('debug', { type: 'string', description: `Enable debug logging to stderr for these namespaces [default when given: ${DEFAULT_DEBUG}]` })
    // Last one wins, as with most CLIs, instead of an array no setting accepts; "--no-port" is an unknown flag, not port=false.
    .parserConfiguration({ 'duplicate-arguments-array': false, 'boolean-negation': false })
    .strict()
    .version(packageVersion())
    .alias('version', 'v')
    .help()
    .alias('help', 'h')
    .epilog('Exit codes: 0 stopped by SIGINT/SIGTERM, 1 failed to start or stop, 2 invalid configuration or arguments.')
    .wrap(null)
    .fail((message, err) => die(EXIT_USAGE, `${message ?? firstLine(err)} (see ${NAME} --help)`))
    .parseAsync();

  ignoreBrokenPipes();
  if (argv.debug !== undefined) {
    try {
      createDebug.enable(debugNamespaces(argv.debug));
    } catch (err) {
      die(EXIT_USAGE, firstLine(err));
    }
  }

  const texts: ConfigText = {
    host: argv.host,
    port: argv.port,
    basePath: argv.basePath,
    dataDir: argv.dataDir,
    corsOrigin: argv.corsOrigin,
    authMode: argv.authMode,
    authTokens: argv.authTokens,
    batchSize: argv.batchSize,
    retentionHorizonMs: argv.retentionHorizonMs,
  };

  let server: CoordinatorServer;
  let resolved: ResolvedConfig;
  try {
    resolved = resolveConfig({ overrides: parseCliOverrides(texts), configFile: argv.config });
    server = createCoordinatorServer({ config: resolved.config });
  } catch (err) {
    // createSyncRouter reports misuse as TypeError; both are configuration problems, not crashes.
    if (err instanceof ConfigError || err instanceof TypeError) die(EXIT_USAGE, firstLine(err));
    throw err;
  }
  for (const warning of resolved.warnings) warn(warning);

  const started = server.start();
  let signals = 0;
  const onSignal = (signal: string): void => {
    signals += 1;
    if (signals > 1) die(EXIT_FAILURE, `${NAME}: ${signal} again, exiting without finishing shutdown`);
    process.stdout.write(`${NAME} shutting down (${signal})\n`);
    // A signal during startup must wait for listen() to settle, or the port would be bound after stop().
    started
      .catch(() => undefined)
      .then(() => server.stop())
      .then(
        () => process.exit(EXIT_OK),
        (err: unknown) => die(EXIT_FAILURE, `${NAME}: shutdown failed: ${firstLine(err)}`),
      );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  watchNpmParent(() => onSignal('parent process exited'));

  let url: string;
  try {
    ({ url } = await started);
  } catch (err) {
    if (signals > 0) return;
    // start() names the data directory "dataDir"; say it the way the user set it.
    if (err instanceof ConfigError && err.setting === 'dataDir') die(EXIT_FAILURE, `${settingLabel(resolved, 'dataDir')}: ${err.problem}`);
    die(EXIT_FAILURE, `${NAME}: failed to start on ${server.config.host}:${server.config.port}: ${firstLine(err)}`);
  }
  process.stdout.write(`${NAME} listening on ${url}\n`);
}

main().catch((err: unknown) => die(EXIT_FAILURE, `${NAME}: ${firstLine(err)}`));
