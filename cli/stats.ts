/**
 * `sync-coordinator stats`: a running server's figures (lib/admin/server-stats.ts)
 * as a short report, or as JSON with --json.
 */
import { ConfigError, resolveConfig } from '../lib/config/load-config.js';
import { fetchServerStats, parseBaseUrl, StatsError, type ServerStats } from '../lib/admin/server-stats.js';
import { die, EXIT_FAILURE, EXIT_USAGE, finish, firstLine, formatBytes, formatCount, formatDuration, NAME } from './shared.js';

/** The flags `stats` reads. */
export interface StatsArgs {
  url?: string;
  token?: string;
  json?: boolean;
  timeoutMs?: string;
  config?: string;
}

/** Runs the command and exits: 0 with the figures on stdout, 1 when the server cannot be asked, 2 for bad arguments. */
export async function runStatsCommand(argv: StatsArgs): Promise<void> {
  const label = `${NAME} stats`;
  let url: string;
  let token = argv.token;
  let timeoutMs: number | undefined;
  try {
    if (argv.timeoutMs !== undefined) {
      timeoutMs = Number(argv.timeoutMs);
      if (!/^\d+$/.test(argv.timeoutMs.trim()) || timeoutMs < 1) {
        throw new TypeError(`--timeout-ms: expected a whole number of milliseconds above 0, got ${JSON.stringify(argv.timeoutMs)}`);
      }
    }
    if (token !== undefined && token === '') throw new TypeError('--token: expected a bearer token, got an empty string');
    if (argv.url !== undefined) {
      url = parseBaseUrl(argv.url, '--url');
    } else {
      // The server the configuration describes, on this machine (same settings, env and config file as the server).
      const { config } = resolveConfig({ configFile: argv.config, serving: false });
      if (config.port === 0) throw new TypeError(`--url: the configured port is 0 (any free port), so the server's URL is unknown; pass --url http://<host>:<port>${config.basePath}`);
      url = parseBaseUrl(`http://${localHost(config.host)}:${config.port}${config.basePath === '/' ? '' : config.basePath}`, '--url');
      // A token from the configuration goes only to the server it configures.
      token ??= config.router?.statusTokens?.[0];
    }
  } catch (err) {
    if (err instanceof ConfigError || err instanceof TypeError) die(EXIT_USAGE, `${label}: ${firstLine(err)}`);
    throw err;
  }
  let stats: ServerStats;
  try {
    stats = await fetchServerStats({ url, ...(token !== undefined ? { token } : {}), ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
  } catch (err) {
    if (err instanceof StatsError) die(EXIT_FAILURE, `${label}: ${firstLine(err)}`);
    throw err;
  }
  finish(argv.json ? `${JSON.stringify(stats, null, 2)}\n` : formatStats(stats));
}

/** Where to reach a server listening on `host` from this machine: the loopback for "every interface". */
function localHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

/** The report `stats` prints without --json. */
export function formatStats(stats: ServerStats): string {
  const { status, metrics: m } = stats;
  const lines: string[] = [`sync coordinator at ${stats.url} (${stats.fetchedAt})`];
  const section = (title: string, facts: [string, string | undefined][]): void => {
    const shown = facts.filter((f): f is [string, string] => f[1] !== undefined);
    if (shown.length === 0) return;
    if (title !== '') lines.push('', title);
    const width = Math.max(...shown.map(([name]) => name.length));
    for (const [name, value] of shown) lines.push(`  ${name.padEnd(width)}  ${value}`);
  };
  const started = Date.parse(stats.fetchedAt) - status.uptime * 1000;
  const version = typeof status.version === 'string' ? status.version : 'not reported by this server';
  section('', [
    ['uptime', `${formatDuration(status.uptime)} (since ${new Date(started).toISOString()})`],
    ['version', m?.nodeVersion ? `${version}, on Node.js ${m.nodeVersion}` : version],
    ['node', status.cluster ? status.cluster.node : 'single node (no cluster)'],
    ['open databases', formatCount(status.openStores)],
    ['clients', formatCount(status.connectedClients)],
  ]);
  if (m) {
    section('traffic since start', [
      ['connections', m.connectionsTotal === undefined ? undefined : formatCount(m.connectionsTotal)],
      ['changes', m.changesReceived === undefined ? undefined
        : `${formatCount(m.changesReceived)} received, ${formatCount(m.changesApplied ?? 0)} applied, ${formatCount(m.changesRejected ?? 0)} rejected, ${formatCount(m.changesPushed ?? 0)} change sets pushed`],
      ['apply', m.applyMessages === undefined ? undefined
        : `${formatCount(m.applyMessages)} messages${m.applyMeanSeconds === undefined ? '' : `, ${milliseconds(m.applyMeanSeconds)} each on average`}`],
      ['snapshots', m.snapshotRequests === undefined ? undefined : formatCount(m.snapshotRequests)],
      ['refused', m.limitRefusals === undefined && m.authFailures === undefined ? undefined
        : `${formatCount(m.limitRefusals ?? 0)} by limits, ${formatCount(m.authFailures ?? 0)} failed authentications`],
      ['slow readers', m.laggingSessions === undefined ? undefined : `${formatCount(m.laggingSessions)} times a socket stopped getting pushes`],
    ]);
    section('process', [
      ['memory', m.residentMemoryBytes === undefined ? undefined
        : `${formatBytes(m.residentMemoryBytes)} resident${m.heapUsedBytes === undefined ? '' : `, ${formatBytes(m.heapUsedBytes)} heap used`}`],
      ['cpu', m.cpuSeconds === undefined ? undefined : `${m.cpuSeconds.toFixed(1)} s`],
      ['open files', m.openFileDescriptors === undefined ? undefined : formatCount(m.openFileDescriptors)],
      ['event-loop lag', m.eventLoopLagSeconds === undefined ? undefined : milliseconds(m.eventLoopLagSeconds)],
    ]);
  } else {
    lines.push('', `metrics: not available (${stats.metricsError ?? 'unknown reason'})`);
  }
  const a = status.archive;
  if (a) {
    section(`archive (${a.mode})`, [
      ['open databases', formatCount(a.openDatabases)],
      ['not archived yet', `${formatCount(a.pendingTransactions)} transactions, ${formatBytes(a.outboxBytes)}, oldest ${a.lagSeconds.toFixed(1)} s`],
      ['last upload', a.lastUploadAt === undefined ? 'none yet' : new Date(a.lastUploadAt).toISOString()],
      ['last snapshot', a.lastSnapshotAt === undefined ? 'none yet' : new Date(a.lastSnapshotAt).toISOString()],
      ['restores', formatCount(a.restores)],
      ['evictions', formatCount(a.evictions)],
      ['last error', a.lastError],
    ]);
  }
  const c = status.cluster;
  if (c) {
    section(`cluster (node ${c.node})`, [
      ['lag', `${c.lagSeconds.toFixed(1)} s (the largest over open databases)`],
      ['log retention', formatDuration(c.logRetentionMs / 1000)],
    ]);
    const dbs = Object.entries(c.databases);
    if (dbs.length > 0) {
      const width = Math.max(...dbs.map(([db]) => db.length));
      for (const [db, d] of dbs) {
        lines.push(`    ${db.padEnd(width)}  position ${d.position}, lag ${d.lagSeconds === null ? 'unknown' : `${d.lagSeconds.toFixed(1)} s`}${d.following ? '' : ', NOT following its log'}`);
      }
    }
  }
  return `${lines.join('\n')}\n`;
}

function milliseconds(seconds: number): string {
  const ms = seconds * 1000;
  return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(0)} ms`;
}
