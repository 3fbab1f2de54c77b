/**
 * What the parts of `npm run bench` share: child processes (the built CLI,
 * the relay), WebSocket clients of the protocol, /metrics scrapes and number
 * formatting. Figures only: nothing here passes or fails.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import type { ChangeSet } from '../lib/protocol/messages.js';
import { randomSiteId, siteIdToWire } from '../lib/protocol/site-id.js';
import { TestSite } from '../spec/helpers/changes.js';

/** The repository root (the coordinators run from here). */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

export interface Proc { child: ChildProcess; url: string; pid: number }

/**
 * This process's environment without SYNC_*, S3_* and DISK_EVICTION_*
 * variables, plus `extra`: a coordinator's settings are the bench's flags and
 * config file only, so a shell set up for S3 or a cluster cannot change what
 * is measured.
 */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(SYNC_|S3_|DISK_EVICTION_)/.test(name)) env[name] = value;
  }
  // The AWS SDK warns about Node versions it will drop one day; nothing to act on here.
  return { ...env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...extra };
}

/** Spawns `command` and resolves once its stdout matches `pattern`, whose first group becomes `url`; rejects if it exits first. */
export function startProcess(command: string, argv: string[], pattern: RegExp, env: NodeJS.ProcessEnv = childEnv()): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'inherit'], cwd: ROOT, env });
    let out = '';
    const onData = (d: Buffer): void => {
      out += d.toString();
      const m = pattern.exec(out);
      if (m) {
        child.stdout!.off('data', onData);
        // Keep draining, or a chatty child would block on a full pipe.
        child.stdout!.resume();
        resolve({ child, url: m[1]!, pid: child.pid! });
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${command} exited with ${code} before listening`)));
  });
}

/** SIGTERM, then waits for the exit (at once when it already exited). */
export async function stopProcess(proc: Proc): Promise<void> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.child.once('exit', resolve));
  proc.child.kill('SIGTERM');
  await exited;
}

export interface Coordinator extends Proc { baseUrl: string; wsUrl: string }

/** The built CLI as users run it, on 127.0.0.1, port 0, over `dataDir` with `configFile`; `nodeArgs` go to node, `extraArgs` to the CLI. */
export async function startCoordinator(nodeArgs: string[], dataDir: string, configFile: string, extraArgs: string[] = [], env?: NodeJS.ProcessEnv): Promise<Coordinator> {
  const cli = join(ROOT, 'dist', 'cli', 'sync-coordinator.js');
  const proc = await startProcess(process.execPath, [...nodeArgs, cli, '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, '--config', configFile, ...extraArgs], /listening on (http:\/\/\S+)/, env);
  return { ...proc, baseUrl: proc.url, wsUrl: `${proc.url.replace(/^http/, 'ws')}/ws` };
}

/** The `p`th percentile (0-100) of ascending `sorted`; NaN when empty. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** The next message of `type` on `ws`; rejects on an `error` message or a close. */
export function nextMessage(ws: WebSocket, type: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const done = (): void => { ws.off('message', onMessage); ws.off('close', onClose); };
    const onMessage = (data: Buffer): void => {
      const msg = JSON.parse(data.toString());
      if (msg.type === type) { done(); resolve(msg); }
      else if (msg.type === 'error') { done(); reject(new Error(`${msg.code}: ${msg.message}`)); }
    };
    // A socket the server closes (a handshake timeout, say) must stop the bench, not hang it.
    const onClose = (code: number, reason: Buffer): void => { done(); reject(new Error(`the server closed the socket (${code} ${reason.toString()}) before ${type}`)); };
    ws.on('message', onMessage);
    ws.on('close', onClose);
  });
}

/** A socket on `databaseId` past its handshake (docs/protocol.md §4); `extra` joins the handshake. */
export async function connect(url: string, databaseId: string, siteId = siteIdToWire(randomSiteId()), extra: Record<string, unknown> = {}): Promise<WebSocket> {
  const ws = await open(url);
  const ack = nextMessage(ws, 'handshake_ack');
  ws.send(JSON.stringify({ type: 'handshake', databaseId, siteId, protocolVersion: 1, ...extra }));
  await ack;
  return ws;
}

/** One scrape of /metrics: the value of a sample by its name with labels as printed (`name{label="v"}`), 0 when absent. */
export async function scrapeMetrics(baseUrl: string): Promise<(sample: string) => number> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return (sample) => values.get(sample) ?? 0;
}

const benchStarted = performance.now();
/** A line on stderr for the long phases (the figures all come at the end, on stdout). */
export const phase = (text: string): void => { process.stderr.write(`bench: ${((performance.now() - benchStarted) / 1000).toFixed(1)} s: ${text}\n`); };

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => { setTimeout(resolve, ms); });

/** `n` with thousands separators and `digits` decimals; '-' for undefined or NaN. */
export const fmt = (n: number | undefined, digits = 0): string => (n === undefined || Number.isNaN(n) ? '-' : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));

/**
 * The change sets of an apply load: `messages` transactions of `perMessage`
 * column writes each, every one a new row of `main.notes` (pk [message, i]),
 * from one site whose clock starts 30 s back. The apply runs and the storage
 * floor (bench/storage-floor.ts) use the same ones.
 */
export function loadChangeSets(siteId: Buffer, perMessage: number, messages: number): ChangeSet[] {
  const site = new TestSite(siteId, Date.now() - 30_000);
  return Array.from({ length: messages }, (_, i) =>
    site.txn(Array.from({ length: perMessage }, (_, j) => ({ pk: [i, j], column: 'title', value: `value ${i}/${j}` }))));
}

/** Clock ticks per second of /proc/<pid>/stat (100 on nearly every Linux). */
const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** CPU time of a process (user + system, all threads), in ms. */
export async function processCpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) / TICKS) * 1000;
}
