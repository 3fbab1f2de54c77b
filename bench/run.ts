/**
 * `npm run bench`: starts the coordinator as users run it (the built CLI, in
 * its own process, on a temp data dir), drives it over real WebSockets from
 * this process, runs the same traffic through a trivial `ws` relay (the
 * transport ceiling of this machine), and prints figures plus their ratio to
 * the ceiling. Writes bench/results/latest.json. Figures, never pass/fail.
 *
 * With S3 (on unless --no-s3): the same apply loads against coordinators
 * archiving to a local s3rver (a stand-in for S3 that this script starts), in
 * `async` and in `ack` durability, with the archive's lag after each async
 * load; then restore time: a database of --restore-entries entries is filled,
 * snapshotted to the archive, its data dir wiped, and the first handshake
 * (which restores it) and `sync-coordinator restore <db>` are timed.
 *
 * With --nodes N (N ≥ 2): the cluster loads of bench/cluster.ts, one
 * database and many (--databases, 100), against one node, one node on Redis
 * and N nodes on Redis, beside the relay.
 *
 * Options: --quick (smoke run), --messages N, --subscribers N, --catchup N,N,
 * --window N, --rounds N, --out FILE, --no-s3, --restore-entries N, --nodes N,
 * --databases N.
 *
 * Coordinators get this process's environment without SYNC_*, S3_* and
 * DISK_EVICTION_* variables: the bench's settings are its flags and config
 * file only, so a shell set up for S3 cannot turn the no-S3 figures into S3 ones.
 *
 * Scale figures (bench/scale.ts): --scale all, or a list of connections,
 * fanout, databases, size (in --quick by default, at tiny sizes; opt-in in a
 * full run, which they lengthen by minutes); --size-entries N,
 * --scale-connections N, --scale-clients N. `--only scale --no-s3 --scale all`
 * runs them alone.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { startS3Server, type S3TestServer } from '../spec/helpers/s3-server.js';
import { randomSiteId, siteIdToWire } from '../lib/protocol/site-id.js';
import { parseScaleOptions, runScaleBench, scaleTable, type ScaleResults } from './scale.js';
import { openLevelStore } from '../lib/storage/leveldb.js';
import { storageFloor, WORK_US, type StorageFloor } from './storage-floor.js';
import { clusterTable, runClusterBench, type ClusterBenchResults } from './cluster.js';
import { childEnv, connect, fmt, loadChangeSets, nextMessage, processCpuMs, percentile, phase, ROOT, scrapeMetrics, sleep, startCoordinator, startProcess, stopProcess } from './common.js';

const args = process.argv.slice(2);
const flag = (name: string): boolean => args.includes(`--${name}`);
const option = (name: string, fallback: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
};
const QUICK = flag('quick');
const SUBSCRIBERS = Number(option('subscribers', '10'));
const WINDOW = Number(option('window', '16'));
const MESSAGES_50 = Number(option('messages', QUICK ? '40' : '2000'));
const MESSAGES_1 = QUICK ? 200 : 4000;
const CATCHUP = option('catchup', QUICK ? '2000' : '10000,100000').split(',').map(Number);
const OUT = option('out', join(ROOT, 'bench', 'results', 'latest.json'));
const SCALE = parseScaleOptions(args, QUICK);
// --profile DIR: run the coordinator under --cpu-prof, profiles written to DIR.
const PROFILE = option('profile', '');
const ONLY = option('only', '');
/** How long the idle server is left alone before its settled RSS is read. */
const SETTLE_MS = 12_000;
const S3 = !flag('no-s3');
const RESTORE_ENTRIES = Number(option('restore-entries', QUICK ? '5000' : '1000000'));
/** A positive integer option, or a clear stop naming the flag and what it got. */
const count = (name: string, fallback: string, min: number): number => {
  const text = option(name, fallback);
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${JSON.stringify(text)}`);
  return n;
};
/** Cluster nodes of the cluster loads (0: no cluster loads). */
const NODES = args.includes('--nodes') ? count('nodes', '', 2) : 0;
/**
 * Rounds of each apply load: the coordinator and the relay take turns, each
 * on a fresh database, and the round with the median ratio is reported (with
 * the range): a machine that slows down for a moment moves one round, not
 * the figure.
 */
const ROUNDS = count('rounds', QUICK ? '1' : '3', 1);
const DATABASES = count('databases', QUICK ? '10' : '100', 1);
/**
 * The loads run again with S3: all of them (pipelined ones show what group
 * commit saves in `ack`); only the serial ones in --quick, to keep it short.
 */
const S3_LOADS = (name: string): boolean => !QUICK || name.endsWith(' serial');
const S3_MODES = ['async', 'ack'] as const;
type S3Mode = (typeof S3_MODES)[number];

async function rssKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

/** Samples RSS until stopped; returns the peak in MB. */
function rssSampler(pid: number): { stop(): Promise<number> } {
  let peak = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      try { peak = Math.max(peak, await rssKb(pid)); } catch { /* process gone */ }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return { async stop() { running = false; await loop; return peak / 1024; } };
}

interface ApplyFigures {
  changesPerSec: number;
  messagesPerSec: number;
  ackP50: number; ackP99: number; ackMax: number;
  pushP50: number; pushP99: number; pushMax: number;
  pushesReceived: number;
  peakRssMb?: number;
  serverApplyMeanMs?: number;
  /** CPU time of the server process (all threads) per 1,000 changes, from the first send to the last push. */
  cpuMsPer1000Changes?: number;
}

/** Sum and count of sync_apply_changes_duration_seconds, from /metrics. */
async function serverApplySeconds(baseUrl: string, metric = 'sync_apply_changes_duration_seconds'): Promise<{ sum: number; count: number }> {
  const read = await scrapeMetrics(baseUrl);
  return { sum: read(`${metric}_sum`), count: read(`${metric}_count`) };
}

/** What applyRun measures of the server besides latencies: `pid`'s CPU time, and its peak RSS when `rss`. */
interface Measured { pid: number; rss: boolean }

/**
 * One writer sending `messages` messages of `perMessage` changes, `window` in
 * flight, to `subscribers` listeners. `onAcked` runs the moment the last
 * acknowledgement arrives (before the wait for the last pushes).
 */
async function applyRun(url: string, databaseId: string, perMessage: number, messages: number, window: number, measured?: Measured, onAcked?: () => void): Promise<ApplyFigures> {
  const pid = measured?.pid;
  const siteBytes = randomSiteId();
  const sets = loadChangeSets(siteBytes, perMessage, messages);
  const txIds = sets.map((set) => set.transactionId);
  const frames = sets.map((set, i) => JSON.stringify({ type: 'apply_changes', requestId: String(i), changes: [set] }));
  const subs = await Promise.all(Array.from({ length: SUBSCRIBERS }, () => connect(url, databaseId)));
  const writer = await connect(url, databaseId, siteIdToWire(siteBytes));
  const sentAt = new Map<string, number>();
  const pushLatencies: number[] = [];
  let pushes = 0;
  const expectedPushes = messages * SUBSCRIBERS;
  let allPushed!: () => void;
  const pushedAll = new Promise<void>((resolve) => { allPushed = resolve; });
  // Subscribers only locate the transaction id in the frame: the load
  // generator must stay far lighter than the server it measures.
  const PUSH_PREFIX = Buffer.from('{"type":"push_changes"');
  const TX_MARK = Buffer.from('"transactionId":"');
  for (const sub of subs) {
    sub.on('message', (data: Buffer) => {
      if (data.compare(PUSH_PREFIX, 0, PUSH_PREFIX.length, 0, PUSH_PREFIX.length) !== 0) return;
      const at = data.indexOf(TX_MARK);
      if (at < 0) return;
      const start = at + TX_MARK.length;
      const id = data.toString('latin1', start, data.indexOf(0x22, start));
      const t = sentAt.get(id);
      if (t !== undefined) pushLatencies.push(performance.now() - t);
      if (++pushes === expectedPushes) allPushed();
    });
  }
  const ackLatencies: number[] = [];
  // The relay's RSS is not reported: sampling it would only load this process during its run.
  const sampler = pid && measured.rss ? rssSampler(pid) : undefined;
  const cpuBefore = pid ? await processCpuMs(pid) : undefined;
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    let next = 0;
    let done = 0;
    const sendOne = (): void => {
      const i = next++;
      sentAt.set(txIds[i]!, performance.now());
      writer.send(frames[i]!);
    };
    writer.on('message', (data: Buffer) => {
      const text = data.toString('latin1', 0, 64);
      if (!text.startsWith('{"type":"apply_result"')) {
        if (text.includes('"type":"error"')) reject(new Error(data.toString()));
        return;
      }
      const id = Number(/"requestId":"(\d+)"/.exec(text)![1]);
      ackLatencies.push(performance.now() - sentAt.get(txIds[id]!)!);
      done++;
      if (done === messages) {
        onAcked?.();
        resolve();
      }
      else if (next < messages) sendOne();
    });
    for (let k = 0; k < Math.min(window, messages); k++) sendOne();
  });
  const acked = performance.now();
  // Bounded: a lost push must not hang the bench. The timer is cleared, or it
  // would hold the process for its full 30 s after the report is written.
  let pushTimer: NodeJS.Timeout | undefined;
  await Promise.race([pushedAll, new Promise((r) => { pushTimer = setTimeout(r, 30_000); })]);
  clearTimeout(pushTimer);
  const cpuMs = pid && cpuBefore !== undefined ? (await processCpuMs(pid)) - cpuBefore : undefined;
  const elapsed = (acked - started) / 1000;
  const peakRssMb = sampler ? await sampler.stop() : undefined;
  for (const ws of [...subs, writer]) ws.close();
  ackLatencies.sort((a, b) => a - b);
  pushLatencies.sort((a, b) => a - b);
  return {
    changesPerSec: (messages * perMessage) / elapsed,
    messagesPerSec: messages / elapsed,
    ackP50: percentile(ackLatencies, 50), ackP99: percentile(ackLatencies, 99), ackMax: ackLatencies.at(-1)!,
    pushP50: percentile(pushLatencies, 50), pushP99: percentile(pushLatencies, 99), pushMax: pushLatencies.at(-1)!,
    pushesReceived: pushes,
    ...(peakRssMb !== undefined ? { peakRssMb } : {}),
    ...(cpuMs !== undefined ? { cpuMsPer1000Changes: (cpuMs / (messages * perMessage)) * 1000 } : {}),
  };
}

/** Fills a database with `count` changes (pipelined messages of 1000), returns nothing. */
async function fill(url: string, databaseId: string, count: number): Promise<void> {
  await applyRunQuiet(url, databaseId, Math.min(1000, count), Math.ceil(count / 1000));
}

async function applyRunQuiet(url: string, databaseId: string, perMessage: number, messages: number): Promise<void> {
  const siteId = randomSiteId();
  const writer = await connect(url, databaseId, siteIdToWire(siteId));
  for (const [i, set] of loadChangeSets(siteId, perMessage, messages).entries()) {
    const ack = nextMessage(writer, 'apply_result');
    writer.send(JSON.stringify({ type: 'apply_changes', requestId: String(i), changes: [set] }));
    // nextMessage rejects on an error frame, so a refused fill stops the bench.
    await ack;
  }
  writer.close();
}

/** Catch-up paged by the client: one get_changes per page (handshake clientPaging). */
async function catchUp(url: string, databaseId: string): Promise<{ ms: number; changes: number; pages: number }> {
  const ws = await connect(url, databaseId, undefined, { clientPaging: true });
  const started = performance.now();
  let cursor: string | undefined;
  let changes = 0;
  let pages = 0;
  for (;;) {
    const reply = nextMessage(ws, 'changes');
    ws.send(JSON.stringify(cursor ? { type: 'get_changes', sinceHLC: cursor } : { type: 'get_changes' }));
    const page = await reply as { changeSets: { hlc: string; changes: unknown[] }[]; hasMore?: boolean };
    pages++;
    for (const set of page.changeSets) changes += set.changes.length;
    if (page.changeSets.length > 0) cursor = page.changeSets.at(-1)!.hlc;
    if (!page.hasMore) break;
  }
  const ms = performance.now() - started;
  ws.close();
  return { ms, changes, pages };
}

/** Catch-up as real clients get it: ONE get_changes, every page streamed by the server (docs/protocol.md §9). */
async function catchUpStreamed(url: string, databaseId: string): Promise<{ ms: number; changes: number; pages: number }> {
  const ws = await connect(url, databaseId);
  const started = performance.now();
  let changes = 0;
  let pages = 0;
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (data: Buffer) => {
      const msg = JSON.parse(data.toString()) as { type: string; changeSets?: { changes: unknown[] }[]; hasMore?: boolean; message?: string };
      if (msg.type === 'error') reject(new Error(msg.message));
      if (msg.type !== 'changes') return;
      pages++;
      for (const set of msg.changeSets!) changes += set.changes.length;
      if (!msg.hasMore) resolve();
    });
    ws.send('{"type":"get_changes"}');
  });
  const ms = performance.now() - started;
  ws.close();
  return { ms, changes, pages };
}

async function snapshotWs(url: string, databaseId: string): Promise<{ ms: number; entries: number; entriesPerSec: number }> {
  const ws = await connect(url, databaseId);
  let entries = 0;
  const started = performance.now();
  await new Promise<void>((resolve) => {
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      if (text.startsWith('{"type":"snapshot_complete"')) resolve();
      else if (text.includes('"type":"footer"')) entries = Number(/"totalEntries":(\d+)/.exec(text)![1]);
    });
    ws.send('{"type":"get_snapshot"}');
  });
  const ms = performance.now() - started;
  ws.close();
  return { ms, entries, entriesPerSec: entries / (ms / 1000) };
}

async function snapshotHttp(baseUrl: string, databaseId: string): Promise<{ ms: number; entries: number; entriesPerSec: number }> {
  const started = performance.now();
  const res = await fetch(`${baseUrl}/${encodeURIComponent(databaseId)}/snapshot`, { headers: { 'X-Site-Id': siteIdToWire(randomSiteId()) } });
  const text = await res.text();
  const ms = performance.now() - started;
  const entries = Number(/"totalEntries":(\d+)/.exec(text)?.[1] ?? 0);
  return { ms, entries, entriesPerSec: entries / (ms / 1000) };
}

/**
 * The storage ceiling for snapshots: entries/s of a bare scan through our
 * LevelDB store (leveldown turns every key and value into a Buffer), over
 * entries of the size a column version has.
 */
async function rawScanEntriesPerSec(dir: string, n: number): Promise<number> {
  const store = await openLevelStore(dir);
  try {
    for (let i = 0; i < n; i += 1000) {
      await store.write(Array.from({ length: Math.min(1000, n - i) }, (_, j) => ({
        type: 'put' as const, key: Buffer.from(`0main\u0000notes\u0000[${i + j}]\u0000title`), value: Buffer.alloc(150, 0x41),
      })));
    }
    let best = 0;
    for (let round = 0; round < 3; round++) {
      const started = performance.now();
      const it = store.iterator({ readAhead: 512 * 1024 });
      let count = 0;
      for (let batch = await it.nextBatch(1024); batch.length > 0; batch = await it.nextBatch(1024)) count += batch.length;
      await it.close();
      best = Math.max(best, count / ((performance.now() - started) / 1000));
    }
    return best;
  } finally {
    await store.close();
  }
}

/**
 * CLI flags and environment that archive to `s3` under `prefix`: the keys go
 * in the environment, as the README advises (flags show in ps). The server
 * also takes `--s3-durability`; `restore` refuses it.
 */
function s3Settings(s3: S3TestServer, prefix: string): { args: string[]; env: NodeJS.ProcessEnv } {
  return {
    args: ['--s3-bucket', s3.bucket, '--s3-endpoint', s3.endpoint, '--s3-force-path-style', 'true', '--s3-key-prefix', prefix],
    env: childEnv({ S3_ACCESS_KEY_ID: s3.accessKeyId, S3_SECRET_ACCESS_KEY: s3.secretAccessKey }),
  };
}

/** Polls /metrics every 10 ms until `done` holds (throws after `timeoutMs`); resolves with the last scrape. */
async function waitForMetrics(baseUrl: string, done: (read: (sample: string) => number) => boolean, what: string, timeoutMs: number): Promise<(sample: string) => number> {
  const started = performance.now();
  for (;;) {
    const read = await scrapeMetrics(baseUrl);
    if (done(read)) return read;
    if (read('sync_archive_upload_errors_total') > 0 || read('sync_archive_snapshot_errors_total') > 0) {
      throw new Error(`the archive failed while waiting for ${what} (sync_archive_upload_errors_total ${read('sync_archive_upload_errors_total')}, sync_archive_snapshot_errors_total ${read('sync_archive_snapshot_errors_total')})`);
    }
    if (performance.now() - started > timeoutMs) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await sleep(10);
  }
}

const archiveComplete = (read: (sample: string) => number): boolean =>
  read('sync_archive_pending_transactions') === 0 && read('sync_archive_lag_seconds') === 0;

interface ArchiveLag {
  /** sync_archive_lag_seconds and sync_archive_pending_transactions the moment the last write was acknowledged. */
  lagSecondsAtEnd: number;
  pendingAtEnd: number;
  /** From then until both read 0 (10 ms polls; 0 when already there). */
  caughtUpMs: number;
}

/** Async mode: the archive's lag at the end of a load, then how long it takes to catch up. */
async function watchArchive(baseUrl: string): Promise<ArchiveLag> {
  const started = performance.now();
  const first = await scrapeMetrics(baseUrl);
  const lagSecondsAtEnd = first('sync_archive_lag_seconds');
  const pendingAtEnd = first('sync_archive_pending_transactions');
  if (archiveComplete(first)) return { lagSecondsAtEnd, pendingAtEnd, caughtUpMs: 0 };
  await waitForMetrics(baseUrl, archiveComplete, 'the archive to catch up', 300_000);
  return { lagSecondsAtEnd, pendingAtEnd, caughtUpMs: performance.now() - started };
}

type S3ApplyFigures = ApplyFigures & { archive?: ArchiveLag };

/**
 * The apply loads against a coordinator per durability mode, each archiving
 * to `s3` under its own prefix, with the default snapshot policy (a snapshot
 * after 1,000 changes and half the database size in changes, streamed while
 * the load goes on).
 */
async function s3ApplyRuns(s3: S3TestServer, nodeArgs: string[], dataDir: string, configFile: string, scenarios: [string, number, number, number][]): Promise<Record<string, Partial<Record<S3Mode, S3ApplyFigures>>>> {
  const out: Record<string, Partial<Record<S3Mode, S3ApplyFigures>>> = {};
  for (const mode of S3_MODES) {
    const { args, env } = s3Settings(s3, `apply-${mode}/`);
    phase(`S3 ${mode}: the apply loads`);
    const coordinator = await startCoordinator(nodeArgs, join(dataDir, `data-s3-${mode}`), configFile, [...args, '--s3-durability', mode], env);
    try {
      let run = 0;
      for (const [name, per, count, window] of scenarios) {
        if (run === 0) {
          await applyRun(coordinator.wsUrl, 'warmup', per, Math.min(count, 50), window);
          if (mode === 'async') await waitForMetrics(coordinator.baseUrl, archiveComplete, 'the warm-up to be archived', 300_000);
        }
        let watching: Promise<ArchiveLag> | undefined;
        const before = await serverApplySeconds(coordinator.baseUrl);
        const figures: S3ApplyFigures = await applyRun(coordinator.wsUrl, `bench-${run}`, per, count, window, { pid: coordinator.pid, rss: true },
          mode === 'async' ? () => { watching = watchArchive(coordinator.baseUrl); } : undefined);
        const after = await serverApplySeconds(coordinator.baseUrl);
        figures.serverApplyMeanMs = ((after.sum - before.sum) / Math.max(1, after.count - before.count)) * 1000;
        if (watching) figures.archive = await watching;
        (out[name] ??= {})[mode] = figures;
        run++;
      }
    } finally {
      await stopProcess(coordinator);
    }
  }
  return out;
}

interface RestoreFigures {
  /** Column versions written (one change each, 1,000 per message). */
  entries: number;
  fillMs: number;
  /** From the end of the fill until the snapshot was uploaded and no batch was pending. */
  archivedMs: number;
  /** Entries the snapshot held in the store (column versions, change log, metadata), as the CLI restore reported them. */
  storeEntries?: number;
  /** Batches replayed after the snapshot by the CLI restore. */
  batches?: number;
  /** Data dir wiped, coordinator started: its first handshake, which restores the database. */
  firstHandshakeMs: number;
  /** `sync-coordinator restore <db>` on a wiped data dir, spawn to exit (node start and SDK load included). */
  cliMs: number;
  /** The time its summary line gives (the restore itself). */
  cliReportedMs?: number;
}

/** Runs the CLI with `argv`; resolves with its exit code and output. */
function runCli(argv: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'dist', 'cli', 'sync-coordinator.js'), ...argv], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-10_000); });
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Restore time: fills database `restore-bench` with `entries` changes
 * through an async-mode coordinator whose snapshot policy takes one snapshot
 * right after the fill (snapshotChanges = entries), waits until it is
 * archived, stops the coordinator, wipes its data dir and times the first
 * handshake of a new one on it (the open restores the database); checks the
 * restored database by its snapshot's entry count; then wipes again and
 * times `sync-coordinator restore restore-bench` on the same settings.
 */
async function restoreRun(s3: S3TestServer, nodeArgs: string[], dataDir: string, entries: number): Promise<RestoreFigures> {
  const db = 'restore-bench';
  const dir = join(dataDir, 'data-restore');
  const configFile = join(dataDir, 'restore-config.json');
  // The handshake timer runs while the database opens, so with the default
  // 10 s a restore that takes longer closes the first client (1008 "Handshake
  // timeout"): here the whole restore is to be timed.
  await writeFile(configFile, JSON.stringify({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0, snapshotChanges: entries, snapshotIntervalMs: 3_600_000, handshakeTimeoutMs: 600_000 } }));
  const { args, env } = s3Settings(s3, 'restore/');
  let coordinator = await startCoordinator(nodeArgs, dir, configFile, [...args, '--s3-durability', 'async'], env);
  let fillMs: number;
  let archivedMs: number;
  try {
    phase(`restore: filling ${fmt(entries)} entries`);
    const started = performance.now();
    await fill(coordinator.wsUrl, db, entries);
    const filled = performance.now();
    fillMs = filled - started;
    phase('restore: waiting for the snapshot to be archived');
    await waitForMetrics(coordinator.baseUrl, (read) => read('sync_archive_snapshots_total') >= 1 && archiveComplete(read), `the snapshot of ${fmt(entries)} entries to be archived`, 600_000);
    archivedMs = performance.now() - filled;
  } finally {
    await stopProcess(coordinator);
  }
  await rm(dir, { recursive: true, force: true });
  phase('restore: data dir wiped, restoring on the first handshake');
  coordinator = await startCoordinator(nodeArgs, dir, configFile, [...args, '--s3-durability', 'async'], env);
  let firstHandshakeMs: number;
  try {
    const started = performance.now();
    const ws = await connect(coordinator.wsUrl, db);
    firstHandshakeMs = performance.now() - started;
    ws.close();
    const read = await scrapeMetrics(coordinator.baseUrl);
    if (read('sync_archive_restores_total{result="restored"}') !== 1) throw new Error('the first handshake on the wiped data dir did not restore the database');
    const check = await snapshotHttp(coordinator.baseUrl, db);
    if (check.entries !== entries) throw new Error(`the restored database has ${check.entries} entries, not ${entries}`);
  } finally {
    await stopProcess(coordinator);
  }
  await rm(dir, { recursive: true, force: true });
  phase('restore: data dir wiped, sync-coordinator restore');
  const started = performance.now();
  const cli = await runCli(['restore', db, '--data-dir', dir, '--config', configFile, ...args], env);
  const cliMs = performance.now() - started;
  if (cli.code !== 0) throw new Error(`sync-coordinator restore exited with ${cli.code}:\n${cli.stderr}`);
  const summary = /\((\d+) store entries\) \+ (\d+) batches .* in ([\d.]+) s\s*$/.exec(cli.stdout);
  return {
    entries, fillMs, archivedMs, firstHandshakeMs, cliMs,
    ...(summary ? { storeEntries: Number(summary[1]), batches: Number(summary[2]), cliReportedMs: Number(summary[3]) * 1000 } : {}),
  };
}

async function main(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'sync-bench-'));
  // All load comes from one address and one writer: the per-address and
  // per-connection rate limits would measure themselves, not the server.
  const configFile = join(dataDir, 'bench-config.json');
  await writeFile(configFile, JSON.stringify({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0 } }));
  const profileArgs = [...(PROFILE ? ['--cpu-prof', '--cpu-prof-dir', PROFILE] : []), ...(option('node-args', '') ? option('node-args', '').split(' ') : [])];
  const coordinator = await startCoordinator(profileArgs, join(dataDir, 'data'), configFile);
  const relay = await startProcess(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'relay.ts')], /listening on (ws:\/\/\S+)/);
  const { baseUrl, wsUrl } = coordinator;
  let s3: S3TestServer | undefined;
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGb: Math.round(totalmem() / 2 ** 30), node: process.version },
    options: { quick: QUICK, rounds: ROUNDS, subscribers: SUBSCRIBERS, window: WINDOW, messages50: MESSAGES_50, messages1: MESSAGES_1, s3: S3, restoreEntries: RESTORE_ENTRIES, nodes: NODES, databases: DATABASES },
  };
  try {
    await new Promise((r) => setTimeout(r, 500));
    const idleRssMb = (await rssKb(coordinator.pid)) / 1024;
    // An idle server stays idle: V8's memory reducer gives back the start's
    // garbage about 8 s after the last allocation, so the idle figure a user
    // sees a minute later is this one (not in --quick, to keep CI short, nor with --only).
    let settledIdleRssMb: number | undefined;
    if (!QUICK && !ONLY) {
      await new Promise((r) => setTimeout(r, SETTLE_MS));
      settledIdleRssMb = (await rssKb(coordinator.pid)) / 1024;
    }
    const scenarios: [string, number, number, number][] = [
      ['50/msg serial', 50, MESSAGES_50, 1],
      ['50/msg window 16', 50, MESSAGES_50, WINDOW],
      ['1/msg serial', 1, MESSAGES_1, 1],
      ['1/msg window 16', 1, MESSAGES_1, WINDOW],
    ];
    const apply: Record<string, { coordinator: ApplyFigures; relay: ApplyFigures; ratios: number[] }> = {};
    let run = 0;
    const selected = scenarios.filter(([n]) => !ONLY || n === ONLY);
    for (const [name, per, count, window] of selected) {
      // Warm up both servers so JIT and caches do not count against the first scenario.
      if (run === 0) {
        await applyRun(wsUrl, 'warmup', per, Math.min(count, 200), window);
        await applyRun(relay.url, 'warmup', per, Math.min(count, 200), window);
      }
      const rounds: { coordinator: ApplyFigures; relay: ApplyFigures; ratio: number }[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        phase(`${name}, round ${round + 1} of ${ROUNDS}`);
        const before = await serverApplySeconds(baseUrl);
        const ours = await applyRun(wsUrl, `bench-${run}`, per, count, window, { pid: coordinator.pid, rss: true });
        const after = await serverApplySeconds(baseUrl);
        // Time inside the server from validation to the commit, per message: the rest of the ack latency is transport and queueing.
        ours.serverApplyMeanMs = ((after.sum - before.sum) / Math.max(1, after.count - before.count)) * 1000;
        const theirs = await applyRun(relay.url, `bench-${run}`, per, count, window, { pid: relay.pid, rss: false });
        rounds.push({ coordinator: ours, relay: theirs, ratio: ours.changesPerSec / theirs.changesPerSec });
        run++;
      }
      const median = [...rounds].sort((a, b) => a.ratio - b.ratio)[Math.floor(rounds.length / 2)]!;
      // Peak RSS of the first round: later rounds also hold the stores of the earlier ones open.
      apply[name] = { coordinator: { ...median.coordinator, peakRssMb: rounds[0]!.coordinator.peakRssMb }, relay: median.relay, ratios: rounds.map((r) => r.ratio) };
    }
    results.apply = apply;
    // What LevelDB alone costs per serial message of each load: the room it leaves under the relay.
    const floors: Record<string, StorageFloor & { relayRoundTripUs: number; ratioRoom: number; ratioRoomAfterWork: number }> = {};
    for (const [name, per, count, window] of selected) {
      if (window !== 1) continue;
      phase(`storage floor of ${name}`);
      const floor = await storageFloor(join(dataDir, `floor-${per}`), per, Math.min(count, 2000));
      const relayRoundTripUs = 1e6 / apply[name]!.relay.messagesPerSec;
      floors[name] = {
        ...floor, relayRoundTripUs,
        ratioRoom: relayRoundTripUs / (relayRoundTripUs + floor.totalUs),
        ratioRoomAfterWork: relayRoundTripUs / (relayRoundTripUs + floor.totalAfterWorkUs),
      };
    }
    results.storageFloor = floors;
    const catchup: Record<string, unknown> = {};
    const snapshot: Record<string, unknown> = {};
    for (const n of ONLY ? [] : CATCHUP) {
      const db = `catchup-${n}`;
      await fill(wsUrl, db, n);
      const before = await serverApplySeconds(baseUrl, 'sync_get_changes_duration_seconds');
      const figures: { ms: number; changes: number; pages: number; serverMs?: number } = await catchUp(wsUrl, db);
      // The server's own share: reading and assembling the pages.
      figures.serverMs = ((await serverApplySeconds(baseUrl, 'sync_get_changes_duration_seconds')).sum - before.sum) * 1000;
      if (figures.changes !== n) throw new Error(`catch-up of ${n} returned ${figures.changes} changes`);
      const streamed = await catchUpStreamed(wsUrl, db);
      if (streamed.changes !== n) throw new Error(`streamed catch-up of ${n} returned ${streamed.changes} changes`);
      catchup[String(n)] = { ...figures, streamed };
      snapshot[String(n)] = { websocket: await snapshotWs(wsUrl, db), http: await snapshotHttp(baseUrl, db) };
    }
    results.catchup = catchup;
    results.snapshot = snapshot;
    const scanCeiling = ONLY ? undefined : await rawScanEntriesPerSec(join(dataDir, 'raw-scan'), Math.max(...CATCHUP));
    results.storageScanEntriesPerSec = scanCeiling;
    results.memory = { idleRssMb, settledIdleRssMb, peakRssMbDuring50Serial: apply['50/msg serial']?.coordinator.peakRssMb, finalRssMb: (await rssKb(coordinator.pid)) / 1024 };

    // Before S3, like the figures above: its processes are all stopped when it returns.
    let cluster: ClusterBenchResults | undefined;
    if (NODES > 0) {
      cluster = await runClusterBench({
        nodes: NODES, relayUrl: relay.url, dataDir, nodeArgs: profileArgs, subscribers: SUBSCRIBERS, window: WINDOW,
        hotMessages: QUICK ? 10 : 1000, databases: DATABASES, manyMessages: QUICK ? 4 : 30, warmupMessages: QUICK ? 3 : 20,
      });
      results.cluster = cluster;
    }

    // The S3 runs come last, so they cannot change the figures above (s3rver shares the cores).
    let s3Apply: Record<string, Partial<Record<S3Mode, S3ApplyFigures>>> | undefined;
    let restore: RestoreFigures | undefined;
    if (S3) {
      phase('starting s3rver, a local stand-in for S3');
      s3 = await startS3Server('sync-bench');
      s3Apply = await s3ApplyRuns(s3, profileArgs, dataDir, configFile, selected.filter(([name]) => S3_LOADS(name)));
      if (!ONLY) restore = await restoreRun(s3, profileArgs, dataDir, RESTORE_ENTRIES);
      results.s3 = { server: 's3rver on 127.0.0.1, a local stand-in for S3', apply: s3Apply, ...(restore ? { restore } : {}) };
    } else {
      results.s3 = { skipped: '--no-s3' };
    }
    let scale: ScaleResults | undefined;
    if (SCALE.figures.length > 0) {
      scale = await runScaleBench(SCALE, dataDir, profileArgs);
      results.scale = scale;
    }

    const lines: string[] = [];
    lines.push(`sync-coordinator bench (${QUICK ? 'quick' : 'full'}), ${SUBSCRIBERS} subscribers, node ${process.version}, ${cpus().length} cores`);
    lines.push('');
    if (ROUNDS > 1) lines.push(`Each load ran ${ROUNDS} rounds, the coordinator and the relay taking turns: the round with the median ratio is shown, the range of all rounds in brackets.`, '');
    lines.push('| load | changes/s | ratio to relay | ack p50/p99 ms | push p50/p99/max ms | server apply mean ms | CPU ms per 1,000 changes: ours · relay | relay changes/s | relay push p99 ms |');
    lines.push('|---|---|---|---|---|---|---|---|---|');
    for (const [name, { coordinator: c, relay: r, ratios }] of Object.entries(apply)) {
      const range = ratios.length > 1 ? ` (${fmt(Math.min(...ratios), 2)}–${fmt(Math.max(...ratios), 2)})` : '';
      lines.push(`| ${name} | ${fmt(c.changesPerSec)} | ${fmt(c.changesPerSec / r.changesPerSec, 2)}${range} | ${fmt(c.ackP50, 2)} / ${fmt(c.ackP99, 2)} | ${fmt(c.pushP50, 2)} / ${fmt(c.pushP99, 2)} / ${fmt(c.pushMax, 1)} | ${fmt(c.serverApplyMeanMs, 2)} | ${fmt(c.cpuMsPer1000Changes, 1)} · ${fmt(r.cpuMsPer1000Changes, 1)} | ${fmt(r.changesPerSec)} | ${fmt(r.pushP99, 2)} |`);
    }
    for (const [name, f] of Object.entries(floors)) {
      const reached = apply[name]!.coordinator.changesPerSec / apply[name]!.relay.changesPerSec;
      lines.push(
        `storage floor, ${name}: LevelDB alone writes its ${f.opsPerMessage}-op batch in ${fmt(f.totalUs, 0)} µs back to back, ${fmt(f.totalAfterWorkUs, 0)} µs after ${WORK_US} µs of main-thread work as a server does ` +
        `(a bare round trip through libuv's pool: ${fmt(f.poolRoundTripUs, 0)} µs, and ${fmt(f.poolRoundTripAfterWorkUs, 0)} µs); the relay's round trip is ${fmt(f.relayRoundTripUs, 0)} µs, ` +
        `so storing through LevelDB leaves room for a ratio of at most ${fmt(f.ratioRoom, 2)}, or ${fmt(f.ratioRoomAfterWork, 2)} after work (reached ${fmt(reached, 2)})`,
      );
    }
    lines.push('');
    lines.push('| data | catch-up, client-paged ms (pages) | of it in the server, ms | catch-up, ONE get_changes ms (pages) | snapshot WS entries/s | snapshot HTTP entries/s |');
    lines.push('|---|---|---|---|---|---|');
    for (const n of ONLY ? [] : CATCHUP) {
      const c = catchup[String(n)] as { ms: number; pages: number; serverMs?: number; streamed: { ms: number; pages: number } };
      const s = snapshot[String(n)] as { websocket: { entriesPerSec: number }; http: { entriesPerSec: number } };
      lines.push(`| ${fmt(n)} changes | ${fmt(c.ms, 1)} (${c.pages}) | ${fmt(c.serverMs, 1)} | ${fmt(c.streamed.ms, 1)} (${c.streamed.pages}) | ${fmt(s.websocket.entriesPerSec)} | ${fmt(s.http.entriesPerSec)} |`);
    }
    if (scanCeiling) lines.push(`storage ceiling: a bare LevelDB scan reads ${fmt(scanCeiling)} entries/s on this machine`);
    lines.push('');
    const mem = results.memory as { idleRssMb: number; settledIdleRssMb?: number; peakRssMbDuring50Serial?: number; finalRssMb: number };
    const settled = mem.settledIdleRssMb === undefined ? '' : ` (${fmt(mem.settledIdleRssMb, 1)} MB after ${SETTLE_MS / 1000} s idle)`;
    lines.push(`memory: idle RSS ${fmt(mem.idleRssMb, 1)} MB 0.5 s after start${settled}, peak during 50/msg serial ${fmt(mem.peakRssMbDuring50Serial, 1)} MB, at the end ${fmt(mem.finalRssMb, 1)} MB`);
    lines.push('');
    if (cluster) lines.push(...clusterTable(cluster), '');
    if (!s3Apply) {
      lines.push('S3: skipped (--no-s3)');
    } else {
      lines.push('S3 durability: against s3rver on 127.0.0.1, a local stand-in for S3 (no network, no real S3 latency): `ack` latency here is a lower bound of real S3\'s.');
      lines.push('Default snapshot policy (a snapshot after 1,000 changes and half the database size in changes, streamed during the load). Archive lag at end: sync_archive_lag_seconds (sync_archive_pending_transactions) read when the last write was acknowledged; caught up after: from then until both read 0, how far behind the archive really was.');
      lines.push('');
      lines.push('| load | S3 | changes/s | ratio to no S3 | ack p50/p99 ms | push p50/p99 ms | server apply mean ms | archive lag at end s (pending tx) | archive caught up after ms |');
      lines.push('|---|---|---|---|---|---|---|---|---|');
      for (const [name, { coordinator: none }] of Object.entries(apply)) {
        if (!s3Apply[name]) continue;
        lines.push(`| ${name} | none | ${fmt(none.changesPerSec)} | 1.00 | ${fmt(none.ackP50, 2)} / ${fmt(none.ackP99, 2)} | ${fmt(none.pushP50, 2)} / ${fmt(none.pushP99, 2)} | ${fmt(none.serverApplyMeanMs, 2)} | | |`);
        for (const mode of S3_MODES) {
          const c = s3Apply[name]?.[mode];
          if (!c) continue;
          const lag = c.archive ? `${fmt(c.archive.lagSecondsAtEnd, 3)} (${fmt(c.archive.pendingAtEnd)})` : '-';
          lines.push(`| ${name} | ${mode} | ${fmt(c.changesPerSec)} | ${fmt(c.changesPerSec / none.changesPerSec, 2)} | ${fmt(c.ackP50, 2)} / ${fmt(c.ackP99, 2)} | ${fmt(c.pushP50, 2)} / ${fmt(c.pushP99, 2)} | ${fmt(c.serverApplyMeanMs, 2)} | ${lag} | ${c.archive ? fmt(c.archive.caughtUpMs) : '-'} |`);
        }
      }
      if (restore) {
        const perMillion = (ms: number): string => fmt(ms / 1000 / (restore!.entries / 1e6), 1);
        lines.push('');
        lines.push('| restore | entries | fill s | snapshot archived after s | restore on first handshake s | s per million entries | `sync-coordinator restore` s (its own count) | s per million entries |');
        lines.push('|---|---|---|---|---|---|---|---|');
        lines.push(`| wiped data dir | ${fmt(restore.entries)} (${restore.storeEntries !== undefined ? `${fmt(restore.storeEntries)} store entries` : '-'}, ${fmt(restore.batches)} batches after the snapshot) | ${fmt(restore.fillMs / 1000, 1)} | ${fmt(restore.archivedMs / 1000, 1)} | ${fmt(restore.firstHandshakeMs / 1000, 2)} | ${perMillion(restore.firstHandshakeMs)} | ${fmt(restore.cliMs / 1000, 2)} (${fmt((restore.cliReportedMs ?? NaN) / 1000, 1)}) | ${perMillion(restore.cliMs)} |`);
      }
    }
    if (scale) lines.push('', ...scaleTable(scale));
    process.stdout.write(`${lines.join('\n')}\n`);
    results.table = lines;
    await mkdir(dirname(OUT), { recursive: true });
    await writeFile(OUT, `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write(`\nwrote ${OUT}\n`);
  } finally {
    await stopProcess(coordinator);
    await stopProcess(relay);
    await s3?.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

await main();
