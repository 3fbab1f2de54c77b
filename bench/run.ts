/**
 * `npm run bench`: starts the coordinator as users run it (the built CLI, in
 * its own process, on a temp data dir), drives it over real WebSockets from
 * this process, runs the same traffic through a trivial `ws` relay (the
 * transport ceiling of this machine), and prints figures plus their ratio to
 * the ceiling. Writes bench/results/latest.json. Figures, never pass/fail.
 *
 * Options: --quick (smoke run), --messages N, --subscribers N, --catchup N,N,
 * --window N, --out FILE.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { TestSite } from '../spec/helpers/changes.js';
import { randomSiteId, siteIdToWire } from '../lib/protocol/site-id.js';
import { openLevelStore } from '../lib/storage/leveldb.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const flag = (name: string): boolean => args.includes(`--${name}`);
const option = (name: string, fallback: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
};
const QUICK = flag('quick');
const SUBSCRIBERS = Number(option('subscribers', '10'));
const WINDOW = Number(option('window', '16'));
const MESSAGES_50 = Number(option('messages', QUICK ? '40' : '600'));
const MESSAGES_1 = QUICK ? 200 : 4000;
const CATCHUP = option('catchup', QUICK ? '2000' : '10000,100000').split(',').map(Number);
const OUT = option('out', join(ROOT, 'bench', 'results', 'latest.json'));
// --profile DIR: run the coordinator under --cpu-prof, profiles written to DIR.
const PROFILE = option('profile', '');
const ONLY = option('only', '');

interface Proc { child: ChildProcess; url: string; pid: number }

function startProcess(command: string, argv: string[], pattern: RegExp): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'inherit'], cwd: ROOT });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = pattern.exec(out);
      if (m) resolve({ child, url: m[1]!, pid: child.pid! });
    });
    child.once('exit', (code) => reject(new Error(`${command} exited with ${code} before listening`)));
  });
}

async function stopProcess(proc: Proc): Promise<void> {
  if (proc.child.exitCode !== null) return;
  const exited = new Promise((resolve) => proc.child.once('exit', resolve));
  proc.child.kill('SIGTERM');
  await exited;
}

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

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

function nextMessage(ws: WebSocket, type: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const onMessage = (data: Buffer): void => {
      const msg = JSON.parse(data.toString());
      if (msg.type === type) { ws.off('message', onMessage); resolve(msg); }
      else if (msg.type === 'error') { ws.off('message', onMessage); reject(new Error(`${msg.code}: ${msg.message}`)); }
    };
    ws.on('message', onMessage);
  });
}

async function connect(url: string, databaseId: string, siteId = siteIdToWire(randomSiteId()), extra: Record<string, unknown> = {}): Promise<WebSocket> {
  const ws = await open(url);
  const ack = nextMessage(ws, 'handshake_ack');
  ws.send(JSON.stringify({ type: 'handshake', databaseId, siteId, protocolVersion: 1, ...extra }));
  await ack;
  return ws;
}

interface ApplyFigures {
  changesPerSec: number;
  messagesPerSec: number;
  ackP50: number; ackP99: number; ackMax: number;
  pushP50: number; pushP99: number; pushMax: number;
  pushesReceived: number;
  peakRssMb?: number;
  serverApplyMeanMs?: number;
}

/** Sum and count of sync_apply_changes_duration_seconds, from /metrics. */
async function serverApplySeconds(baseUrl: string, metric = 'sync_apply_changes_duration_seconds'): Promise<{ sum: number; count: number }> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const read = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return { sum: read(`${metric}_sum`), count: read(`${metric}_count`) };
}

/** One writer sending `messages` messages of `perMessage` changes, `window` in flight, to `subscribers` listeners. */
async function applyRun(url: string, databaseId: string, perMessage: number, messages: number, window: number, pid?: number): Promise<ApplyFigures> {
  const siteBytes = randomSiteId();
  const site = new TestSite(siteBytes, Date.now() - 30_000);
  const frames: string[] = [];
  const txIds: string[] = [];
  for (let i = 0; i < messages; i++) {
    const set = site.txn(Array.from({ length: perMessage }, (_, j) => ({ pk: [i, j], column: 'title', value: `value ${i}/${j}` })));
    txIds.push(set.transactionId);
    frames.push(JSON.stringify({ type: 'apply_changes', requestId: String(i), changes: [set] }));
  }
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
  const sampler = pid ? rssSampler(pid) : undefined;
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
      if (done === messages) resolve();
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
  };
}

/** Fills a database with `count` changes (pipelined messages of 1000), returns nothing. */
async function fill(url: string, databaseId: string, count: number): Promise<void> {
  await applyRunQuiet(url, databaseId, Math.min(1000, count), Math.ceil(count / 1000));
}

async function applyRunQuiet(url: string, databaseId: string, perMessage: number, messages: number): Promise<void> {
  const site = new TestSite(randomSiteId(), Date.now() - 30_000);
  const writer = await connect(url, databaseId, site.wire);
  for (let i = 0; i < messages; i++) {
    const set = site.txn(Array.from({ length: perMessage }, (_, j) => ({ pk: [i, j], column: 'title', value: `value ${i}/${j}` })));
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

const fmt = (n: number | undefined, digits = 0): string => (n === undefined || Number.isNaN(n) ? '-' : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));

async function main(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'sync-bench-'));
  const cli = join(ROOT, 'dist', 'cli', 'sync-coordinator.js');
  // All load comes from one address and one writer: the per-address and
  // per-connection rate limits would measure themselves, not the server.
  const configFile = join(dataDir, 'bench-config.json');
  await writeFile(configFile, JSON.stringify({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0 } }));
  const profileArgs = [...(PROFILE ? ['--cpu-prof', '--cpu-prof-dir', PROFILE] : []), ...(option('node-args', '') ? option('node-args', '').split(' ') : [])];
  const coordinator = await startProcess(process.execPath, [...profileArgs, cli, '--host', '127.0.0.1', '--port', '0', '--data-dir', join(dataDir, 'data'), '--config', configFile], /listening on (http:\/\/\S+)/);
  const relay = await startProcess(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'relay.ts')], /listening on (ws:\/\/\S+)/);
  const baseUrl = coordinator.url;
  const wsUrl = `${baseUrl.replace(/^http/, 'ws')}/ws`;
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGb: Math.round(totalmem() / 2 ** 30), node: process.version },
    options: { quick: QUICK, subscribers: SUBSCRIBERS, window: WINDOW, messages50: MESSAGES_50, messages1: MESSAGES_1 },
  };
  try {
    await new Promise((r) => setTimeout(r, 500));
    const idleRssMb = (await rssKb(coordinator.pid)) / 1024;
    const scenarios: [string, number, number, number][] = [
      ['50/msg serial', 50, MESSAGES_50, 1],
      ['50/msg window 16', 50, MESSAGES_50, WINDOW],
      ['1/msg serial', 1, MESSAGES_1, 1],
      ['1/msg window 16', 1, MESSAGES_1, WINDOW],
    ];
    const apply: Record<string, { coordinator: ApplyFigures; relay: ApplyFigures }> = {};
    let run = 0;
    for (const [name, per, count, window] of scenarios.filter(([n]) => !ONLY || n === ONLY)) {
      // Warm up both servers so JIT and caches do not count against the first scenario.
      if (run === 0) {
        await applyRun(wsUrl, 'warmup', per, Math.min(count, 50), window);
        await applyRun(relay.url, 'warmup', per, Math.min(count, 50), window);
      }
      const before = await serverApplySeconds(baseUrl);
      const ours = await applyRun(wsUrl, `bench-${run}`, per, count, window, coordinator.pid);
      const after = await serverApplySeconds(baseUrl);
      // Time inside the server from validation to the commit, per message: the rest of the ack latency is transport and queueing.
      ours.serverApplyMeanMs = ((after.sum - before.sum) / Math.max(1, after.count - before.count)) * 1000;
      const theirs = await applyRun(relay.url, `bench-${run}`, per, count, window);
      apply[name] = { coordinator: ours, relay: theirs };
      run++;
    }
    results.apply = apply;
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
    results.memory = { idleRssMb, peakRssMbDuring50Serial: apply['50/msg serial']?.coordinator.peakRssMb, finalRssMb: (await rssKb(coordinator.pid)) / 1024 };

    const lines: string[] = [];
    lines.push(`sync-coordinator bench (${QUICK ? 'quick' : 'full'}), ${SUBSCRIBERS} subscribers, node ${process.version}, ${cpus().length} cores`);
    lines.push('');
    lines.push('| load | changes/s | ratio to relay | ack p50/p99 ms | push p50/p99/max ms | server apply mean ms | relay changes/s | relay push p99 ms |');
    lines.push('|---|---|---|---|---|---|---|---|');
    for (const [name, { coordinator: c, relay: r }] of Object.entries(apply)) {
      lines.push(`| ${name} | ${fmt(c.changesPerSec)} | ${fmt(c.changesPerSec / r.changesPerSec, 2)} | ${fmt(c.ackP50, 2)} / ${fmt(c.ackP99, 2)} | ${fmt(c.pushP50, 2)} / ${fmt(c.pushP99, 2)} / ${fmt(c.pushMax, 1)} | ${fmt(c.serverApplyMeanMs, 2)} | ${fmt(r.changesPerSec)} | ${fmt(r.pushP99, 2)} |`);
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
    const mem = results.memory as { idleRssMb: number; peakRssMbDuring50Serial?: number; finalRssMb: number };
    lines.push(`memory: idle RSS ${fmt(mem.idleRssMb, 1)} MB, peak during 50/msg serial ${fmt(mem.peakRssMbDuring50Serial, 1)} MB, at the end ${fmt(mem.finalRssMb, 1)} MB`);
    process.stdout.write(`${lines.join('\n')}\n`);
    results.table = lines;
    await mkdir(dirname(OUT), { recursive: true });
    await writeFile(OUT, `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write(`\nwrote ${OUT}\n`);
  } finally {
    await stopProcess(coordinator);
    await stopProcess(relay);
    await rm(dataDir, { recursive: true, force: true });
  }
}

await main();
