/**
 * Runs the built CLI (and npm / npx in front of it) as real child processes,
 * for the CLI specs that need more than cli.spec.ts's own helpers.
 */
import { expect } from 'chai';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI = join(ROOT, 'dist/cli/sync-coordinator.js');
export const LISTENING = /^sync-coordinator listening on (http:\/\/\S+)$/m;

/** Files whose type errors fail the build here; others may be mid-change in other branches. */
const OWN_FILES = /^(cli\/|lib\/admin\/|lib\/replica\/summary\.ts|lib\/config\/load-config\.ts|lib\/create-coordinator-server\.ts|lib\/durability\/offline\.ts|lib\/metrics\/metrics\.ts|lib\/log\.ts)/;

let built: Promise<void> | undefined;

/** Compiles the package once per mocha process (tsc emits despite errors elsewhere), failing on errors in the files above. */
export function buildOnce(): Promise<void> {
  built ??= (async () => {
    const result = await new Promise<{ failed: boolean; output: string }>((resolve) => {
      execFile(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: ROOT }, (err, stdout, stderr) => {
        resolve({ failed: err !== null, output: `${stdout}${stderr}` });
      });
    });
    expect(result.output.split('\n').filter((line) => OWN_FILES.test(line)), 'type errors in the CLI build').to.deep.equal([]);
    expect(existsSync(CLI), `${CLI} after tsc`).to.equal(true);
  })();
  return built;
}

/**
 * The test process's environment without anything that configures the
 * coordinator (AWS_* included: the SDK reads credentials and settings from
 * them), and without npm's variables, so that an outer `npm test` changes
 * nothing (the CLI watches its parent only under npm).
 */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(SYNC_|S3_|AWS_|DISK_EVICTION_|DEBUG$|npm_)/i.test(name)) env[name] = value;
  }
  return { ...env, ...extra };
}

/** npm's own executables next to the running node, falling back to PATH. */
export function npmBinary(name: 'npm' | 'npx'): string {
  const beside = join(dirname(process.execPath), name);
  return existsSync(beside) ? beside : name;
}

/** A running child with its output so far. */
export interface Run {
  readonly child: ChildProcess;
  readonly output: { stdout: string; stderr: string };
  /** The process group the child leads, when started with `group`. */
  readonly group: number | undefined;
  /** Resolves when the process has exited and every holder of its stdout/stderr has closed them. */
  readonly closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first match of `pattern`; rejects if the output closes first. */
  waitFor(stream: 'stdout' | 'stderr', pattern: RegExp): Promise<RegExpMatchArray>;
}

/** Options of {@link Runs.start}. */
export interface StartOptions {
  cwd: string;
  env?: Record<string, string>;
  /** Own process group, so cleanup reaches grandchildren (npm → sh → node) too. */
  group?: boolean;
  uid?: number;
  gid?: number;
}

/** Starts processes and kills whatever a test left running. */
export class Runs {
  readonly #runs: Run[] = [];

  start(command: string, args: string[], options: StartOptions): Run {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: cleanEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: options.group === true,
      uid: options.uid,
      gid: options.gid,
    });
    const output = { stdout: '', stderr: '' };
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.on('close', (code, signal) => resolve({ code, signal }));
    });
    const waitFor = (stream: 'stdout' | 'stderr', pattern: RegExp): Promise<RegExpMatchArray> =>
      new Promise((resolve, reject) => {
        const check = (): boolean => {
          const match = output[stream].match(pattern);
          if (match) resolve(match);
          return match !== null;
        };
        if (check()) return;
        const source = stream === 'stdout' ? child.stdout! : child.stderr!;
        const onData = (): void => {
          if (check()) source.off('data', onData);
        };
        source.on('data', onData);
        void closed.then(({ code, signal }) => {
          if (!check()) reject(new Error(`process ended (${code ?? signal}) before ${stream} matched ${pattern}; stdout: ${output.stdout} stderr: ${output.stderr}`));
        });
      });
    const run: Run = { child, output, group: options.group === true ? child.pid : undefined, closed, waitFor };
    this.#runs.push(run);
    return run;
  }

  /** The node CLI itself, as a supervisor would start it. */
  cli(args: string[], options: StartOptions): Run {
    return this.start(process.execPath, [CLI, ...args], options);
  }

  /** SIGKILLs every process (group) still running and waits for their output to close. */
  async cleanup(): Promise<void> {
    const left = this.#runs.splice(0);
    for (const run of left) {
      const { group } = run;
      try {
        // The group outlives its leader: an orphaned grandchild keeps it.
        if (group !== undefined) process.kill(-group, 'SIGKILL');
        else if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    }
    await Promise.all(left.map((run) => run.closed));
  }
}

/** Runs to the end and returns code and output. */
export async function runToEnd(runs: Runs, args: string[], options: StartOptions): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const run = runs.cli(args, options);
  const { code } = await run.closed;
  return { code, ...run.output };
}

/** The lines of a stream's output, without the empty one after the final newline. */
export function lines(text: string): string[] {
  return text.split('\n').filter((line, i, all) => line !== '' || i < all.length - 1);
}
