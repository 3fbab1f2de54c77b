import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { chmod, mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SyncClient } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, CLI, LISTENING, lines, ROOT, runToEnd, Runs, type Run } from './harness.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
/** An unprivileged account for the "not writable" case when the specs run as root, who may write anywhere. */
const NOBODY = 65534;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('cli startup checks', () => {
  let cwd: string;
  const runs = new Runs();

  before(async function build() {
    this.timeout(180_000);
    await buildOnce();
  });

  beforeEach(async () => {
    cwd = await makeTempDir('cli-startup-');
  });

  afterEach(async () => {
    await runs.cleanup();
    // The unwritable-directory case leaves a read-only directory behind.
    await chmod(join(cwd, 'ro'), 0o700).catch(() => undefined);
    await removeTempDir(cwd);
  });

  function local(...more: string[]): string[] {
    return ['--port', '0', '--host', '127.0.0.1', ...more];
  }

  async function listening(run: Run): Promise<string> {
    return (await run.waitFor('stdout', LISTENING))[1]!;
  }

  describe('data directory', () => {
    it('exits 1 with one line naming --data-dir when it is a file', async () => {
      await writeFile(join(cwd, 'data'), 'not a directory');
      const result = await runToEnd(runs, local('--data-dir', 'data'), { cwd });
      expect(result.code).to.equal(1);
      expect(result.stderr).to.equal(`--data-dir: ${JSON.stringify(join(cwd, 'data'))} is a file, not a directory\n`);
      expect(result.stdout).to.equal('');
    });

    it('names SYNC_DATA_DIR, or the flag and its default, when the directory came from there', async () => {
      await writeFile(join(cwd, 'data'), '');
      const fromEnv = await runToEnd(runs, local(), { cwd, env: { SYNC_DATA_DIR: 'data' } });
      expect(fromEnv.code).to.equal(1);
      expect(fromEnv.stderr).to.equal(`SYNC_DATA_DIR: ${JSON.stringify(join(cwd, 'data'))} is a file, not a directory\n`);
      await writeFile(join(cwd, '.data'), '');
      const byDefault = await runToEnd(runs, local(), { cwd });
      expect(byDefault.code).to.equal(1);
      expect(byDefault.stderr).to.equal(`--data-dir (default "./.data"): ${JSON.stringify(join(cwd, '.data'))} is a file, not a directory\n`);
    });

    it('exits 1 with one line when a parent of the directory is a file', async () => {
      await writeFile(join(cwd, 'file'), '');
      const result = await runToEnd(runs, local('--data-dir', 'file/data'), { cwd });
      expect(result.code).to.equal(1);
      expect(lines(result.stderr)).to.deep.equal([`--data-dir: cannot create directory ${JSON.stringify(join(cwd, 'file/data'))} (ENOTDIR: a parent is not a directory)`]);
    });

    it('exits 1 with one line when the directory is not writable, or cannot be created', async () => {
      // Root writes through any mode bits, so the server then runs as an unprivileged user.
      const asRoot = process.getuid?.() === 0;
      const identity = asRoot ? { uid: NOBODY, gid: NOBODY } : {};
      await mkdir(join(cwd, 'ro'), { mode: 0o755 });
      await chmod(join(cwd, 'ro'), 0o555);
      await chmod(cwd, 0o755);
      const existing = await runToEnd(runs, local('--data-dir', 'ro'), { cwd, ...identity });
      expect(existing.code).to.equal(1);
      expect(lines(existing.stderr)).to.deep.equal([`--data-dir: directory ${JSON.stringify(join(cwd, 'ro'))} is not writable (EACCES: permission denied)`]);
      const missing = await runToEnd(runs, local('--data-dir', 'ro/data'), { cwd, ...identity });
      expect(missing.code).to.equal(1);
      expect(lines(missing.stderr)).to.deep.equal([`--data-dir: cannot create directory ${JSON.stringify(join(cwd, 'ro/data'))} (EACCES: permission denied)`]);
    });

    it('creates a missing directory, with its parents', async () => {
      const run = runs.cli(local('--data-dir', 'a/b/data'), { cwd });
      await listening(run);
      expect((await stat(join(cwd, 'a/b/data'))).isDirectory()).to.equal(true);
      run.child.kill('SIGTERM');
      expect((await run.closed).code).to.equal(0);
    });

    it('refuses a directory another running server holds, naming its pid, and leaves that server serving', async () => {
      const first = runs.cli(local('--data-dir', 'data'), { cwd });
      const url = await listening(first);
      const second = await runToEnd(runs, local('--data-dir', 'data'), { cwd });
      expect(second.code).to.equal(1);
      expect(lines(second.stderr)).to.have.length(1);
      expect(second.stderr).to.match(new RegExp(`^--data-dir: "${escapeRegExp(join(cwd, 'data'))}" is in use by another running sync coordinator \\(pid ${first.child.pid} on [^)]+\\); stop it or use another directory\\n$`));
      expect(second.stdout).to.equal('');
      expect((await fetch(`${url}/status`)).status).to.equal(200);
    });

    it('frees the directory when its server stops, and when it is killed', async () => {
      const stopped = runs.cli(local('--data-dir', 'data'), { cwd });
      await listening(stopped);
      stopped.child.kill('SIGTERM');
      expect((await stopped.closed).code).to.equal(0);
      const killed = runs.cli(local('--data-dir', 'data'), { cwd });
      await listening(killed);
      // SIGKILL runs no cleanup at all: only a lock the kernel drops can be free afterwards.
      killed.child.kill('SIGKILL');
      await killed.closed;
      const next = runs.cli(local('--data-dir', 'data'), { cwd });
      await listening(next);
      next.child.kill('SIGTERM');
      expect((await next.closed).code).to.equal(0);
    });
  });

  describe('warnings', () => {
    async function stderrOfStart(args: string[], env: Record<string, string> = {}): Promise<string> {
      const run = runs.cli(args, { cwd, env });
      await listening(run);
      run.child.kill('SIGTERM');
      expect((await run.closed).code).to.equal(0);
      return run.output.stderr;
    }

    it('prints nothing on stderr for a local server', async () => {
      expect(await stderrOfStart(local('--data-dir', 'data'))).to.equal('');
    });

    it('says in one line that S3 stays off when S3_* variables are set without S3_BUCKET, never their values, and still starts', async () => {
      const stderr = await stderrOfStart(local('--data-dir', 'data'), {
        S3_REGION: 'eu-west-1',
        S3_ACCESS_KEY_ID: 'AKIAEXAMPLE',
        S3_SECRET_ACCESS_KEY: 'very-secret-value',
        S3_BUCKET: '',
      });
      expect(lines(stderr)).to.deep.equal([
        'sync-coordinator: warning: S3_REGION, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY are set, but S3 stays off without a bucket ' +
          `(set S3_BUCKET, --s3-bucket or "s3.bucket" in the config file): databases are stored only in ${JSON.stringify(join(cwd, 'data'))}`,
      ]);
      for (const secret of ['eu-west-1', 'AKIAEXAMPLE', 'very-secret-value']) expect(stderr).not.to.include(secret);
    });

    it('warns about an unknown SYNC_* variable with a did-you-mean', async () => {
      const stderr = await stderrOfStart(local('--data-dir', 'data'), { SYNC_PROT: '4000', SYNC_AUTHMODE: 'none' });
      expect(lines(stderr)).to.deep.equal([
        'sync-coordinator: warning: ignoring unknown environment variable SYNC_AUTHMODE (did you mean SYNC_AUTH_MODE?)',
        'sync-coordinator: warning: ignoring unknown environment variable SYNC_PROT (did you mean SYNC_PORT?)',
      ]);
    });

    it('warns once when every interface is served without authentication', async () => {
      const stderr = await stderrOfStart(['--port', '0', '--host', '0.0.0.0', '--data-dir', 'data']);
      expect(lines(stderr)).to.deep.equal([
        'sync-coordinator: warning: host 0.0.0.0 (from --host) listens on every interface and authMode is "none" (the default): ' +
          'anyone who can reach the server can read and write every database; set --host 127.0.0.1 or --auth-mode token-whitelist',
      ]);
    });

    it('does not warn about every interface when tokens are required', async () => {
      const stderr = await stderrOfStart(['--port', '0', '--host', '0.0.0.0', '--data-dir', 'data', '--auth-mode', 'token-whitelist'], { SYNC_AUTH_TOKENS: 't' });
      expect(stderr).to.equal('');
    });
  });

  describe('--debug', () => {
    it('takes bare layer names: --debug ws logs WebSocket sessions', async () => {
      const run = runs.cli(local('--data-dir', 'data', '--debug', 'ws'), { cwd });
      const url = await listening(run);
      const client = await SyncClient.connect({ url: `${url.replace(/^http/, 'ws')}/ws`, databaseId: 'db', siteId: siteIdToWire(randomSiteId()) });
      await client.ping();
      await run.waitFor('stderr', /sync-coordinator:ws session \S+: \S+ joined db/);
      await client.close();
      expect(run.output.stderr).not.to.match(/sync-coordinator:(server|config)/);
    });

    it('takes a comma-separated list of bare and full names', async () => {
      const run = runs.cli(local('--data-dir', 'data', '--debug', 'config,sync-coordinator:server'), { cwd });
      await listening(run);
      await run.waitFor('stderr', /sync-coordinator:server listening on/);
      await run.waitFor('stderr', /sync-coordinator:config port = 0/);
    });

    it('exits 2 with one line for a bare name that is no namespace', async () => {
      const result = await runToEnd(runs, local('--debug', 'wss'), { cwd });
      expect(result.code).to.equal(2);
      expect(lines(result.stderr)).to.have.length(1);
      expect(result.stderr).to.match(/^--debug: unknown namespace "wss" \(expected server, http, ws, /);
    });
  });

  it('builds no Intl.Segmenter while serving: the break-iterator data of ICU would hold ~2.5 MB of RSS for the life of the process', async () => {
    // yargs 18's string-width builds one when imported, for the width of help text;
    // the segmenter-spy preload prints a line for every one built.
    const run = runs.start(process.execPath, ['--import', join(ROOT, 'spec/helpers/segmenter-spy.mjs'), CLI, ...local('--data-dir', 'data')], { cwd });
    await listening(run);
    run.child.kill('SIGTERM');
    expect((await run.closed).code).to.equal(0);
    expect(run.output.stderr).to.equal('');
  });

  it('prints the version with -v', async () => {
    const result = await runToEnd(runs, ['-v'], { cwd });
    expect(result.code).to.equal(0);
    expect(result.stdout).to.equal(`${VERSION}\n`);
  });
});
