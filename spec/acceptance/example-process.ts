import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LISTENING = /^listening on (http:\/\/\S+)$/m;

/** An example script running as a child process on 127.0.0.1, port 0, over a temp data dir. */
export interface ExampleProcess {
  readonly child: ChildProcess;
  /** The URL from the "listening on" line, e.g. http://127.0.0.1:41234/sync */
  readonly baseUrl: string;
  /** http://127.0.0.1:<port> */
  readonly origin: string;
  /** ws://127.0.0.1:<port><basePath>/ws */
  readonly wsUrl: string;
  stdout(): string;
  stderr(): string;
  /** Resolves when stderr has a line matching `pattern` (already written or still to come). */
  waitForStderr(pattern: RegExp): Promise<string>;
  /** SIGTERM, then waits for the exit; the temp dir is removed afterwards. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ExampleProcess>();

/** Starts `examples/<name>.ts` and resolves once it printed its listening line. */
export async function startExample(name: string, env: Record<string, string> = {}): Promise<ExampleProcess> {
  const dataDir = await makeTempDir(`example-${name}-`);
  const child = spawn(process.execPath, ['--import', 'tsx', `examples/${name}.ts`], {
    cwd: ROOT,
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', DATA_DIR: dataDir, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => { out += text; });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => { err += text; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });

  let stopping: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
  function stop() {
    if (!stopping) {
      stopping = (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          // A hung example must not hang the test run; the tests check the exit status, not this.
          const force = setTimeout(() => child.kill('SIGKILL'), 15_000);
          force.unref();
          const status = await exited;
          clearTimeout(force);
          return cleanup(status);
        }
        return cleanup(await exited);
      })();
    }
    return stopping;
  }
  async function cleanup<T>(status: T): Promise<T> {
    running.delete(example);
    await removeTempDir(dataDir);
    return status;
  }

  let example!: ExampleProcess;
  const baseUrl = await new Promise<string>((resolve, reject) => {
    const onData = (): void => {
      const match = LISTENING.exec(out);
      if (match) {
        child.stdout!.off('data', onData);
        resolve(match[1]!);
      }
    };
    child.stdout!.on('data', onData);
    void exited.then(({ code, signal }) => reject(new Error(`examples/${name}.ts exited (${code ?? signal}) before listening:\n${err}`)));
  }).catch(async (e) => {
    await removeTempDir(dataDir);
    throw e;
  });

  const url = new URL(baseUrl);
  example = {
    child,
    baseUrl,
    origin: url.origin,
    wsUrl: `ws://${url.host}${url.pathname}/ws`,
    stdout: () => out,
    stderr: () => err,
    waitForStderr(pattern) {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          const line = err.split('\n').find((l) => pattern.test(l));
          if (line === undefined) return false;
          child.stderr!.off('data', check);
          resolve(line);
          return true;
        };
        if (check()) return;
        child.stderr!.on('data', check);
        void exited.then(() => { if (!check()) reject(new Error(`exited without printing ${pattern} to stderr:\n${err}`)); });
      });
    },
    stop,
  };
  running.add(example);
  return example;
}

/** Stops every example still running (for after/afterEach hooks). */
export async function stopAllExamples(): Promise<void> {
  await Promise.all([...running].map((e) => e.stop()));
}
