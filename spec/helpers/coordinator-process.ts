import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SyncRouterOptions } from '../../lib/config/options.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LISTENING = /sync-coordinator listening on (http:\/\/\S+)/;

/** Router options a config file can carry (the CLI's `router` section). */
export type ProcessRouterOptions = Omit<SyncRouterOptions, 'hooks' | 'registry' | 'now' | 'path' | 'dataDir' | 'corsOrigin' | 'authMode' | 'authTokens' | 'retentionHorizonMs' | 'batchSize'>;

/** How to start the coordinator process. */
export interface CoordinatorProcessOptions {
  /** Reused when given (and then not removed); a fresh temp dir otherwise. */
  dataDir?: string;
  /** Limits and intervals, written to the config file's `router` section. */
  router?: ProcessRouterOptions;
  /** Further CLI arguments, e.g. ['--auth-mode', 'token-whitelist', '--auth-tokens', 't']. */
  args?: string[];
  /** Extra environment, e.g. `{ DEBUG: 'sync-coordinator:cluster' }` while investigating (SYNC_* and DEBUG of this process are never passed on). */
  env?: NodeJS.ProcessEnv;
}

/** Exit status of the process. */
export interface ExitStatus { code: number | null; signal: NodeJS.Signals | null }

/** The real CLI (cli/sync-coordinator.ts, run from source) as a child process on 127.0.0.1, port 0. */
export interface CoordinatorProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly dataDir: string;
  /** http://127.0.0.1:<port>/sync */
  readonly baseUrl: string;
  /** ws://127.0.0.1:<port>/sync/ws */
  readonly wsUrl: string;
  readonly exited: Promise<ExitStatus>;
  /** True while the process runs. */
  alive(): boolean;
  /** VmRSS in bytes, from /proc/<pid>/status. */
  rss(): number;
  /** Open file descriptors of the process. */
  fdCount(): number;
  stderr(): string;
  /** GET <baseUrl><path> on a fresh connection (no keep-alive, so it holds no descriptor afterwards). */
  get(path: string, headers?: Record<string, string>): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>;
  /** POST <baseUrl><path> with `body` on a fresh connection; rejects when the connection fails. */
  post(path: string, body: string | Buffer, headers?: Record<string, string>): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>;
  /** The value of a metric sample from /metrics (0 when absent), e.g. `sync_websocket_connections_active`. */
  metric(sample: string): Promise<number>;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<ExitStatus>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<ExitStatus>;
  /** Stops the process if it still runs and removes the data dir unless it was given. */
  cleanup(): Promise<void>;
}

const running = new Set<CoordinatorProcess>();

/** Starts the CLI and resolves once it printed its listening line. */
export async function startCoordinatorProcess(options: CoordinatorProcessOptions = {}): Promise<CoordinatorProcess> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? await makeTempDir('coordinator-process-');
  const configDir = await makeTempDir('coordinator-config-');
  const configFile = join(configDir, 'sync-coordinator.json');
  await writeFile(configFile, JSON.stringify({ router: { heartbeatIntervalMs: 0, ...options.router } }));
  return launchCoordinatorProcess({
    args: [
      join(ROOT, 'cli/sync-coordinator.ts'),
      '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, '--config', configFile, ...(options.args ?? []),
    ],
    dataDir,
    ownDir,
    env: options.env,
    release: () => removeTempDir(configDir),
  });
}

/** How to launch a coordinator entry point (for helpers that start something other than the CLI). */
export interface LaunchOptions {
  /** Script and its arguments, run as `node --import tsx <args...>` from the repository root. */
  args: string[];
  dataDir: string;
  /** Remove `dataDir` at cleanup (and when the start fails). */
  ownDir: boolean;
  /** Keep a pipe on the child's stdin, so an entry point that watches it ends with this process. @default false */
  stdinPipe?: boolean;
  /** Extra environment (SYNC_* and DEBUG of this process are never passed on). */
  env?: NodeJS.ProcessEnv;
  /** Run at cleanup (and when the start fails), e.g. to remove a config file. */
  release?: () => Promise<void>;
}

/**
 * Starts `node --import tsx <args>` and resolves once it printed the CLI's
 * listening line (`sync-coordinator listening on http://...`); rejects with
 * its stderr when it exits first.
 */
export async function launchCoordinatorProcess(options: LaunchOptions): Promise<CoordinatorProcess> {
  const { dataDir, ownDir } = options;
  const release = options.release ?? (async () => undefined);
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!/^(SYNC_|DEBUG$)/.test(name)) env[name] = value;
  Object.assign(env, options.env);
  const child = spawn(process.execPath, ['--import', 'tsx', ...options.args], {
    cwd: ROOT, env, stdio: [options.stdinPipe ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => { out += text; });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => { err = (err + text).slice(-20_000); });
  const exited = new Promise<ExitStatus>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  void exited.then(() => child.stdin?.destroy());
  const baseUrl = await new Promise<string>((resolve, reject) => {
    const onData = (): void => {
      const match = LISTENING.exec(out);
      if (!match) return;
      child.stdout!.off('data', onData);
      resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    void exited.then((status) => reject(new Error(`coordinator exited (${status.code ?? status.signal}) before listening:\n${err}`)));
  }).catch(async (e: unknown) => {
    await release();
    if (ownDir) await removeTempDir(dataDir);
    throw e;
  });
  const url = new URL(baseUrl);
  const pid = child.pid!;

  function get(path: string, headers: Record<string, string> = {}) {
    return new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>((resolve, reject) => {
      const req = request(`${baseUrl}${path}`, { agent: false, headers: { connection: 'close', ...headers } }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk; });
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  function post(path: string, body: string | Buffer, headers: Record<string, string> = {}) {
    return new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>((resolve, reject) => {
      const req = request(`${baseUrl}${path}`, { method: 'POST', agent: false, headers: { connection: 'close', 'content-type': 'application/json', ...headers } }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  let stopping: Promise<ExitStatus> | undefined;
  function signal(name: NodeJS.Signals): Promise<ExitStatus> {
    if (child.exitCode === null && child.signalCode === null) child.kill(name);
    return exited;
  }

  const proc: CoordinatorProcess = {
    child, pid, dataDir, baseUrl,
    wsUrl: `ws://${url.host}${url.pathname}/ws`,
    exited,
    alive: () => child.exitCode === null && child.signalCode === null,
    rss() {
      const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return Number(match![1]) * 1024;
    },
    fdCount: () => readdirSync(`/proc/${pid}/fd`).length,
    stderr: () => err,
    get,
    post,
    async metric(sample) {
      const { body } = await get('/metrics');
      const line = body.split('\n').find((l) => l.startsWith(`${sample} `));
      return line ? Number(line.slice(sample.length + 1)) : 0;
    },
    stop() {
      stopping ??= (async () => {
        // A hung shutdown must not hang the run; the tests check the exit status.
        const force = setTimeout(() => signal('SIGKILL'), 30_000);
        const status = await signal('SIGTERM');
        clearTimeout(force);
        return status;
      })();
      return stopping;
    },
    kill: () => signal('SIGKILL'),
    async cleanup() {
      running.delete(proc);
      await signal('SIGKILL');
      await release();
      if (ownDir) await removeTempDir(dataDir);
    },
  };
  running.add(proc);
  return proc;
}

/** Kills and cleans up every coordinator process still running (for after hooks). */
export async function cleanupCoordinatorProcesses(): Promise<void> {
  await Promise.all([...running].map((p) => p.cleanup()));
}

/** Waits until `check` returns true, polling every `intervalMs`, at most `attempts` times; returns the last result. */
export async function eventually(check: () => boolean | Promise<boolean>, attempts = 200, intervalMs = 50): Promise<boolean> {
  for (let i = 0; i < attempts; i++) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  return check();
}
