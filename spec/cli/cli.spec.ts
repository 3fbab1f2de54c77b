import { expect } from 'chai';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'dist/cli/sync-coordinator.js');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const FLAGS = [
  '--host', '--port', '--base-path', '--data-dir', '--cors-origin', '--auth-mode', '--auth-tokens',
  '--config', '--debug', '--batch-size', '--retention-horizon-ms', '--help', '--version',
  '--s3-bucket', '--s3-region', '--s3-endpoint', '--s3-access-key-id', '--s3-secret-access-key', '--s3-force-path-style', '--s3-key-prefix',
  '--s3-durability', '--disk-eviction', '--disk-eviction-idle-ms',
];

/** A running CLI child with its output so far. */
interface CliRun {
  readonly child: ChildProcess;
  readonly output: { stdout: string; stderr: string };
  /** Resolves when the process ends. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first match of `pattern` in the stream; rejects if the process ends first. */
  waitFor(stream: 'stdout' | 'stderr', pattern: RegExp): Promise<RegExpMatchArray>;
}

/** The test process's environment without anything that configures the coordinator. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(SYNC_|S3_|AWS_|DISK_EVICTION_|DEBUG$)/.test(name)) env[name] = value;
  }
  return { ...env, ...extra };
}

describe('cli', () => {
  let cwd: string;
  const running: CliRun[] = [];

  before(async function build() {
    // Other work may leave unrelated type errors; tsc still emits, so only errors in the CLI's own files fail the build here.
    this.timeout(180_000);
    const result = await new Promise<{ failed: boolean; output: string }>((resolve) => {
      execFile(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: ROOT }, (err, stdout, stderr) => {
        resolve({ failed: err !== null, output: `${stdout}${stderr}` });
      });
    });
    const ownErrors = result.output.split('\n').filter((line) => /^(cli\/|lib\/config\/load-config\.ts)/.test(line));
    expect(ownErrors, 'type errors in the CLI build').to.deep.equal([]);
    if (result.failed) process.stderr.write(`      (tsc reported errors in other files; testing the emitted build anyway)\n`);
    expect(existsSync(CLI), `${CLI} after tsc`).to.equal(true);
  });

  beforeEach(async () => {
    cwd = await makeTempDir('cli-');
  });

  afterEach(async () => {
    // Kill whatever a failed test left running so mocha can exit by itself.
    const left = running.splice(0);
    for (const run of left) {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
    }
    await Promise.all(left.map((run) => run.exited));
    await removeTempDir(cwd);
  });

  /** Starts the built CLI in the temp dir, so no stray sync-coordinator.json is picked up. */
  function runCli(args: string[], env: Record<string, string> = {}): CliRun {
    const child = spawn(process.execPath, [CLI, ...args], { cwd, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    const output = { stdout: '', stderr: '' };
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
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
        void exited.then(({ code }) => {
          if (!check()) reject(new Error(`CLI exited (${code}) before ${stream} matched ${pattern}; stderr: ${output.stderr}`));
        });
      });
    const run = { child, output, exited, waitFor };
    running.push(run);
    return run;
  }

  /** Runs the CLI to completion. */
  async function runToEnd(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const run = runCli(args, env);
    const { code } = await run.exited;
    return { code, ...run.output };
  }

  function serverArgs(...more: string[]): string[] {
    return ['--port', '0', '--host', '127.0.0.1', '--data-dir', join(cwd, 'data'), ...more];
  }

  async function listeningUrl(run: CliRun): Promise<string> {
    const match = await run.waitFor('stdout', /^sync-coordinator listening on (http:\/\/\S+)$/m);
    return match[1]!;
  }

  describe('serving', () => {
    it('prints the URL, answers /status and exits 0 on SIGTERM', async () => {
      const run = runCli(serverArgs());
      const url = await listeningUrl(run);
      expect(url).to.match(/^http:\/\/127\.0\.0\.1:\d+\/sync$/);
      const response = await fetch(`${url}/status`);
      expect(response.status).to.equal(200);
      expect(response.headers.get('content-type')).to.match(/application\/json/);
      expect(await response.json()).to.include({ ok: true });
      run.child.kill('SIGTERM');
      expect(await run.exited).to.deep.equal({ code: 0, signal: null });
    });

    it('exits 0 on SIGINT', async () => {
      const run = runCli(serverArgs());
      await listeningUrl(run);
      run.child.kill('SIGINT');
      expect((await run.exited).code).to.equal(0);
    });

    it('lets --base-path win over SYNC_BASE_PATH', async () => {
      const run = runCli(serverArgs('--base-path', '/cli-path'), { SYNC_BASE_PATH: '/env-path' });
      const url = await listeningUrl(run);
      expect(url).to.match(/\/cli-path$/);
      const origin = new URL(url).origin;
      expect((await fetch(`${origin}/cli-path/status`)).status).to.equal(200);
      expect((await fetch(`${origin}/env-path/status`)).status).to.equal(404);
    });

    it('uses env and sync-coordinator.json values for flags not given', async () => {
      await writeFile(join(cwd, 'sync-coordinator.json'), JSON.stringify({ basePath: '/from-file', port: 1 }));
      const run = runCli(['--port', '0', '--data-dir', join(cwd, 'data')], { SYNC_HOST: '127.0.0.1' });
      expect(await listeningUrl(run)).to.match(/^http:\/\/127\.0\.0\.1:\d+\/from-file$/);
    });

    it('writes debug output to stderr with --debug', async () => {
      const run = runCli([...serverArgs(), '--debug']);
      await listeningUrl(run);
      await run.waitFor('stderr', /sync-coordinator:server listening on/);
    });

    it('exits 1 with one line when the port is taken', async () => {
      const blocker: Server = createServer();
      await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
      try {
        const { port } = blocker.address() as AddressInfo;
        const result = await runToEnd(['--port', String(port), '--host', '127.0.0.1', '--data-dir', join(cwd, 'data')]);
        expect(result.code).to.equal(1);
        expect(result.stderr.trimEnd().split('\n')).to.have.length(1);
        expect(result.stderr).to.include('EADDRINUSE');
        expect(result.stdout).to.equal('');
      } finally {
        await new Promise((resolve) => blocker.close(resolve));
      }
    });
  });

  describe('arguments', () => {
    it('lists every flag with --help and exits 0', async () => {
      const result = await runToEnd(['--help']);
      expect(result.code).to.equal(0);
      for (const flag of FLAGS) expect(result.stdout).to.include(flag);
    });

    it('lists the restore and export commands with --help, and their own flags with <command> --help', async () => {
      const result = await runToEnd(['--help']);
      expect(result.stdout).to.include('sync-coordinator restore <db>');
      expect(result.stdout).to.include('sync-coordinator export <db>');
      const restore = await runToEnd(['restore', '--help']);
      expect(restore.code).to.equal(0);
      for (const flag of ['--force', '--data-dir', '--s3-bucket', '--config']) expect(restore.stdout).to.include(flag);
      expect(restore.stdout).not.to.include('--port');
      const exported = await runToEnd(['export', '--help']);
      expect(exported.code).to.equal(0);
      for (const flag of ['--out', '--data-dir', '--s3-bucket']) expect(exported.stdout).to.include(flag);
    });

    it('exits 2 with one line for a server flag given to restore', async () => {
      const result = await runToEnd(['restore', 'acme:notes', '--port', '3000']);
      expect(result.code).to.equal(2);
      expect(result.stderr).to.equal('Unknown argument: port (see sync-coordinator --help)\n');
    });

    it('prints the package version with --version', async () => {
      const result = await runToEnd(['--version']);
      expect(result.code).to.equal(0);
      expect(result.stdout.trim()).to.equal(VERSION);
    });

    it('exits 2 with one line naming --port and its value for --port abc', async () => {
      const result = await runToEnd(serverArgs('--port', 'abc'));
      expect(result.code).to.equal(2);
      expect(result.stderr).to.equal('--port: expected an integer 0-65535, got "abc"\n');
      expect(result.stdout).to.equal('');
    });

    it('exits 2 with one line naming SYNC_PORT and its value for SYNC_PORT=abc', async () => {
      const result = await runToEnd(['--data-dir', join(cwd, 'data')], { SYNC_PORT: 'abc' });
      expect(result.code).to.equal(2);
      expect(result.stderr).to.equal('SYNC_PORT: expected an integer 0-65535, got "abc"\n');
    });

    it('exits 2 with one line for an unknown flag', async () => {
      const result = await runToEnd(['--prot', '3000']);
      expect(result.code).to.equal(2);
      expect(result.stderr.trimEnd().split('\n')).to.have.length(1);
      expect(result.stderr).to.include('prot');
    });

    it('exits 2 with one line for a --config file that does not exist', async () => {
      const result = await runToEnd(['--config', 'missing.json']);
      expect(result.code).to.equal(2);
      expect(result.stderr.trimEnd().split('\n')).to.have.length(1);
      expect(result.stderr).to.include('missing.json');
    });
  });
});
