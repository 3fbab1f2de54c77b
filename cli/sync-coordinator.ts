#!/usr/bin/env node
import { once } from 'node:events';
import { createWriteStream, rmSync, statSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Writable } from 'node:stream';
import type Debug from 'debug';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import {
  ConfigError, CONFIG_SETTINGS, S3_SETTINGS, parseCliOverrides, resolveConfig,
  type ConfigSettingKey, type ConfigText, type ResolvedConfig, type S3SettingKey,
} from '../lib/config/load-config.js';
import { parseOptions, SERVER_DEFAULTS } from '../lib/config/options.js';
import { createCoordinatorServer, routerOptionsOf, type CoordinatorServer } from '../lib/create-coordinator-server.js';
import type { RestoreProgress, RestoreResult } from '../lib/durability/restore.js';
import { isSyncError } from '../lib/errors.js';
import { LOG_LAYERS, LOG_PREFIX } from '../lib/log.js';
import { packageVersion } from '../lib/version.js';
import { hlcWallTime } from '../lib/protocol/hlc.js';
import type { ReplicaOptions } from '../lib/replica/replica.js';
import { databaseDirectory, validateDatabaseId } from '../lib/storage/database-id.js';
import { requirePackage } from '../lib/require-package.js';
import type { InspectArgs } from './inspect.js';
import type { Progress } from './progress.js';
import { die, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, firstLine, formatBytes, NAME, warn } from './shared.js';
import type { StatsArgs } from './stats.js';

const createDebug = requirePackage('debug') as typeof Debug;
const DEFAULT_DEBUG = `${LOG_PREFIX}:*`;
/** How often to look whether npm, our parent's parent, is gone (see watchNpmParent). */
const PARENT_POLL_MS = 1000;

/** Help line of a setting: what it does, its env var and its default, since yargs itself holds no defaults. */
function describe(key: ConfigSettingKey, text: string, shownDefault: string = JSON.stringify(SERVER_DEFAULTS[key])): string {
  return `${text} [env ${CONFIG_SETTINGS[key].env}] [default: ${shownDefault}]`;
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

/** Flags of the server only (the default command). */
function serveOptions<T>(args: Argv<T>) {
  return args
    .option('host', { type: 'string', description: describe('host', 'Interface to listen on') })
    .option('port', { type: 'string', description: describe('port', 'Port to listen on; 0 picks a free one') })
    .option('base-path', { type: 'string', description: describe('basePath', 'Mount path of the sync routes (WebSocket at <path>/ws)') })
    .option('cors-origin', { type: 'string', description: describe('corsOrigin', 'true, false, * or comma-separated origins') })
    .option('auth-mode', { type: 'string', description: describe('authMode', 'none or token-whitelist') })
    .option('auth-tokens', {
      type: 'string',
      description: describe('authTokens', 'Comma-separated bearer tokens for token-whitelist (visible in ps: prefer the env var)', 'none'),
    })
    .option('batch-size', { type: 'string', description: describe('batchSize', 'Changes per get_changes page') })
    .option('retention-horizon-ms', { type: 'string', description: describe('retentionHorizonMs', 'Tombstone retention in ms (30 days)') })
    .group(['host', 'port', 'base-path', 'cors-origin', 'auth-mode', 'auth-tokens', 'batch-size', 'retention-horizon-ms'], 'Server:');
}

/** Help line of an S3 setting. */
function describeS3(key: S3SettingKey, text: string, shownDefault = 'none'): string {
  return `${text} [env ${S3_SETTINGS[key].env}] [default: ${shownDefault}]`;
}

/** Flags of every command: where the data and the archive are, the config file, logging. */
function commonOptions<T>(args: Argv<T>) {
  return args
    .option('data-dir', { type: 'string', description: describe('dataDir', 'Directory of the database stores, relative to the working directory') })
    .option('s3-bucket', { type: 'string', description: describeS3('bucket', 'Archive every database in this S3 bucket (turns S3 on)') })
    .option('s3-region', { type: 'string', description: describeS3('region', 'Region of the bucket', 'us-east-1') })
    .option('s3-endpoint', { type: 'string', description: describeS3('endpoint', 'Endpoint URL of an S3-compatible store (MinIO, R2 ...)', "AWS's") })
    .option('s3-access-key-id', { type: 'string', description: describeS3('accessKeyId', "Access key id; without both keys the AWS SDK's default credential chain is used") })
    .option('s3-secret-access-key', { type: 'string', description: describeS3('secretAccessKey', 'Secret access key (visible in ps: prefer the env var)') })
    .option('s3-force-path-style', { type: 'string', description: describeS3('forcePathStyle', 'Path-style bucket URLs, as most S3-compatible stores need (true or false)', 'false') })
    .option('s3-key-prefix', { type: 'string', description: describeS3('keyPrefix', 'Prefix of every key written, e.g. sync/', '""') })
    // The server's S3 behaviour: taken (and ignored) by restore and export too, so a server's command line can be reused.
    .option('s3-durability', {
      type: 'string',
      description: describe('s3Durability', 'With S3: async (acknowledge once stored locally, archive right behind) or ack (acknowledge once in S3)'),
    })
    .option('disk-eviction', { type: 'string', description: describe('diskEviction', 'With S3: remove idle, fully archived databases from disk (true or false)') })
    .option('disk-eviction-idle-ms', { type: 'string', description: describe('diskEvictionIdleMs', 'With S3: idle time before eviction, in ms (1 h)') })
    .option('redis-url', { type: 'string', description: describe('redisUrl', 'Join a cluster through this Redis (redis://host:6379): any node serves any database', 'none (one node)') })
    .option('node-id', { type: 'string', description: describe('nodeId', "This node's name in a cluster (logs, /status, metrics)", 'host:pid:random') })
    .option('config', { type: 'string', description: 'JSON config file [default: ./sync-coordinator.json if it exists]' })
    .option('debug', { type: 'string', description: `Enable debug logging to stderr for these namespaces [default when given: ${DEFAULT_DEBUG}]` })
    .group(['data-dir', 's3-bucket', 's3-region', 's3-endpoint', 's3-access-key-id', 's3-secret-access-key', 's3-force-path-style', 's3-key-prefix'], 'Storage:')
    .group(['s3-durability', 'disk-eviction', 'disk-eviction-idle-ms'], 'Server with S3:')
    .group(['redis-url', 'node-id'], 'Cluster:')
    .group(['config', 'debug', 'help', 'version'], 'Options:');
}

/** The parsed command line, as far as main() reads it. */
interface Args {
  _: (string | number)[];
  db?: string;
  force?: boolean;
  out?: string;
  config?: string;
  debug?: string;
  [flag: string]: unknown;
}

async function parseArgs(): Promise<Args> {
  const args = yargs(hideBin(process.argv))
    .scriptName(NAME)
    .usage(
      `$0 [options]\n$0 restore <db> [--force]\n$0 export <db> [--out FILE]\n$0 stats [--url URL] [--token T] [--json]\n$0 inspect <db> [--data-dir DIR] [--json]\n\n` +
        'Runs a Quereus sync coordinator over HTTP and WebSocket, restores or exports one database,\n' +
        "prints a running server's figures, or shows what one database of a stopped server holds.\n" +
        'Precedence: flags > env vars > config file > defaults.',
    )
    // Each command's own flags first, so its help lists them first.
    .command('$0', 'Run the sync coordinator (the default command)', (command) => commonOptions(serveOptions(command)))
    .command('restore <db>', 'Restore database <db> from the S3 archive into the data directory (no server may be running on it)', (command) =>
      commonOptions(command
        .positional('db', { type: 'string', description: 'Database id' })
        .option('force', { type: 'boolean', description: 'Restore even though <db> is on disk: its directory is moved aside (<dir>.replaced-<time>) first' })
        .group(['force'], 'Restore:')))
    .command('export <db>', 'Write the snapshot of database <db> as NDJSON (the chunks of GET <base-path>/<db>/snapshot), from the data directory or else the S3 archive', (command) =>
      commonOptions(command
        .positional('db', { type: 'string', description: 'Database id' })
        .option('out', { alias: 'o', type: 'string', description: 'File to write (replaced once complete; - for stdout) [default: stdout]' })
        .group(['out'], 'Export:')))
    .command('stats', "Print a running server's figures (its /status and /metrics): uptime, version, node, databases, clients, traffic, archive, cluster", (command) => command
      .option('url', { type: 'string', description: "The server's base URL, mount path included [default: http://127.0.0.1:<port><base-path> from the settings the server would read: env and config file]" })
      .option('token', { type: 'string', description: 'Bearer token for a server with statusTokens (visible in ps) [default: without --url, the first of router.statusTokens in the config file]' })
      .option('json', { type: 'boolean', description: 'Print {url, fetchedAt, status (the /status data as fetched), metrics} as JSON' })
      .option('timeout-ms', { type: 'string', description: 'Give up on the server after this long, in ms [default: 10000]' })
      .option('config', { type: 'string', description: 'JSON config file, for the default URL and token [default: ./sync-coordinator.json if it exists]' })
      .group(['url', 'token', 'json', 'timeout-ms', 'config'], 'Stats:')
      .group(['help', 'version'], 'Options:'))
    .command('inspect <db>', "Show what database <db> holds in a stopped server's data directory: tables, rows, column versions, tombstones, last stamp, size on disk", (command) => command
      .positional('db', { type: 'string', description: 'Database id' })
      .option('data-dir', { type: 'string', description: describe('dataDir', 'Data directory of the stopped server') })
      .option('json', { type: 'boolean', description: 'Print the figures as JSON' })
      .option('config', { type: 'string', description: 'JSON config file, for the data directory [default: ./sync-coordinator.json if it exists]' })
      .group(['data-dir', 'json', 'config'], 'Inspect:')
      .group(['help', 'version'], 'Options:'));
  // No yargs defaults anywhere: a flag the user did not type must not hide env or file values.
  return await args
    // Last one wins, as with most CLIs, instead of an array no setting accepts; "--no-port" is an unknown flag, not port=false.
    .parserConfiguration({ 'duplicate-arguments-array': false, 'boolean-negation': false })
    .strict()
    .version(packageVersion())
    .alias('version', 'v')
    .help()
    .alias('help', 'h')
    .epilog(
      'Exit codes: 0 stopped by SIGINT/SIGTERM (server) or done (other commands), 1 failed (stats: the server cannot be asked; inspect: the database is not there or a server holds the directory), 2 invalid configuration or arguments.',
    )
    .wrap(null)
    .fail((message, err) => die(EXIT_USAGE, `${message ?? firstLine(err)} (see ${NAME} --help)`))
    .parseAsync() as Args;
}

/** The texts of the settings' flags, as typed. */
function flagTexts(argv: Args): ConfigText {
  const text = (flag: string): string | undefined => argv[flag] as string | undefined;
  return {
    host: text('host'),
    port: text('port'),
    basePath: text('basePath'),
    dataDir: text('dataDir'),
    corsOrigin: text('corsOrigin'),
    authMode: text('authMode'),
    authTokens: text('authTokens'),
    batchSize: text('batchSize'),
    retentionHorizonMs: text('retentionHorizonMs'),
    s3Durability: text('s3Durability'),
    diskEviction: text('diskEviction'),
    diskEvictionIdleMs: text('diskEvictionIdleMs'),
    redisUrl: text('redisUrl'),
    nodeId: text('nodeId'),
    s3: {
      bucket: text('s3Bucket'),
      region: text('s3Region'),
      endpoint: text('s3Endpoint'),
      accessKeyId: text('s3AccessKeyId'),
      secretAccessKey: text('s3SecretAccessKey'),
      forcePathStyle: text('s3ForcePathStyle'),
      keyPrefix: text('s3KeyPrefix'),
    },
  };
}

async function main(): Promise<void> {
  // The AWS SDK warns on every Node version it will drop one day, through
  // process warnings on stderr, which an operator cannot act on at run time.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const argv = await parseArgs();

  ignoreBrokenPipes();
  if (argv.debug !== undefined) {
    try {
      createDebug.enable(debugNamespaces(argv.debug));
    } catch (err) {
      die(EXIT_USAGE, firstLine(err));
    }
  }

  // The other commands' modules (cli-progress, the archive and admin code)
  // load only when their command runs: a server would hold them all its life.
  const command = argv._[0];
  if (command === 'restore' || command === 'export') {
    await runArchiveCommand(command, argv);
    return;
  }
  if (command === 'stats') {
    await (await import('./stats.js')).runStatsCommand(argv as StatsArgs);
    return;
  }
  if (command === 'inspect') {
    await (await import('./inspect.js')).runInspectCommand(argv as InspectArgs);
    return;
  }

  let server: CoordinatorServer;
  let resolved: ResolvedConfig;
  try {
    resolved = resolveConfig({ overrides: parseCliOverrides(flagTexts(argv)), configFile: argv.config });
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

/**
 * `restore <db>` and `export <db>`: the configuration as the server would
 * load it (so the same data directory, archive and merge rules), then the
 * operation of durability/offline.ts with progress on stderr, and one
 * summary line.
 */
async function runArchiveCommand(command: 'restore' | 'export', argv: Args): Promise<void> {
  const label = `${NAME} ${command}`;
  const [{ exportSnapshot, openS3Archive, replicaOptionsOf, restoreIntoDataDir }, { createProgress }] =
    await Promise.all([import('../lib/durability/offline.js'), import('./progress.js')]);
  let databaseId: string;
  let resolved: ResolvedConfig;
  let replicaOptions: ReplicaOptions;
  if (command === 'export' && argv.out !== undefined && argv.out !== '-') {
    // Before anything is read or written: the file is replaced once complete, so these would fail only at the end.
    if (argv.out === '') die(EXIT_USAGE, `${label}: --out: expected a file path, or - for stdout, got ""`);
    if (statSync(resolvePath(argv.out), { throwIfNoEntry: false })?.isDirectory()) die(EXIT_USAGE, `${label}: --out: ${JSON.stringify(resolvePath(argv.out))} is a directory, not a file`);
  }
  try {
    databaseId = validateDatabaseId(argv.db, '<db>');
    resolved = resolveConfig({ overrides: parseCliOverrides(flagTexts(argv)), configFile: argv.config, serving: false });
    replicaOptions = replicaOptionsOf(parseOptions(routerOptionsOf(resolved.config)));
  } catch (err) {
    if (err instanceof ConfigError || err instanceof TypeError || isSyncError(err)) die(EXIT_USAGE, firstLine(err));
    throw err;
  }
  // The server's own warnings matter here too (an S3 setting without a bucket explains "no archive").
  for (const warning of resolved.warnings) warn(warning);
  const { config } = resolved;
  const noArchive = `no archive is configured: set ${S3_SETTINGS.bucket.env}, ${S3_SETTINGS.bucket.flag} or "s3.bucket" in the config file`;
  if (command === 'restore' && !config.s3) die(EXIT_USAGE, `${label}: ${noArchive}`);
  const archive = config.s3 ? openS3Archive(config.s3) : undefined;
  const toStdout = command === 'export' && (argv.out === undefined || argv.out === '-');
  // A bar redrawn on the terminal the NDJSON scrolls through would garble both.
  const progress = createProgress(`${label} ${databaseId}`, `${command} ${databaseId}`, toStdout && process.stdout.isTTY ? 'lines' : 'auto');
  const directory = databaseDirectory(config.dataDir, databaseId);
  // The restore cannot be cut short cleanly; say what is left, in one line.
  const onSignal = (signal: string): void => {
    progress.stop();
    const aside = command === 'restore' && argv.force === true ? `; the copy that was on disk may be in ${directory}.replaced-*` : '';
    if (!toStdout && argv.out !== undefined) rmSync(partialOf(resolvePath(argv.out)), { force: true });
    die(EXIT_FAILURE, `${label}: interrupted (${signal}) before it finished; nothing was ${command === 'restore' ? `restored into ${directory}` : 'exported'}${aside}`);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const onSkip = (key: string, reason: string): void => progress.note(`${NAME}: warning: skipped unreadable snapshot ${key}: ${reason}`);
  const onRestoreProgress = restoreProgressPrinter(progress);
  const began = performance.now();
  const seconds = (): string => `${((performance.now() - began) / 1000).toFixed(1)} s`;

  let summary: string;
  let summaryStream: NodeJS.WriteStream = process.stdout;
  try {
    if (command === 'restore') {
      const result = await restoreIntoDataDir({
        archive: archive!, dataDir: config.dataDir, databaseId, force: argv.force === true, replicaOptions, onSkip, onProgress: onRestoreProgress,
      });
      progress.stop();
      summary = `${NAME}: restored ${databaseId} from ${archive!.location} into ${result.directory}: ${restoreFigures(result)} in ${seconds()}` +
        (result.movedAside ? `; the copy that was on disk is now ${result.movedAside}` : '');
    } else {
      const written = await exportTo(toStdout ? undefined : resolvePath(argv.out!), (out) => exportSnapshot({
        ...(archive ? { archive } : {}), dataDir: config.dataDir, databaseId, out, replicaOptions, onSkip,
        onProgress: (p) => {
          if (p.phase === 'restore') onRestoreProgress(p.restore);
          else if (p.entries === 0) progress.phase('writing', 'entries', p.total);
          else progress.update(p.entries, p.total);
        },
      }));
      progress.stop();
      if (toStdout) summaryStream = process.stderr;
      const from = written.source === 'local' ? `the store in ${directory}` : `${archive!.location} (${restoreFigures(written.restore!)})`;
      summary = `${NAME}: exported ${databaseId} from ${from} to ${toStdout ? 'stdout' : resolvePath(argv.out!)}: ` +
        `${written.tables} tables, ${written.entries} entries, ${written.tombstones} tombstones, ${written.chunks} chunks, ${formatBytes(written.bytes)} in ${seconds()}`;
    }
  } catch (err) {
    progress.stop();
    await archive?.close().catch(() => undefined);
    if (err instanceof ConfigError && err.setting === 'dataDir') {
      const hint = command === 'export' && /in use/.test(err.problem)
        ? ` (or GET ${config.basePath === '/' ? '' : config.basePath}/${databaseId}/snapshot from that server, or point ${CONFIG_SETTINGS.dataDir.flag} at an empty directory to export from the archive)`
        : '';
      die(EXIT_FAILURE, `${settingLabel(resolved, 'dataDir')}: ${err.problem}${hint}`);
    }
    die(EXIT_FAILURE, `${label}: ${firstLine(err)}`);
  }
  await archive?.close();
  // Exit once the summary is out: an idle keep-alive socket of the SDK must not hold the process.
  summaryStream.write(`${summary}\n`, () => process.exit(EXIT_OK));
}

/** Shows a restore's phases: the snapshot (entries, no total known in advance), then the batches after it. */
function restoreProgressPrinter(progress: Progress): (p: RestoreProgress) => void {
  let phase: RestoreProgress['phase'] | undefined;
  return (p) => {
    if (p.phase !== phase) {
      phase = p.phase;
      // A restore without batches to replay has nothing to show for them.
      if (p.phase === 'batches' && p.total === 0) return progress.stop();
      if (p.phase === 'snapshot') progress.phase('loading snapshot', 'entries');
      else progress.phase('replaying batches', 'batches', p.total);
    }
    if (p.done > 0) progress.update(p.done, p.total);
  };
}

/** `snapshot <key> (N entries) + M batches (T transactions), newest change <time>` of a restore. */
function restoreFigures(result: RestoreResult): string {
  const parts = [
    result.snapshot ? `snapshot ${result.snapshot} (${result.entries} store entries)` : 'no snapshot',
    `${result.batches} batches (${result.transactions} transactions)`,
  ];
  const newest = result.stamp ? `, newest change stamped ${new Date(hlcWallTime(result.stamp)).toISOString()}` : '';
  const skipped = result.skipped.length > 0 ? `, ${result.skipped.length} unreadable snapshot${result.skipped.length === 1 ? '' : 's'} skipped` : '';
  return `${parts.join(' + ')}${newest}${skipped}`;
}

/**
 * Runs `write` against `path` (a temporary file beside it, renamed over it
 * once complete, so a failed export never leaves a truncated file that looks
 * whole) or against stdout when `path` is undefined.
 */
async function exportTo<T>(path: string | undefined, write: (out: Writable) => Promise<T>): Promise<T> {
  if (path === undefined) return write(process.stdout);
  const partial = partialOf(path);
  const file = createWriteStream(partial, { flags: 'wx' });
  try {
    await once(file, 'open');
    const result = await write(file);
    await new Promise<void>((resolve, reject) => {
      file.once('error', reject);
      file.end(resolve);
    });
    await rename(partial, path);
    return result;
  } catch (err) {
    file.destroy();
    await rm(partial, { force: true });
    throw err;
  }
}

/** Where an export to `path` is written until it is complete. */
function partialOf(path: string): string {
  return `${path}.partial-${process.pid}`;
}

main().catch((err: unknown) => die(EXIT_FAILURE, `${NAME}: ${firstLine(err)}`));
