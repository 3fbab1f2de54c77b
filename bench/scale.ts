/**
 * The scale figures of `npm run bench` (`--scale`): how the coordinator's
 * cost grows with the work it holds, each figure against a coordinator of
 * its own (the built CLI, a fresh data dir, per-address and rate limits
 * off), started with a raised file descriptor limit:
 *
 * - connections: idle authenticated WebSockets (10,000 over 100 databases),
 *   RSS and heap per socket, then one write per database pushed to all of
 *   them (send → receipt, and send → last receipt);
 * - fanout: 1,000 subscribers on one database, serial writes, send → last
 *   subscriber;
 * - databases: 10,000 databases touched once each (one small write), then
 *   100 hot ones, with the default maxOpenStores: throughput and store churn
 *   (sync_store_opens_total / sync_store_closes_total);
 * - size: apply throughput on an empty database, then on the same database
 *   grown to --size-entries entries (built through the library, the Replica
 *   API in this process, while no coordinator runs), snapshot entries/s, RSS.
 *
 * The sockets of the first two live in load generator processes
 * (bench/scale-clients.ts, --scale-clients of them), also with a raised
 * limit. Figures only, never pass/fail.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type WebSocket from 'ws';
import { TestSite } from '../spec/helpers/changes.js';
import { DEFAULTS } from '../lib/config/options.js';
import { randomSiteId } from '../lib/protocol/site-id.js';
import { validateChangeSets } from '../lib/protocol/validate.js';
import { openLevelReplica } from '../lib/replica/open-level.js';
import { databaseDirectory } from '../lib/storage/database-id.js';
import { childEnv, connect, fmt, nextMessage, open, percentile, phase, ROOT, scrapeMetrics, sleep, startProcess, stopProcess, type Coordinator } from './common.js';

export const SCALE_FIGURES = ['connections', 'fanout', 'databases', 'size'] as const;
export type ScaleFigure = (typeof SCALE_FIGURES)[number];

/** What the scale figures measure, from the command line (see parseScaleOptions). */
export interface ScaleOptions {
  figures: ScaleFigure[];
  /** Idle sockets, spread evenly over `connectionDatabases` databases. */
  connections: number;
  connectionDatabases: number;
  /** Bursts of one write per database pushed to every idle socket. */
  pushRounds: number;
  fanoutSubscribers: number;
  /** Serial writes to the fan-out database. */
  fanoutWrites: number;
  /** Databases touched once each. */
  databases: number;
  hotDatabases: number;
  /** Serial messages per hot database, of `hotChangesPerMessage` changes. */
  hotMessages: number;
  hotChangesPerMessage: number;
  /** Entries of the large database. */
  sizeEntries: number;
  /** Serial messages of 50 changes, at the start and at the end. */
  sizeMessages: number;
  /** Load generator processes holding the idle and fan-out sockets. */
  clients: number;
}

/**
 * Reads `--scale LIST` (`all`, `none`, or a comma-separated list of
 * connections, fanout, databases, size; default `all` with --quick, `none`
 * otherwise: the full figures take several minutes), `--size-entries N`,
 * `--scale-connections N` and `--scale-clients N`. --quick makes every size
 * tiny. Throws an Error naming the flag and the value it got.
 */
export function parseScaleOptions(args: string[], quick: boolean): ScaleOptions {
  const value = (name: string): string | undefined => {
    const i = args.indexOf(`--${name}`);
    if (i < 0) return undefined;
    const text = args[i + 1];
    if (text === undefined || text.startsWith('--')) throw new Error(`--${name} needs a value`);
    return text;
  };
  const integer = (name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const text = value(name);
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `of at least ${fmt(min)}` : `from ${fmt(min)} to ${fmt(max)}`;
      throw new Error(`--${name} must be an integer ${range}, got ${JSON.stringify(text)}`);
    }
    return n;
  };
  const list = value('scale') ?? (quick ? 'all' : 'none');
  let figures: ScaleFigure[];
  if (list === 'all') figures = [...SCALE_FIGURES];
  else if (list === 'none') figures = [];
  else {
    const names = list.split(',').map((name) => name.trim());
    const unknown = names.filter((name) => !(SCALE_FIGURES as readonly string[]).includes(name));
    if (unknown.length > 0 || names.length === 0) {
      throw new Error(`--scale must be "all", "none" or a comma-separated list of ${SCALE_FIGURES.join(', ')}; got ${JSON.stringify(list)}`);
    }
    figures = SCALE_FIGURES.filter((name) => names.includes(name));
  }
  const sizeMessages = quick ? 10 : 200;
  const connections = integer('scale-connections', quick ? 200 : 10_000, 1);
  return {
    figures,
    connections,
    connectionDatabases: quick ? Math.min(4, connections) : Math.min(100, connections),
    pushRounds: quick ? 2 : 5,
    fanoutSubscribers: quick ? 50 : 1000,
    fanoutWrites: quick ? 20 : 200,
    databases: quick ? 120 : 10_000,
    hotDatabases: quick ? 10 : 100,
    hotMessages: quick ? 5 : 50,
    hotChangesPerMessage: 10,
    // The loads at the start and the end write 2 × sizeMessages × 50 of them.
    sizeEntries: integer('size-entries', quick ? 20_000 : 10_000_000, sizeMessages * 50),
    sizeMessages,
    clients: integer('scale-clients', 1, 1, 16),
  };
}

/** p50 / p99 / max of a set of latencies, in ms. */
export interface Spread { p50: number; p99: number; max: number; count: number }

export interface ConnectionsFigures {
  connections: number;
  databases: number;
  /** Open file descriptors the coordinator may hold (its soft limit, after the raise). */
  fdLimit: number;
  /** Opening every socket (handshake, then one get_changes), s. */
  connectSeconds: number;
  /**
   * Memory with a writer per database connected (every database open)
   * before the idle sockets, and with them, each read twice: as it stands
   * (`settled`, a few seconds after the last connect) and right after a full
   * garbage collection (`collected`: what the sockets keep).
   */
  memory: Record<'settled' | 'collected', {
    rssBeforeMb: number;
    rssAfterMb: number;
    rssPerConnectionKb: number;
    heapPerConnectionKb: number;
    externalPerConnectionKb: number;
  }>;
  /** Each receipt: its write's send → its arrival. */
  push: Spread;
  /** Each write: send → its last subscriber. */
  pushLast: Spread;
  /** Each burst of one write per database: first send → last receipt, ms. */
  burstMs: number[];
  pushesExpected: number;
  pushesReceived: number;
}

export interface FanoutFigures {
  subscribers: number;
  writes: number;
  /** Each write: send → its last subscriber. */
  last: Spread;
  /** Each receipt. */
  receipt: Spread;
  pushesExpected: number;
  pushesReceived: number;
}

export interface StoreChurn { opens: number; closes: number }

export interface DatabasesFigures {
  databases: number;
  maxOpenStores: number;
  touch: {
    changesPerSec: number;
    seconds: number;
    /** Connect, handshake, one write, its apply_result. */
    latency: Spread;
    churn: StoreChurn;
    openStoresAfter: number;
    rssMb: number;
  };
  hot: {
    databases: number;
    changes: number;
    changesPerSec: number;
    ack: Spread;
    /** Over the whole phase: the writers' handshakes reopen the hot databases. */
    churn: StoreChurn;
    rssMb: number;
  };
}

/** Peak RSS while something ran, and of it the peak of anonymous memory (RssAnon: heap and native allocations, without LevelDB's memory-mapped table files), MB. */
export interface PeakMemory { peakRssMb: number; peakAnonMb: number }

export interface ApplyLoadFigures extends PeakMemory { changes: number; changesPerSec: number; ack: Spread }

export interface SizeFigures {
  entries: number;
  start: ApplyLoadFigures & { entriesBefore: number };
  build: { entries: number; seconds: number; entriesPerSec: number };
  diskBytes: number;
  /** The coordinator's first handshake on the large database (it opens it). */
  openMs: number;
  rssIdleMb: number;
  rssAfterOpenMb: number;
  end: ApplyLoadFigures & { entriesBefore: number };
  snapshot: PeakMemory & { entries: number; seconds: number; entriesPerSec: number };
}

export interface ScaleResults {
  options: ScaleOptions;
  connections?: ConnectionsFigures;
  fanout?: FanoutFigures;
  databases?: DatabasesFigures;
  size?: SizeFigures;
}

/** What every figure's coordinator and load generator share. */
interface ScaleContext {
  options: ScaleOptions;
  /** A directory this module may fill; removed by the caller. */
  dataDir: string;
  nodeArgs: string[];
}

/**
 * Runs the figures of `options.figures`, one after another, each with its
 * own coordinator under `dataDir`; every process it starts is stopped when
 * it returns or throws.
 */
export async function runScaleBench(options: ScaleOptions, dataDir: string, nodeArgs: string[]): Promise<ScaleResults> {
  const ctx: ScaleContext = { options, dataDir: join(dataDir, 'scale'), nodeArgs };
  await mkdir(ctx.dataDir, { recursive: true });
  const results: ScaleResults = { options };
  for (const figure of options.figures) {
    phase(`scale: ${figure}`);
    if (figure === 'connections') results.connections = await connectionsFigure(ctx);
    if (figure === 'fanout') results.fanout = await fanoutFigure(ctx);
    if (figure === 'databases') results.databases = await databasesFigure(ctx);
    if (figure === 'size') results.size = await sizeFigure(ctx);
  }
  return results;
}

/** The lines of the scale table (empty when no figure ran). */
export function scaleTable(results: ScaleResults): string[] {
  const { connections: c, fanout: f, databases: d, size: s } = results;
  if (!c && !f && !d && !s) return [];
  const spread = (x: Spread, digits = 1): string => `${fmt(x.p50, digits)} / ${fmt(x.p99, digits)} / ${fmt(x.max, digits)}`;
  const lines = ['Scale: each figure against a coordinator of its own (fresh data dir, limits off, file descriptor limit raised).', ''];
  lines.push('| figure | result |', '|---|---|');
  if (c) {
    const { settled, collected } = c.memory;
    lines.push(`| ${fmt(c.connections)} idle authenticated sockets over ${fmt(c.databases)} databases | RSS ${fmt(settled.rssBeforeMb, 1)} → ${fmt(settled.rssAfterMb, 1)} MB: ${fmt(settled.rssPerConnectionKb, 1)} KB per socket (JS heap ${fmt(settled.heapPerConnectionKb, 1)} KB); after a full GC ${fmt(collected.rssPerConnectionKb, 1)} KB per socket (JS heap ${fmt(collected.heapPerConnectionKb, 1)} KB, external ${fmt(collected.externalPerConnectionKb, 1)} KB); connected in ${fmt(c.connectSeconds, 1)} s |`);
    lines.push(`| one write per database, pushed to all ${fmt(c.connections)} (${c.burstMs.length} bursts) | send → receipt p50/p99/max ${spread(c.push)} ms; send → last subscriber ${spread(c.pushLast)} ms; burst → last receipt ${c.burstMs.map((ms) => fmt(ms, 0)).join(', ')} ms; ${fmt(c.pushesReceived)} of ${fmt(c.pushesExpected)} pushes |`);
  }
  if (f) {
    lines.push(`| fan-out: ${fmt(f.subscribers)} subscribers on one database, ${fmt(f.writes)} serial writes | send → last subscriber p50/p99/max ${spread(f.last)} ms; send → receipt ${spread(f.receipt)} ms; ${fmt(f.pushesReceived)} of ${fmt(f.pushesExpected)} pushes |`);
  }
  if (d) {
    lines.push(`| ${fmt(d.databases)} databases touched once (one write each), maxOpenStores ${d.maxOpenStores} | ${fmt(d.touch.changesPerSec)} changes/s (${fmt(d.touch.seconds, 1)} s); connect → apply_result p50/p99 ${fmt(d.touch.latency.p50, 1)} / ${fmt(d.touch.latency.p99, 1)} ms; ${fmt(d.touch.churn.opens)} opens, ${fmt(d.touch.churn.closes)} closes; RSS ${fmt(d.touch.rssMb, 1)} MB |`);
    lines.push(`| then ${fmt(d.hot.databases)} hot databases (${fmt(d.hot.changes)} changes, ${results.options.hotChangesPerMessage}/message, serial per database) | ${fmt(d.hot.changesPerSec)} changes/s; ack p50/p99 ${fmt(d.hot.ack.p50, 1)} / ${fmt(d.hot.ack.p99, 1)} ms; ${fmt(d.hot.churn.opens)} opens, ${fmt(d.hot.churn.closes)} closes; RSS ${fmt(d.hot.rssMb, 1)} MB |`);
  }
  if (s) {
    const load = (x: ApplyLoadFigures): string => `${fmt(x.changesPerSec)} changes/s, ack p50/p99 ${fmt(x.ack.p50, 2)} / ${fmt(x.ack.p99, 2)} ms, peak RSS ${fmt(x.peakRssMb, 1)} MB (anonymous ${fmt(x.peakAnonMb, 1)} MB)`;
    lines.push(`| apply, 50 changes/message serial, at the start (${fmt(s.start.entriesBefore)} entries) | ${load(s.start)} |`);
    lines.push(`| the same at the end (${fmt(s.end.entriesBefore)} entries; built through the library at ${fmt(s.build.entriesPerSec)} entries/s, ${fmt(s.diskBytes / 2 ** 20)} MiB on disk) | ${load(s.end)}: ${fmt(s.end.changesPerSec / s.start.changesPerSec, 2)} of the start; open (first handshake) ${fmt(s.openMs)} ms, RSS idle ${fmt(s.rssIdleMb, 1)} MB, after the open ${fmt(s.rssAfterOpenMb, 1)} MB |`);
    lines.push(`| snapshot of ${fmt(s.snapshot.entries)} entries over WebSocket | ${fmt(s.snapshot.entriesPerSec)} entries/s (${fmt(s.snapshot.seconds, 1)} s), peak RSS ${fmt(s.snapshot.peakRssMb, 1)} MB (anonymous ${fmt(s.snapshot.peakAnonMb, 1)} MB) |`);
  }
  return lines;
}

/**
 * Raises the soft file descriptor limit (to 65,536, or to the hard limit
 * when that is lower and this user cannot raise it) and execs the command:
 * the bench raises it for its own processes, never the library.
 */
const RAISE_FD_LIMIT = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"';

/** The soft limit of open files of process `pid`. */
async function fdLimit(pid: number): Promise<number> {
  const limits = await readFile(`/proc/${pid}/limits`, 'utf8');
  const soft = /^Max open files\s+(\S+)/m.exec(limits)?.[1];
  return soft === 'unlimited' ? Infinity : Number(soft);
}

/** Stops with a clear message when process `pid` cannot hold `needed` descriptors. */
async function requireFds(pid: number, what: string, needed: number): Promise<number> {
  const limit = await fdLimit(pid);
  if (limit < needed) {
    throw new Error(`${what} may open ${fmt(limit)} files (ulimit -n, capped by the hard limit), and needs about ${fmt(needed)}: raise the hard limit, or pass a smaller --scale-connections`);
  }
  return limit;
}

/** The built CLI on 127.0.0.1, port 0, over `dataDir`, with the file descriptor limit raised; its config file has `settings` and `router` as its router section. */
async function startCoordinator(ctx: ScaleContext, name: string, router: Record<string, unknown>, settings: Record<string, unknown> = {}): Promise<Coordinator> {
  const dataDir = join(ctx.dataDir, name);
  await mkdir(dataDir, { recursive: true });
  const configFile = join(ctx.dataDir, `${name}.json`);
  // Everything comes from one address, and much of it from one writer: the
  // per-address and per-connection limits would measure themselves.
  await writeFile(configFile, JSON.stringify({ ...settings, router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0, maxConnections: 0, maxConnectionsPerIp: 0, ...router } }));
  const cli = join(ROOT, 'dist', 'cli', 'sync-coordinator.js');
  const argv = ['-c', RAISE_FD_LIMIT, process.execPath, ...ctx.nodeArgs, cli, '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, '--config', configFile];
  const proc = await startProcess('sh', argv, /listening on (http:\/\/\S+)/);
  return { ...proc, baseUrl: proc.url, wsUrl: `${proc.url.replace(/^http/, 'ws')}/ws` };
}

/** A port on 127.0.0.1 that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A full garbage collection in the process whose inspector listens on
 * 127.0.0.1:`port` (the DevTools protocol's HeapProfiler.collectGarbage),
 * so that memory figures count what is kept, not what waits for the collector.
 */
async function collectGarbage(port: number): Promise<void> {
  const [target] = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as { webSocketDebuggerUrl: string }[];
  const ws = await open(target!.webSocketDebuggerUrl);
  try {
    await new Promise<void>((resolve, reject) => {
      ws.on('message', (data: Buffer) => {
        const reply = JSON.parse(data.toString()) as { id?: number; error?: { message: string } };
        if (reply.id !== 1) return;
        if (reply.error) reject(new Error(`HeapProfiler.collectGarbage: ${reply.error.message}`));
        else resolve();
      });
      ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
    });
  } finally {
    ws.close();
  }
}

/** RSS of process `pid` and its anonymous part (RssAnon), MB. */
async function residentMb(pid: number): Promise<{ rss: number; anon: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, anon: kb('RssAnon') / 1024 };
}

async function rssMb(pid: number): Promise<number> {
  return (await residentMb(pid)).rss;
}

/** Runs `work` while sampling the memory of `pid` every 20 ms; returns its result and the peaks. */
async function withPeakRss<T>(pid: number, work: () => Promise<T>): Promise<[T, PeakMemory]> {
  const first = await residentMb(pid);
  const peak: PeakMemory = { peakRssMb: first.rss, peakAnonMb: first.anon };
  let running = true;
  const sampling = (async () => {
    while (running) {
      await sleep(20);
      try {
        const now = await residentMb(pid);
        peak.peakRssMb = Math.max(peak.peakRssMb, now.rss);
        peak.peakAnonMb = Math.max(peak.peakAnonMb, now.anon);
      } catch { /* the process ended */ }
    }
  })();
  try {
    return [await work(), peak];
  } finally {
    running = false;
    await sampling;
  }
}

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1) ?? NaN, count: sorted.length };
}

async function churn(baseUrl: string): Promise<StoreChurn> {
  const read = await scrapeMetrics(baseUrl);
  return { opens: read('sync_store_opens_total'), closes: read('sync_store_closes_total') };
}

const since = (before: StoreChurn, after: StoreChurn): StoreChurn => ({ opens: after.opens - before.opens, closes: after.closes - before.closes });

/** Load generator processes (bench/scale-clients.ts), driven over IPC. */
class LoadClients {
  private readonly children: ChildProcess[];
  private readonly pending = new Map<number, { resolve(value: unknown): void; reject(err: Error): void }>();
  private nextId = 0;

  private constructor(children: ChildProcess[]) {
    this.children = children;
    for (const child of children) {
      child.on('message', (reply: { id: number; result?: unknown; error?: string }) => {
        const waiter = this.pending.get(reply.id);
        this.pending.delete(reply.id);
        if (reply.error !== undefined) waiter?.reject(new Error(`load generator: ${reply.error}`));
        else waiter?.resolve(reply.result);
      });
      child.once('exit', (code) => {
        for (const waiter of this.pending.values()) waiter.reject(new Error(`a load generator exited (${code}) with requests pending`));
        this.pending.clear();
      });
    }
  }

  static async start(count: number): Promise<LoadClients> {
    const children = Array.from({ length: count }, () => spawn('sh', ['-c', RAISE_FD_LIMIT, process.execPath, '--import', 'tsx', join(ROOT, 'bench', 'scale-clients.ts')], {
      cwd: ROOT, env: childEnv(), stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }));
    await Promise.all(children.map((child) => new Promise<void>((resolve, reject) => {
      const onMessage = (message: { ready?: boolean }): void => {
        if (!message.ready) return;
        child.off('message', onMessage);
        resolve();
      };
      child.on('message', onMessage);
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`a load generator exited (${code}) before it was ready`)));
    })));
    return new LoadClients(children);
  }

  get size(): number {
    return this.children.length;
  }

  pid(index: number): number {
    return this.children[index]!.pid!;
  }

  request<T>(index: number, op: string, fields: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.children[index]!.send({ id, op, ...fields });
    });
  }

  /** Asks every generator to close its sockets, then waits for them to exit (killing one that does not within 30 s). */
  async close(): Promise<void> {
    await Promise.all(this.children.map(async (child, index) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise((resolve) => { timer = setTimeout(resolve, 30_000); });
      await Promise.race([this.request(index, 'close').catch(() => undefined), late]);
      await Promise.race([exited, late]);
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    }));
  }
}

/** Where the sockets of a push measurement live: which generator holds each database's writer, and how many subscribers of each database each generator holds. */
interface Layout {
  writerOf: Map<string, number>;
  subscribersOf: Map<string, number>[];
}

/**
 * Sends one write on each of `databases` (from their writers) and collects
 * every subscriber's receipt: per receipt send → arrival, per write send →
 * last arrival, and first send → last arrival.
 */
async function pushRound(clients: LoadClients, layout: Layout, databases: string[]): Promise<{ receipts: number[]; last: number[]; spanMs: number; expected: number; received: number }> {
  const sentAt = new Map<string, number>();
  const databaseOf = new Map<string, string>();
  await Promise.all(Array.from({ length: clients.size }, async (_, index) => {
    const mine = databases.filter((db) => layout.writerOf.get(db) === index);
    if (mine.length === 0) return;
    const { sent } = await clients.request<{ sent: { transactionId: string; at: number }[] }>(index, 'write', { databases: mine });
    sent.forEach(({ transactionId, at }, i) => {
      sentAt.set(transactionId, at);
      databaseOf.set(transactionId, mine[i]!);
    });
  }));
  const lastAt = new Map<string, number>();
  const receipts: number[] = [];
  let expected = 0;
  let received = 0;
  await Promise.all(layout.subscribersOf.map(async (counts, index) => {
    const ids = [...sentAt.keys()].filter((id) => (counts.get(databaseOf.get(id)!) ?? 0) > 0);
    if (ids.length === 0) return;
    const perTransaction = counts.get(databaseOf.get(ids[0]!)!)!;
    expected += ids.length * perTransaction;
    const reply = await clients.request<{ receipts: Record<string, number[]>; unexpectedCloses: number }>(index, 'receipts', { transactionIds: ids, perTransaction, timeoutMs: 60_000 });
    if (reply.unexpectedCloses > 0) throw new Error(`the coordinator closed ${reply.unexpectedCloses} idle sockets`);
    for (const [id, times] of Object.entries(reply.receipts)) {
      const sent = sentAt.get(id)!;
      received += times.length;
      for (const at of times) {
        receipts.push(at - sent);
        lastAt.set(id, Math.max(lastAt.get(id) ?? -Infinity, at));
      }
    }
  }));
  const last = [...lastAt].map(([id, at]) => at - sentAt.get(id)!);
  const spanMs = Math.max(...lastAt.values()) - Math.min(...sentAt.values());
  return { receipts, last, spanMs, expected, received };
}

async function connectionsFigure(ctx: ScaleContext): Promise<ConnectionsFigures> {
  const { connections, connectionDatabases, pushRounds, clients: clientCount } = ctx.options;
  const token = 'scale-bench-token';
  // Its inspector (on 127.0.0.1) runs a full collection before each memory reading.
  const inspectPort = await freePort();
  const coordinator = await startCoordinator({ ...ctx, nodeArgs: [...ctx.nodeArgs, `--inspect=127.0.0.1:${inspectPort}`] }, 'connections', {}, { authMode: 'token-whitelist', authTokens: [token] });
  let clients: LoadClients | undefined;
  try {
    const limit = await requireFds(coordinator.pid, 'the coordinator', connections + connectionDatabases * 20 + 200);
    clients = await LoadClients.start(clientCount);
    for (let i = 0; i < clients.size; i++) await requireFds(clients.pid(i), 'a load generator', Math.ceil(connections / clients.size) + connectionDatabases + 200);
    const databases = Array.from({ length: connectionDatabases }, (_, i) => `idle-${i}`);
    // Databases go round-robin to the generators, each with its writer and subscribers.
    const layout: Layout = { writerOf: new Map(), subscribersOf: Array.from({ length: clients.size }, () => new Map()) };
    const perDatabase = Math.floor(connections / connectionDatabases);
    const extra = connections - perDatabase * connectionDatabases;
    databases.forEach((db, i) => {
      layout.writerOf.set(db, i % clients!.size);
      layout.subscribersOf[i % clients!.size]!.set(db, perDatabase + (i < extra ? 1 : 0));
    });
    const mine = (index: number): string[] => databases.filter((db) => layout.writerOf.get(db) === index);
    // Every database open first (by its writer), so that the figure is the sockets' alone.
    await Promise.all(Array.from({ length: clients.size }, (_, i) => clients!.request(i, 'writers', { url: coordinator.wsUrl, databases: mine(i), token })));
    await sleep(1000);
    const memory = async (): Promise<{ rss: number; heap: number; external: number }> => {
      const read = await scrapeMetrics(coordinator.baseUrl);
      return { rss: await rssMb(coordinator.pid), heap: read('sync_nodejs_heap_size_used_bytes') / 2 ** 20, external: read('sync_nodejs_external_memory_bytes') / 2 ** 20 };
    };
    const collected = async (): Promise<{ rss: number; heap: number; external: number }> => {
      await collectGarbage(inspectPort);
      await sleep(500);
      return memory();
    };
    const before = { settled: await memory(), collected: await collected() };
    phase(`scale: connecting ${fmt(connections)} sockets`);
    const started = performance.now();
    await Promise.all(Array.from({ length: clients.size }, (_, i) => {
      const own = mine(i);
      // Sockets of databases that get one more than the rest are opened as a second pass.
      const groups = new Map<number, string[]>();
      for (const db of own) {
        const n = layout.subscribersOf[i]!.get(db)!;
        groups.set(n, [...(groups.get(n) ?? []), db]);
      }
      return (async () => {
        for (const [n, dbs] of groups) await clients!.request(i, 'subscribe', { url: coordinator.wsUrl, databases: dbs, perDatabase: n, token, concurrency: 100 });
      })();
    }));
    const connectSeconds = (performance.now() - started) / 1000;
    await sleep(ctx.options.connections >= 1000 ? 3000 : 500);
    const after = { settled: await memory(), collected: await collected() };
    const status = await (await fetch(`${coordinator.baseUrl}/status`)).json() as { data: { connectedClients: number } };
    if (status.data.connectedClients !== connections + connectionDatabases) {
      throw new Error(`the coordinator reports ${status.data.connectedClients} clients, not ${connections + connectionDatabases}`);
    }
    phase(`scale: ${pushRounds} bursts of one write per database`);
    // One burst first, not counted, so that JIT warm-up does not count.
    await pushRound(clients, layout, databases);
    await sleep(200);
    const receipts: number[] = [];
    const last: number[] = [];
    const burstMs: number[] = [];
    let expected = 0;
    let received = 0;
    for (let round = 0; round < pushRounds; round++) {
      const r = await pushRound(clients, layout, databases);
      receipts.push(...r.receipts);
      last.push(...r.last);
      burstMs.push(r.spanMs);
      expected += r.expected;
      received += r.received;
      await sleep(200);
    }
    return {
      connections, databases: connectionDatabases, fdLimit: limit, connectSeconds,
      memory: {
        settled: memoryPerConnection(before.settled, after.settled, connections),
        collected: memoryPerConnection(before.collected, after.collected, connections),
      },
      push: spread(receipts), pushLast: spread(last), burstMs, pushesExpected: expected, pushesReceived: received,
    };
  } finally {
    await clients?.close();
    await stopProcess(coordinator);
  }
}

function memoryPerConnection(before: { rss: number; heap: number; external: number }, after: typeof before, connections: number): ConnectionsFigures['memory']['settled'] {
  return {
    rssBeforeMb: before.rss,
    rssAfterMb: after.rss,
    rssPerConnectionKb: ((after.rss - before.rss) * 1024) / connections,
    heapPerConnectionKb: ((after.heap - before.heap) * 1024) / connections,
    externalPerConnectionKb: ((after.external - before.external) * 1024) / connections,
  };
}

async function fanoutFigure(ctx: ScaleContext): Promise<FanoutFigures> {
  const { fanoutSubscribers, fanoutWrites, clients: clientCount } = ctx.options;
  const coordinator = await startCoordinator(ctx, 'fanout', {});
  let clients: LoadClients | undefined;
  try {
    await requireFds(coordinator.pid, 'the coordinator', fanoutSubscribers + 200);
    clients = await LoadClients.start(clientCount);
    const db = 'fanout';
    const layout: Layout = { writerOf: new Map([[db, 0]]), subscribersOf: [] };
    for (let i = 0; i < clients.size; i++) {
      const share = Math.floor(fanoutSubscribers / clients.size) + (i < fanoutSubscribers % clients.size ? 1 : 0);
      await requireFds(clients.pid(i), 'a load generator', share + 200);
      layout.subscribersOf.push(new Map(share > 0 ? [[db, share]] : []));
    }
    await clients.request(0, 'writers', { url: coordinator.wsUrl, databases: [db] });
    await Promise.all(layout.subscribersOf.map((counts, i) => (counts.size > 0
      ? clients!.request(i, 'subscribe', { url: coordinator.wsUrl, databases: [db], perDatabase: counts.get(db), concurrency: 100 })
      : undefined)));
    // A few writes first, so that JIT warm-up does not count.
    for (let i = 0; i < Math.min(10, fanoutWrites); i++) await pushRound(clients, layout, [db]);
    phase(`scale: ${fmt(fanoutWrites)} writes to ${fmt(fanoutSubscribers)} subscribers`);
    const receipts: number[] = [];
    const last: number[] = [];
    let expected = 0;
    let received = 0;
    for (let i = 0; i < fanoutWrites; i++) {
      const r = await pushRound(clients, layout, [db]);
      receipts.push(...r.receipts);
      last.push(...r.last);
      expected += r.expected;
      received += r.received;
    }
    return { subscribers: fanoutSubscribers, writes: fanoutWrites, last: spread(last), receipt: spread(receipts), pushesExpected: expected, pushesReceived: received };
  } finally {
    await clients?.close();
    await stopProcess(coordinator);
  }
}

/** Sends `messages` messages of `perMessage` new rows (pks from `firstPk`) from `site` on `ws`, each after the previous one's apply_result; returns the ack latencies in ms. */
async function serialWrites(ws: WebSocket, site: TestSite, firstPk: number, messages: number, perMessage: number): Promise<number[]> {
  const latencies: number[] = [];
  for (let i = 0; i < messages; i++) {
    const base = firstPk + i * perMessage;
    const set = site.txn(Array.from({ length: perMessage }, (_, j) => ({ pk: [base + j], column: 'title', value: `value ${base + j}` })));
    const ack = nextMessage(ws, 'apply_result');
    const sent = performance.now();
    ws.send(JSON.stringify({ type: 'apply_changes', requestId: String(i), changes: [set] }));
    // nextMessage rejects on an error frame, so a refused write stops the bench.
    await ack;
    latencies.push(performance.now() - sent);
  }
  return latencies;
}

async function databasesFigure(ctx: ScaleContext): Promise<DatabasesFigures> {
  const { databases, hotDatabases, hotMessages, hotChangesPerMessage } = ctx.options;
  // The default maxOpenStores (and storeIdleMs): the churn is the figure.
  const coordinator = await startCoordinator(ctx, 'databases', {});
  try {
    const ids = Array.from({ length: databases }, (_, i) => `touch-${String(i).padStart(5, '0')}`);
    const touchLatencies: number[] = [];
    const before = await churn(coordinator.baseUrl);
    phase(`scale: touching ${fmt(databases)} databases`);
    let started = performance.now();
    let next = 0;
    // 16 devices at a time, each: connect, one write, its apply_result, close.
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < ids.length) {
        const db = ids[next++]!;
        const site = new TestSite(randomSiteId());
        const t0 = performance.now();
        const ws = await connect(coordinator.wsUrl, db, site.wire);
        await serialWrites(ws, site, 0, 1, 1);
        touchLatencies.push(performance.now() - t0);
        ws.close();
      }
    }));
    const touchSeconds = (performance.now() - started) / 1000;
    const afterTouch = await churn(coordinator.baseUrl);
    const status = await (await fetch(`${coordinator.baseUrl}/status`)).json() as { data: { openStores: number } };
    const touchRss = await rssMb(coordinator.pid);

    phase(`scale: ${fmt(hotDatabases)} hot databases`);
    // The first ones touched: long closed by now, so their writers reopen them.
    const hot = ids.slice(0, hotDatabases);
    const writers = await Promise.all(hot.map(async (db) => {
      const site = new TestSite(randomSiteId());
      return { ws: await connect(coordinator.wsUrl, db, site.wire), site };
    }));
    started = performance.now();
    const acks = (await Promise.all(writers.map(({ ws, site }) => serialWrites(ws, site, 1, hotMessages, hotChangesPerMessage)))).flat();
    const hotSeconds = (performance.now() - started) / 1000;
    for (const { ws } of writers) ws.close();
    const afterHot = await churn(coordinator.baseUrl);
    const hotChanges = hotDatabases * hotMessages * hotChangesPerMessage;
    return {
      databases,
      maxOpenStores: DEFAULTS.maxOpenStores,
      touch: {
        changesPerSec: databases / touchSeconds, seconds: touchSeconds, latency: spread(touchLatencies),
        churn: since(before, afterTouch), openStoresAfter: status.data.openStores, rssMb: touchRss,
      },
      hot: {
        databases: hotDatabases, changes: hotChanges, changesPerSec: hotChanges / hotSeconds, ack: spread(acks),
        churn: since(afterTouch, afterHot), rssMb: await rssMb(coordinator.pid),
      },
    };
  } finally {
    await stopProcess(coordinator);
  }
}

/** A serial load of 50-change messages of new rows on `db`, after a short warm-up on another database. */
async function sizeLoad(coordinator: Coordinator, db: string, firstPk: number, messages: number, entriesBefore: number): Promise<ApplyLoadFigures & { entriesBefore: number }> {
  const warm = new TestSite(randomSiteId());
  const warmWs = await connect(coordinator.wsUrl, 'size-warmup', warm.wire);
  await serialWrites(warmWs, warm, firstPk, 20, 50);
  warmWs.close();
  const site = new TestSite(randomSiteId());
  const ws = await connect(coordinator.wsUrl, db, site.wire);
  const started = performance.now();
  const [acks, peak] = await withPeakRss(coordinator.pid, () => serialWrites(ws, site, firstPk, messages, 50));
  const seconds = (performance.now() - started) / 1000;
  ws.close();
  return { entriesBefore, changes: messages * 50, changesPerSec: (messages * 50) / seconds, ack: spread(acks), ...peak };
}

/**
 * Grows database `db` under `dataDir` by `count` new rows through the
 * library, as the coordinator would store them: transactions of 1,000
 * changes, a few applies in flight so that group commit batches them.
 */
async function buildThroughLibrary(dataDir: string, db: string, firstPk: number, count: number): Promise<{ entries: number; seconds: number; entriesPerSec: number }> {
  const replica = await openLevelReplica(databaseDirectory(dataDir, db));
  const started = performance.now();
  try {
    const site = new TestSite(randomSiteId(), Date.now() - 3_600_000);
    const inFlight = new Set<Promise<unknown>>();
    let reported = started;
    for (let done = 0; done < count;) {
      const n = Math.min(1000, count - done);
      const base = firstPk + done;
      const set = site.txn(Array.from({ length: n }, (_, j) => ({ pk: [base + j], column: 'title', value: `value ${base + j}` })));
      const applying = replica.apply(validateChangeSets([set], { now: Date.now() }));
      inFlight.add(applying);
      void applying.then(() => inFlight.delete(applying), () => undefined);
      if (inFlight.size >= 8) await Promise.race(inFlight);
      done += n;
      if (performance.now() - reported > 30_000) {
        reported = performance.now();
        phase(`scale: ${fmt(done)} of ${fmt(count)} entries written through the library`);
      }
    }
    await Promise.all(inFlight);
  } finally {
    await replica.close();
  }
  const seconds = (performance.now() - started) / 1000;
  return { entries: count, seconds, entriesPerSec: count / seconds };
}

async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    total += entry.isDirectory() ? await directoryBytes(path) : (await stat(path)).size;
  }
  return total;
}

async function snapshotWs(coordinator: Coordinator, db: string): Promise<SizeFigures['snapshot']> {
  const ws = await connect(coordinator.wsUrl, db);
  const started = performance.now();
  const [entries, peak] = await withPeakRss(coordinator.pid, () => new Promise<number>((resolve, reject) => {
    let total = NaN;
    ws.on('message', (data: Buffer) => {
      const head = data.toString('latin1', 0, 64);
      if (head.startsWith('{"type":"snapshot_complete"')) resolve(total);
      else if (head.startsWith('{"type":"error"')) reject(new Error(data.toString()));
      // The footer is the last chunk; only frames that small are searched.
      else if (data.length < 4096 && data.includes('"type":"footer"')) total = Number(/"totalEntries":(\d+)/.exec(data.toString())?.[1]);
    });
    ws.send('{"type":"get_snapshot"}');
  }));
  const seconds = (performance.now() - started) / 1000;
  ws.close();
  return { entries, seconds, entriesPerSec: entries / seconds, ...peak };
}

async function sizeFigure(ctx: ScaleContext): Promise<SizeFigures> {
  const { sizeEntries, sizeMessages } = ctx.options;
  const db = 'size';
  const loadChanges = sizeMessages * 50;
  // The coordinator may take a while to open the large database: its first client must not time out meanwhile.
  const router = { handshakeTimeoutMs: 600_000 };
  let coordinator = await startCoordinator(ctx, 'size', router);
  let start: SizeFigures['start'];
  try {
    start = await sizeLoad(coordinator, db, 0, sizeMessages, 0);
  } finally {
    await stopProcess(coordinator);
  }
  const dataDir = join(ctx.dataDir, 'size');
  const grow = sizeEntries - loadChanges;
  phase(`scale: writing ${fmt(grow)} entries through the library`);
  const build = await buildThroughLibrary(dataDir, db, loadChanges, grow);
  const diskBytes = await directoryBytes(databaseDirectory(dataDir, db));
  coordinator = await startCoordinator(ctx, 'size', router);
  try {
    await sleep(500);
    const rssIdleMb = await rssMb(coordinator.pid);
    const opening = performance.now();
    const first = await connect(coordinator.wsUrl, db);
    const openMs = performance.now() - opening;
    // Keeps it leased (open) through what follows.
    const rssAfterOpenMb = await rssMb(coordinator.pid);
    // The key filter's scan of the first keys runs in the background after an open.
    await sleep(ctx.options.sizeEntries >= 1_000_000 ? 3000 : 200);
    phase(`scale: apply and snapshot on ${fmt(sizeEntries)} entries`);
    const end = await sizeLoad(coordinator, db, sizeEntries, sizeMessages, sizeEntries);
    const snapshot = await snapshotWs(coordinator, db);
    if (snapshot.entries !== sizeEntries + loadChanges) throw new Error(`the snapshot of ${db} has ${snapshot.entries} entries, not ${sizeEntries + loadChanges}`);
    first.close();
    return { entries: sizeEntries, start, build, diskBytes, openMs, rssIdleMb, rssAfterOpenMb, end, snapshot };
  } finally {
    await stopProcess(coordinator);
  }
}
