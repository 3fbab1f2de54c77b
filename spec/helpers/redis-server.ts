import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

/*
 * redis-server does not notice when its parent dies, so it runs under a
 * small shell that holds our end of a pipe: when this process goes away
 * (even by SIGKILL) the pipe closes, `read` returns and the shell kills
 * Redis. stop() closes the pipe the same way. A background job of a
 * non-interactive shell gets /dev/null as stdin, so Redis never holds it.
 */
const WATCHDOG = 'command -v redis-server >/dev/null || exit 127; redis-server "$@" & pid=$!; read -r _; kill -9 "$pid" 2>/dev/null; wait "$pid"';

/** A real redis-server (Debian's package; `.ci/run` installs it when missing) on 127.0.0.1 with AOF (`appendfsync everysec`), in a temp dir. */
export interface RedisTestServer {
  /** redis://127.0.0.1:<port>, the same across restarts. */
  readonly url: string;
  readonly port: number;
  /** The data directory (AOF lives here). */
  readonly dir: string;
  /** True while the server process runs. */
  running(): boolean;
  /** Kills the server (SIGKILL: an outage; open connections are reset). Its data stays on disk. */
  stop(): Promise<void>;
  /** Starts the server again on the same port over the same data (AOF replayed); stops it first if it runs. */
  restart(): Promise<void>;
  /** Stops the server and removes its data. Safe to call twice. */
  close(): Promise<void>;
}

interface Running { child: ChildProcess; exited: Promise<void> }

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function argsFor(dir: string, port: number): string[] {
  return [
    '--bind', '127.0.0.1', '--port', String(port), '--dir', dir,
    // No RDB snapshots; the append-only file is the durability the README recommends.
    '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec',
    '--daemonize', 'no', '--logfile', '', '--loglevel', 'notice',
    // A replica (REPLICAOF) gets its first copy at once rather than after 5 s.
    '--repl-diskless-sync-delay', '0',
  ];
}

async function launch(dir: string, port: number): Promise<Running> {
  const child = spawn('/bin/sh', ['-c', WATCHDOG, 'redis-watchdog', ...argsFor(dir, port)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const proc = { child, exited };
  let out = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const onOutput = (text: string) => {
        out = (out + text).slice(-10_000);
        if (out.includes('Ready to accept connections')) resolve();
        // Redis logs the failure and exits; the shell would wait on its stdin forever.
        else if (/Could not create server TCP listening socket|Failed listening|FATAL|Can't open/i.test(out)) reject(new Error(`redis-server failed to start on port ${port}:\n${out}`));
      };
      child.stdout!.setEncoding('utf8').on('data', onOutput);
      child.stderr!.setEncoding('utf8').on('data', onOutput);
      void exited.then(() => reject(new Error(child.exitCode === 127
        ? 'redis-server is not installed: install the Debian package redis-server (.ci/run does)'
        : `redis-server exited before it was ready on port ${port}:\n${out}`)));
    });
  } catch (err) {
    await halt(proc);
    throw err;
  }
  return proc;
}

async function halt(proc: Running | undefined): Promise<void> {
  if (proc === undefined) return;
  proc.child.stdin!.end();
  await proc.exited;
}

/** Starts redis-server on 127.0.0.1, on a free port, over a fresh temp directory. */
export async function startRedisServer(): Promise<RedisTestServer> {
  const dir = await makeTempDir('redis-');
  let port = 0;
  let proc: Running | undefined;
  // Another process may take the free port before Redis binds it, rarely.
  for (let attempt = 1; proc === undefined; attempt++) {
    try {
      port = await freePort();
      proc = await launch(dir, port);
    } catch (err) {
      if (attempt >= 5) {
        await removeTempDir(dir);
        throw err;
      }
    }
  }
  let closed = false;
  const server: RedisTestServer = {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    running: () => proc !== undefined && proc.child.exitCode === null && proc.child.signalCode === null,
    async stop() {
      const current = proc;
      proc = undefined;
      await halt(current);
    },
    async restart() {
      if (closed) throw new Error('the Redis test server is closed');
      await server.stop();
      for (let attempt = 1; ; attempt++) {
        try {
          proc = await launch(dir, port);
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
