import { expect } from 'chai';
import { chmod, mkdir, symlink, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, CLI, LISTENING, npmBinary, ROOT, Runs, type Run } from './harness.js';

/** npm must neither reach the registry nor print notices while these run. */
const QUIET_NPM = { npm_config_offline: 'true', npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };

describe('cli under npm (npx, npm start)', function () {
  // npm itself takes a second or two to start on a busy machine.
  this.timeout(120_000);
  let dir: string;
  const runs = new Runs();

  before(async function build() {
    this.timeout(180_000);
    await buildOnce();
    // npm marks a package's bin executable when it installs it; tsc does not.
    await chmod(CLI, 0o755);
  });

  beforeEach(async () => {
    dir = await makeTempDir('cli-npm-');
  });

  afterEach(async () => {
    await runs.cleanup();
    await removeTempDir(dir);
  });

  function local(dataDir: string): string[] {
    return ['--port', '0', '--host', '127.0.0.1', '--data-dir', dataDir];
  }

  /** SIGTERMs npm alone, as a supervisor tracking its pid does, and checks the server behind it shut down cleanly. */
  async function terminateNpm(run: Run, dataDir: string): Promise<void> {
    const url = (await run.waitFor('stdout', LISTENING))[1]!;
    expect((await fetch(`${url}/status`)).status).to.equal(200);
    run.child.kill('SIGTERM');
    // npm's SIGTERM only reaches the shell between npm and node; node notices it was orphaned.
    await run.waitFor('stdout', /^sync-coordinator shutting down \(parent process exited\)$/m);
    // Closes only when every holder of npm's stdout, the server included, has exited.
    await run.closed;
    let refused = false;
    await fetch(`${url}/status`).catch(() => (refused = true));
    expect(refused, 'the port still answers').to.equal(true);
    // The data directory was released, so a new server can take it.
    const next = runs.cli(local(dataDir), { cwd: dir });
    await next.waitFor('stdout', LISTENING);
    next.child.kill('SIGTERM');
    expect((await next.closed).code).to.equal(0);
  }

  it('stops the server when npx is sent SIGTERM', async () => {
    // A project with the package installed, reduced to what npx looks at.
    const project = join(dir, 'project');
    await mkdir(join(project, 'node_modules/.bin'), { recursive: true });
    await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    await symlink(CLI, join(project, 'node_modules/.bin/sync-coordinator'));
    const dataDir = join(dir, 'data');
    const run = runs.start(npmBinary('npx'), ['sync-coordinator', ...local(dataDir)], { cwd: project, group: true, env: QUIET_NPM });
    await terminateNpm(run, dataDir);
  });

  it('has an npm start script that runs the built CLI with node', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).to.equal('node dist/cli/sync-coordinator.js');
  });

  it('stops the server when npm start is sent SIGTERM', async () => {
    const dataDir = join(dir, 'data');
    // The working directory is the package root, so name an empty config file rather than pick up one lying there.
    await writeFile(join(dir, 'config.json'), '{}');
    const run = runs.start(npmBinary('npm'), ['start', '--', ...local(dataDir), '--config', join(dir, 'config.json')], { cwd: ROOT, group: true, env: QUIET_NPM });
    await terminateNpm(run, dataDir);
  });
});
