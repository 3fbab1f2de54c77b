/**
 * The cluster part of `npm run bench -- --nodes N` (README "Scale out"):
 * the same loads against one plain node, one node on Redis (a cluster of
 * one: the cost of the log), N nodes on Redis, and the bare `ws` relay that
 * run.ts already started (the transport ceiling of this machine).
 *
 * - one database: N writers sending 50-change messages with `window` in
 *   flight each, and `subscribers` listeners;
 * - many databases, twice: `databases` databases, each with one writer
 *   sending 50-change messages one at a time (as real clients do,
 *   docs/protocol.md §8) and two listeners; once with every database's
 *   clients spread over the nodes, once with each database's clients on
 *   one node (LoadShape.placement).
 *
 * Figures: changes/s acknowledged (first send to last `apply_result`), ack
 * latency, push latency from the writer's send to a listener's receipt,
 * split by whether the listener is on another node than the writer, the
 * cluster's append-to-applied lag (sync_cluster_apply_lag_seconds), CPU
 * time of every process per 1,000 changes (where the work goes, since all
 * of them share the same cores here) and the databases each node holds open.
 *
 * Each setup gets fresh data dirs and a fresh redis-server (the spec
 * helper's: 127.0.0.1, a free port, a temp dir, AOF with `appendfsync
 * everysec`, the README's recommendation) and is stopped before the next.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type WebSocket from 'ws';
import { TestSite } from '../spec/helpers/changes.js';
import { startRedisServer, type RedisTestServer } from '../spec/helpers/redis-server.js';
import { randomSiteId } from '../lib/protocol/site-id.js';
import { connect, fmt, percentile, phase, processCpuMs, startCoordinator, stopProcess, type Coordinator } from './common.js';

/** What {@link runClusterBench} measures. */
export interface ClusterBenchOptions {
  /** Nodes of the cluster setup, ≥ 2. */
  nodes: number;
  /** ws:// URL of the relay (bench/relay.ts), already running. */
  relayUrl: string;
  /** A directory the data dirs and config file go under (the caller removes it). */
  dataDir: string;
  /** Flags for node itself (e.g. --cpu-prof), before the CLI path. */
  nodeArgs: string[];
  /** Listeners of the hot database. */
  subscribers: number;
  /** Messages in flight per writer of the hot database. */
  window: number;
  /** Messages per writer of the hot database. */
  hotMessages: number;
  /** Databases of the many-databases load. */
  databases: number;
  /** Messages per writer of the many-databases load. */
  manyMessages: number;
  /** Messages per writer of the warm-up before each setup's loads. */
  warmupMessages: number;
}

/** One load's shape. */
export interface LoadShape {
  name: string;
  databases: number;
  writersPerDatabase: number;
  subscribersPerDatabase: number;
  messagesPerWriter: number;
  changesPerMessage: number;
  window: number;
  /**
   * Which node client k of database d (writers first) connects to:
   * `spread` = (d + k) mod nodes, round-robin, each database starting one
   * node further (what a load balancer without sticky routing does to a
   * database with several clients); `by-database` = d mod nodes, every
   * client of a database on the same node.
   */
  placement: 'spread' | 'by-database';
}

export interface Latencies { p50: number; p99: number; max: number; count: number }

/** One load against one setup. Latencies in ms; CPU in ms of CPU time per 1,000 acknowledged changes. */
export interface ClusterLoadFigures {
  changesPerSec: number;
  messagesPerSec: number;
  ackP50: number; ackP99: number;
  /** Transactions received by listeners on another node than their writer (none on one node). */
  pushOtherNode?: Latencies;
  /** Transactions received by listeners on their writer's node. */
  pushSameNode?: Latencies;
  pushesExpected: number;
  /** Transactions listeners received (a push frame may carry several); less than expected if some did not arrive within 30 s. */
  pushesReceived: number;
  /** Mean time from a log entry's append to a node having applied it, over all nodes (sync_cluster_apply_lag_seconds). */
  applyLagMeanMs?: number;
  cpu?: {
    /** Per node, in node order. */
    nodes: number[];
    redis?: number;
    loadGenerator: number;
    /** CPU time of all of them over the cores × the load's duration. */
    busyPercent: number;
    /** The same for every process of the machine (/proc/stat): far above busyPercent, other work shared the cores. */
    machineBusyPercent: number;
  };
  /** In a cluster, how many of the load's databases each node held open after it (/status, cluster.databases). */
  openDatabases?: number[];
  /**
   * 1,000,000 ÷ the largest CPU ms per 1,000 changes of one node or Redis:
   * the changes that process handles per second of CPU time, so about what
   * it could take with a core to itself were nothing else the bound (an
   * estimate: a node also runs LevelDB on its thread pool, and here all
   * processes share the cores).
   */
  busiestCeiling?: { process: string; changesPerSec: number };
}

export interface ClusterBenchResults {
  nodes: number;
  redis: string;
  loads: Record<string, { shape: LoadShape; setups: Record<string, ClusterLoadFigures> }>;
}

interface Setup { name: string; nodes: number; redis: boolean }

/** The node of client k of database d (LoadShape.placement). */
const nodeOf = (placement: LoadShape['placement'], database: number, client: number, nodes: number): number =>
  (placement === 'spread' ? database + client : database) % nodes;

/** Whether `a` and `b` differ at most by name and placement. */
const sameLoad = (a: LoadShape, b: LoadShape): boolean =>
  JSON.stringify({ ...a, name: '', placement: '' }) === JSON.stringify({ ...b, name: '', placement: '' });

/** Runs every load against every setup and the relay. Throws when a setup fails to start or a write is refused. */
export async function runClusterBench(options: ClusterBenchOptions): Promise<ClusterBenchResults> {
  if (!Number.isInteger(options.nodes) || options.nodes < 2) throw new TypeError(`runClusterBench: options.nodes must be an integer ≥ 2, got ${String(options.nodes)}`);
  const many = { databases: options.databases, writersPerDatabase: 1, subscribersPerDatabase: 2, messagesPerWriter: options.manyMessages, changesPerMessage: 50, window: 1 };
  const shapes: LoadShape[] = [
    { name: '1 database', databases: 1, writersPerDatabase: options.nodes, subscribersPerDatabase: options.subscribers, messagesPerWriter: options.hotMessages, changesPerMessage: 50, window: options.window, placement: 'spread' },
    { name: `${options.databases} databases`, ...many, placement: 'spread' },
    { name: `${options.databases} databases, by database`, ...many, placement: 'by-database' },
  ];
  const warmups = shapes.slice(0, 2).map((shape) => ({ ...shape, databases: Math.min(shape.databases, 10), messagesPerWriter: options.warmupMessages }));
  const setups: Setup[] = [
    { name: '1 node', nodes: 1, redis: false },
    { name: '1 node + Redis', nodes: 1, redis: true },
    { name: `${options.nodes} nodes + Redis`, nodes: options.nodes, redis: true },
  ];
  const configFile = join(options.dataDir, 'cluster-config.json');
  // All load comes from one address: the per-address limits would measure
  // themselves. The pool holds every database of the loads at once.
  await writeFile(configFile, JSON.stringify({ router: {
    messagesPerSecond: 0, messagesPerSecondPerIp: 0, maxConnectionsPerIp: 0,
    maxOpenStores: Math.max(100, options.databases + 50),
  } }));
  const loads: ClusterBenchResults['loads'] = {};
  for (const shape of shapes) loads[shape.name] = { shape, setups: {} };

  phase('cluster: the relay');
  for (const warmup of warmups) await runLoad([options.relayUrl], warmup, 'warm');
  for (const shape of shapes) loads[shape.name]!.setups.relay = await runLoad([options.relayUrl], shape, 'relay');

  let redisVersion = '';
  for (const [index, setup] of setups.entries()) {
    phase(`cluster: ${setup.name}`);
    let redis: RedisTestServer | undefined;
    const nodes: Coordinator[] = [];
    try {
      if (setup.redis) {
        redis = await startRedisServer();
        redisVersion ||= await redisInfo(redis.url, 'server').then((info) => info.redis_version ?? '');
      }
      for (let i = 0; i < setup.nodes; i++) {
        const dir = join(options.dataDir, `cluster-${index}-node-${i}`);
        await mkdir(dir, { recursive: true });
        nodes.push(await startCoordinator(options.nodeArgs, dir, configFile, redis ? ['--redis-url', redis.url, '--node-id', `node-${i + 1}`] : []));
      }
      const urls = nodes.map((node) => node.wsUrl);
      for (const warmup of warmups) await runLoad(urls, warmup, 'warm');
      for (const [i, shape] of shapes.entries()) {
        // On one node the placements make the same load: it runs once.
        const same = setup.nodes === 1 ? shapes.slice(0, i).find((s) => sameLoad(s, shape)) : undefined;
        loads[shape.name]!.setups[setup.name] = same ? loads[same.name]!.setups[setup.name]! : await runLoad(urls, shape, `bench-${i}`, { nodes, redis });
      }
    } finally {
      for (const node of nodes) await stopProcess(node);
      await redis?.close();
    }
  }
  return {
    nodes: options.nodes,
    redis: `redis-server ${redisVersion} on 127.0.0.1, AOF with appendfsync everysec`,
    loads,
  };
}

/** The lines run.ts prints: changes/s side by side, then the details per setup. */
export function clusterTable(results: ClusterBenchResults): string[] {
  const lines: string[] = [];
  const setupNames = Object.keys(Object.values(results.loads)[0]!.setups).filter((name) => name !== 'relay');
  const clusterName = setupNames.at(-1)!;
  lines.push(`Cluster (--nodes ${results.nodes}): ${results.redis}. The nodes, Redis, the relay and the load generator all share this machine's cores.`);
  lines.push('Clients of a database connect round-robin over the nodes (spread: client k of database d on node (d + k) mod nodes), or all to node d mod nodes (by database; on one node the same load as spread, measured once). Writers send 50-change messages.');
  lines.push('');
  lines.push(`| load | ${setupNames.map((name) => `${name}: changes/s (ratio to relay)`).join(' | ')} | relay changes/s | ${clusterName} ÷ 1 node |`);
  lines.push(`|---|${setupNames.map(() => '---|').join('')}---|---|`);
  for (const [name, { shape, setups }] of Object.entries(results.loads)) {
    const relay = setups.relay!;
    const label = `${name}: ${shape.databases * shape.writersPerDatabase} writers × ${shape.window} in flight, ${shape.databases * shape.subscribersPerDatabase} subscribers${shape.placement === 'spread' ? ', spread' : ''}`;
    lines.push(`| ${label} | ${setupNames.map((s) => `${fmt(setups[s]!.changesPerSec)} (${fmt(setups[s]!.changesPerSec / relay.changesPerSec, 2)})`).join(' | ')} | ${fmt(relay.changesPerSec)} | ${fmt(setups[clusterName]!.changesPerSec / setups['1 node']!.changesPerSec, 2)} |`);
  }
  lines.push('');
  lines.push('CPU: ms of CPU time per 1,000 changes of each node, Redis and the load generator; busy: all of them, then every process of the machine, over its cores (the machine far above ours: other work shared the cores). Ceiling: 1,000,000 ÷ the busiest node\'s or Redis\'s CPU ms per 1,000 changes, the changes it handles per CPU-second (about what it could take with a core to itself: an estimate).');
  lines.push('');
  lines.push('| load | setup | changes/s | ack p50/p99 ms | push p50/p99 ms, subscriber on another node | on the writer\'s node | append → applied, mean ms | CPU: nodes · Redis · load generator | busy %: ours · machine | ceiling changes/s (busiest) | of its databases open per node |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const [name, { setups }] of Object.entries(results.loads)) {
    for (const [setup, f] of Object.entries(setups)) {
      const push = (l?: Latencies): string => (l ? `${fmt(l.p50, 2)} / ${fmt(l.p99, 2)}` : '-');
      const cpu = f.cpu ? `${f.cpu.nodes.map((ms) => fmt(ms, 1)).join(' + ')} · ${fmt(f.cpu.redis, 1)} · ${fmt(f.cpu.loadGenerator, 1)}` : '-';
      const busy = f.cpu ? `${fmt(f.cpu.busyPercent)} · ${fmt(f.cpu.machineBusyPercent)}` : '-';
      const ceiling = f.busiestCeiling ? `${fmt(f.busiestCeiling.changesPerSec)} (${f.busiestCeiling.process})` : '-';
      const missing = f.pushesReceived < f.pushesExpected ? ` (${fmt(f.pushesExpected - f.pushesReceived)} pushes missing)` : '';
      lines.push(`| ${name} | ${setup} | ${fmt(f.changesPerSec)} | ${fmt(f.ackP50, 2)} / ${fmt(f.ackP99, 2)} | ${push(f.pushOtherNode)}${missing} | ${push(f.pushSameNode)} | ${fmt(f.applyLagMeanMs, 2)} | ${cpu} | ${busy} | ${ceiling} | ${f.openDatabases?.join(', ') ?? '-'} |`);
    }
  }
  return lines;
}

interface Writer { ws: WebSocket; node: number; frames: string[]; txIds: string[] }

/**
 * One load: connects every client, starts all writers at once, and returns
 * once every write is acknowledged and every push arrived (or 30 s passed).
 * `measured` (the processes of a setup) adds CPU, lag and open-database
 * figures; without it (the relay) there are none.
 */
async function runLoad(urls: string[], shape: LoadShape, prefix: string, measured?: { nodes: Coordinator[]; redis?: RedisTestServer }): Promise<ClusterLoadFigures> {
  const n = urls.length;
  const sent = new Map<string, { at: number; node: number }>();
  const other: number[] = [];
  const same: number[] = [];
  const acks: number[] = [];
  let received = 0;
  const expected = shape.databases * shape.writersPerDatabase * shape.messagesPerWriter * shape.subscribersPerDatabase;
  let allPushed!: () => void;
  const pushedAll = new Promise<void>((resolve) => { allPushed = resolve; });
  // Listeners only locate transaction ids in the frame (a frame may carry
  // several): the load generator must stay far lighter than the servers.
  const PUSH_PREFIX = Buffer.from('{"type":"push_changes"');
  const TX_MARK = Buffer.from('"transactionId":"');
  const listen = (ws: WebSocket, node: number): void => {
    ws.on('message', (data: Buffer) => {
      if (data.compare(PUSH_PREFIX, 0, PUSH_PREFIX.length, 0, PUSH_PREFIX.length) !== 0) return;
      const now = performance.now();
      for (let at = data.indexOf(TX_MARK); at >= 0; at = data.indexOf(TX_MARK, at + 1)) {
        const start = at + TX_MARK.length;
        const origin = sent.get(data.toString('latin1', start, data.indexOf(0x22, start)));
        if (origin === undefined) continue;
        (origin.node === node ? same : other).push(now - origin.at);
        if (++received === expected) allPushed();
      }
    });
  };

  const sockets: WebSocket[] = [];
  const writers: Writer[] = [];
  try {
    for (let d = 0; d < shape.databases; d++) {
      const db = `${prefix}-${shape.databases}-${d}`;
      await Promise.all(Array.from({ length: shape.writersPerDatabase + shape.subscribersPerDatabase }, async (_, k) => {
        const node = nodeOf(shape.placement, d, k, n);
        if (k >= shape.writersPerDatabase) {
          const ws = await connect(urls[node]!, db);
          sockets.push(ws);
          listen(ws, node);
          return;
        }
        const site = new TestSite(randomSiteId(), Date.now() - 30_000);
        const frames: string[] = [];
        const txIds: string[] = [];
        for (let i = 0; i < shape.messagesPerWriter; i++) {
          const set = site.txn(Array.from({ length: shape.changesPerMessage }, (_, j) => ({ pk: [k, i, j], column: 'title', value: `value ${k}/${i}/${j}` })));
          txIds.push(set.transactionId);
          frames.push(JSON.stringify({ type: 'apply_changes', requestId: String(i), changes: [set] }));
        }
        const ws = await connect(urls[node]!, db, site.wire);
        sockets.push(ws);
        writers.push({ ws, node, frames, txIds });
      }));
    }

    const before = measured ? await sample(measured) : undefined;
    const started = performance.now();
    await Promise.all(writers.map((writer) => drive(writer, shape.window, sent, acks)));
    const acked = performance.now();
    // Bounded: a lost push must not hang the bench. The timer is cleared, or
    // it would hold the process for its full 30 s after the report is written.
    let pushTimer: NodeJS.Timeout | undefined;
    if (expected > 0) await Promise.race([pushedAll, new Promise((r) => { pushTimer = setTimeout(r, 30_000); })]);
    clearTimeout(pushTimer);
    // CPU up to the last push: delivering the writes is part of their cost.
    const after = measured ? await sample(measured) : undefined;

    const elapsed = (acked - started) / 1000;
    const messages = writers.length * shape.messagesPerWriter;
    const changes = messages * shape.changesPerMessage;
    acks.sort((a, b) => a - b);
    const figures: ClusterLoadFigures = {
      changesPerSec: changes / elapsed,
      messagesPerSec: messages / elapsed,
      ackP50: percentile(acks, 50), ackP99: percentile(acks, 99),
      ...(other.length > 0 ? { pushOtherNode: latencies(other) } : {}),
      ...(same.length > 0 ? { pushSameNode: latencies(same) } : {}),
      pushesExpected: expected,
      pushesReceived: received,
    };
    if (measured && before && after) {
      const per1000 = (ms: number): number => ms / (changes / 1000);
      const nodes = after.nodeCpuMs.map((ms, i) => per1000(ms - before.nodeCpuMs[i]!));
      const redis = after.redisCpuMs !== undefined ? per1000(after.redisCpuMs - before.redisCpuMs!) : undefined;
      const loadGenerator = per1000(after.ownCpuMs - before.ownCpuMs);
      const total = (after.nodeCpuMs.reduce((a, b) => a + b, 0) - before.nodeCpuMs.reduce((a, b) => a + b, 0))
        + (after.redisCpuMs ?? 0) - (before.redisCpuMs ?? 0) + after.ownCpuMs - before.ownCpuMs;
      const machine = (after.machine.busy - before.machine.busy) / Math.max(1, after.machine.total - before.machine.total);
      figures.cpu = { nodes, ...(redis !== undefined ? { redis } : {}), loadGenerator, busyPercent: (100 * total) / (CORES * (after.at - before.at)), machineBusyPercent: 100 * machine };
      if (measured.redis) {
        const count = after.lagCount - before.lagCount;
        if (count > 0) figures.applyLagMeanMs = ((after.lagSum - before.lagSum) / count) * 1000;
      }
      const busiest = [...nodes.map((ms, i) => ({ process: nodes.length > 1 ? `node ${i + 1}` : 'node', ms })), ...(redis !== undefined ? [{ process: 'Redis', ms: redis }] : [])]
        .reduce((a, b) => (b.ms > a.ms ? b : a));
      if (busiest.ms > 0) figures.busiestCeiling = { process: busiest.process, changesPerSec: 1_000_000 / busiest.ms };
      if (measured.redis) {
        figures.openDatabases = await Promise.all(measured.nodes.map(async (node) => {
          const status = await (await fetch(`${node.baseUrl}/status`)).json() as { data: { cluster: { databases: Record<string, unknown> } } };
          return Object.keys(status.data.cluster.databases).filter((db) => db.startsWith(`${prefix}-`)).length;
        }));
      }
    }
    return figures;
  } finally {
    for (const ws of sockets) ws.close();
  }
}

/** Sends a writer's frames with `window` in flight; resolves at its last `apply_result`, rejects on an error frame. */
function drive(writer: Writer, window: number, sent: Map<string, { at: number; node: number }>, acks: number[]): Promise<void> {
  const { ws, frames, txIds, node } = writer;
  return new Promise<void>((resolve, reject) => {
    let next = 0;
    let done = 0;
    const sendOne = (): void => {
      const i = next++;
      sent.set(txIds[i]!, { at: performance.now(), node });
      ws.send(frames[i]!);
    };
    ws.on('message', (data: Buffer) => {
      const text = data.toString('latin1', 0, 64);
      if (!text.startsWith('{"type":"apply_result"')) {
        if (text.includes('"type":"error"')) reject(new Error(`a write was refused: ${data.toString()}`));
        return;
      }
      const i = Number(/"requestId":"(\d+)"/.exec(text)![1]);
      acks.push(performance.now() - sent.get(txIds[i]!)!.at);
      if (++done === frames.length) resolve();
      else if (next < frames.length) sendOne();
    });
    ws.once('close', () => { if (done < frames.length) reject(new Error(`a writer's socket closed after ${done} of ${frames.length} acknowledgements`)); });
    for (let k = 0; k < Math.min(window, frames.length); k++) sendOne();
  });
}

function latencies(values: number[]): Latencies {
  values.sort((a, b) => a - b);
  return { p50: percentile(values, 50), p99: percentile(values, 99), max: values.at(-1)!, count: values.length };
}

const CORES = cpus().length;
/** `INFO <section>` of the Redis at `url`, as name → value. */
async function redisInfo(url: string, section: string): Promise<Record<string, string>> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await client.connect();
    const out: Record<string, string> = {};
    for (const line of (await client.info(section)).split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon > 0 && !line.startsWith('#')) out[line.slice(0, colon)] = line.slice(colon + 1);
    }
    return out;
  } finally {
    client.disconnect();
  }
}

/** Sum of every sample of `name` (all label sets) in Prometheus text. */
function sumOf(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Busy and total clock ticks of all cores since boot (/proc/stat); busy excludes idle and iowait. */
async function machineTicks(): Promise<{ busy: number; total: number }> {
  const fields = (await readFile('/proc/stat', 'utf8')).split('\n', 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  return { busy: total - fields[3]! - fields[4]!, total };
}

interface Sample { at: number; machine: { busy: number; total: number }; nodeCpuMs: number[]; redisCpuMs?: number; ownCpuMs: number; lagSum: number; lagCount: number }

/** CPU times of the setup's processes and this one, and the cluster's apply-lag histogram totals over all nodes. */
async function sample(measured: { nodes: Coordinator[]; redis?: RedisTestServer }): Promise<Sample> {
  const nodeCpuMs = await Promise.all(measured.nodes.map((node) => processCpuMs(node.pid)));
  let redisCpuMs: number | undefined;
  if (measured.redis) {
    const cpu = await redisInfo(measured.redis.url, 'cpu');
    redisCpuMs = (Number(cpu.used_cpu_sys) + Number(cpu.used_cpu_user)) * 1000;
  }
  let lagSum = 0;
  let lagCount = 0;
  if (measured.redis) {
    for (const node of measured.nodes) {
      const text = await (await fetch(`${node.baseUrl}/metrics`)).text();
      lagSum += sumOf(text, 'sync_cluster_apply_lag_seconds_sum');
      lagCount += sumOf(text, 'sync_cluster_apply_lag_seconds_count');
    }
  }
  const own = process.cpuUsage();
  return { at: performance.now(), machine: await machineTicks(), nodeCpuMs, ...(redisCpuMs !== undefined ? { redisCpuMs } : {}), ownCpuMs: (own.user + own.system) / 1000, lagSum, lagCount };
}
