import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { S3ArchiveOptions } from '../../lib/durability/s3-archive.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SCRIPT = fileURLToPath(new URL('./s3-server-process.ts', import.meta.url));

/** A real S3-compatible server (s3rver, in a child process) on 127.0.0.1, with one bucket. */
export interface S3TestServer {
  /** http://127.0.0.1:<port>, the same across restarts. */
  readonly endpoint: string;
  readonly bucket: string;
  /** s3rver's fixed credentials: it checks request signatures against them. */
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** s3rver's continuation tokens only work for us-east-1. */
  readonly region: string;
  /** Options for an S3Archive on this server (path-style, its credentials), plus `extra`. */
  archiveOptions(extra?: Partial<S3ArchiveOptions>): S3ArchiveOptions;
  /** True while the server process runs. */
  running(): boolean;
  /** The server process's id while it runs (undefined after a stop). */
  pid(): number | undefined;
  /**
   * How the server process ended when it was not stopped by us (exit code or
   * signal, how long after its start, and the end of its stderr), or
   * undefined while it runs or after a stop: a test that meets ECONNREFUSED
   * prints it to tell a crash from an outage.
   */
  crash(): string | undefined;
  /**
   * Undefined when the server answers an HTTP request on `endpoint` now,
   * else why not (e.g. `connect ECONNREFUSED 127.0.0.1:40123`): a failing
   * test prints it beside `crash()`.
   */
  probe(): Promise<string | undefined>;
  /** Kills the server process (an outage: connections are refused, open ones reset). Its data stays. */
  stop(): Promise<void>;
  /** Starts the server again on the same port over the same data (stops it first if it runs). */
  restart(): Promise<void>;
  /** Stops the server and removes its data. Safe to call twice. */
  close(): Promise<void>;
}

interface Running { child: ChildProcess; exited: Promise<void>; startedAt: number; exitedAt?: number; stderr(): string }

/** The child prints this line (and nothing else on stdout) once s3rver accepts connections. */
const LISTENING = /^LISTENING (\d+)\n/m;
/** How long a started server gets to answer its first HTTP request. */
const READY_MS = 10_000;

/**
 * Undefined when an HTTP request to 127.0.0.1:`port` gets any answer (s3rver
 * answers every request, if only with an S3 error), else the error.
 */
function probe(port: number, timeoutMs = 2000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/', method: 'GET', agent: false, headers: { connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(undefined));
      res.on('error', (err) => resolve(err.message));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => resolve(err.message));
    req.end();
  });
}

async function launch(dir: string, port: number, bucket: string): Promise<{ port: number; proc: Running }> {
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '--import', 'tsx', SCRIPT, dir, String(port), bucket], {
    cwd: ROOT,
    // stdin stays open so the child exits when this process goes away.
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const proc: Running = {
    child,
    startedAt: Date.now(),
    exited: new Promise<void>((resolve) => child.once('exit', () => {
      proc.exitedAt = Date.now();
      resolve();
    })),
    stderr: () => err,
  };
  child.stderr!.setEncoding('utf8').on('data', (text: string) => { err = (err + text).slice(-10_000); });
  let listening: number;
  try {
    // The whole line: a port read from a partial line would be another port.
    listening = await new Promise<number>((resolve, reject) => {
      child.stdout!.setEncoding('utf8').on('data', (text: string) => {
        out = (out + text).slice(-10_000);
        const match = LISTENING.exec(out);
        if (match) resolve(Number(match[1]));
      });
      void proc.exited.then(() => reject(new Error(`s3rver exited (code ${String(child.exitCode)}, signal ${String(child.signalCode)}) before listening on port ${port}:\n${err}`)));
    });
    if (port !== 0 && listening !== port) throw new Error(`s3rver listens on port ${listening}, not on the port asked for (${port})`);
    // Ready means it answers this process over HTTP, which is what every test does next.
    let problem: string | undefined;
    for (const deadline = Date.now() + READY_MS; ;) {
      problem = await probe(listening);
      if (problem === undefined || Date.now() >= deadline || child.exitCode !== null || child.signalCode !== null) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (problem !== undefined) throw new Error(`s3rver printed that it listens on port ${listening} but does not answer there (${problem}); its stderr:\n${err}`);
  } catch (e) {
    await halt(proc);
    throw e;
  }
  return { port: listening, proc };
}

async function halt(proc: Running | undefined): Promise<void> {
  if (proc === undefined) return;
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGKILL');
  await proc.exited;
}

/**
 * Starts s3rver on 127.0.0.1 on a free port, over a fresh temp directory,
 * with bucket `bucket`. Use with S3Archive's `forcePathStyle: true`.
 */
export async function startS3Server(bucket = 'archive-test'): Promise<S3TestServer> {
  if (bucket.length < 3) throw new TypeError('S3 bucket names have at least 3 characters');
  const dir = await makeTempDir('s3rver-');
  let first: { port: number; proc: Running };
  try {
    first = await launch(dir, 0, bucket);
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
  const port = first.port;
  let proc: Running | undefined = first.proc;
  let closed = false;
  const server: S3TestServer = {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    region: 'us-east-1',
    archiveOptions(extra = {}) {
      return {
        bucket, endpoint: server.endpoint, region: server.region, forcePathStyle: true,
        accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey, ...extra,
      };
    },
    running: () => proc !== undefined && proc.child.exitCode === null && proc.child.signalCode === null,
    pid: () => (server.running() ? proc!.child.pid : undefined),
    crash() {
      if (proc === undefined || server.running()) return undefined;
      const after = proc.exitedAt === undefined ? '' : `, ${proc.exitedAt - proc.startedAt} ms after its start`;
      return `s3rver exited (code ${String(proc.child.exitCode)}, signal ${String(proc.child.signalCode)}${after}); its stderr:\n${proc.stderr().slice(-3000)}`;
    },
    probe: () => probe(port),
    async stop() {
      const current = proc;
      proc = undefined;
      await halt(current);
    },
    async restart() {
      if (closed) throw new Error('the S3 test server is closed');
      await server.stop();
      // The port was ours a moment ago; another process may take it in between, rarely.
      for (let attempt = 1; ; attempt++) {
        try {
          proc = (await launch(dir, port, bucket)).proc;
          return;
        } catch (err) {
          if (attempt >= 5) throw err;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      await server.stop();
      await removeTempDir(dir);
    },
  };
  return server;
}
