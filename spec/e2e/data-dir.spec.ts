import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../../lib/config/load-config.js';
import { createCoordinatorServer, type CoordinatorServer } from '../../lib/create-coordinator-server.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Runs the CLI (from source) on `dataDir` in another process; resolves with its exit code and stderr. */
function cliInAnotherProcess(dataDir: string): Promise<{ code: number; stderr: string }> {
  const args = ['--import', 'tsx', join(ROOT, 'cli/sync-coordinator.ts'), '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir];
  return new Promise((resolve) => {
    const child = execFile(process.execPath, args, { cwd: ROOT }, (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stderr });
    });
    // Should the lock be gone, the CLI would serve; end it so the test fails instead of hanging.
    child.stdout!.once('data', () => child.kill('SIGTERM'));
  });
}

describe('create-coordinator-server: data directory', () => {
  let dir: string;
  const servers: CoordinatorServer[] = [];

  beforeEach(async () => {
    dir = await makeTempDir('data-dir-');
  });

  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.stop()));
    await removeTempDir(dir);
  });

  function server(dataDir: string, port = 0): CoordinatorServer {
    const s = createCoordinatorServer({ config: { host: '127.0.0.1', port, dataDir } });
    servers.push(s);
    return s;
  }

  async function startError(s: CoordinatorServer): Promise<Error> {
    try {
      await s.start();
    } catch (err) {
      return err as Error;
    }
    expect.fail('start() resolved');
  }

  it('refuses a second server on the same directory in this process, and lets one start once the first stopped', async () => {
    const dataDir = join(dir, 'data');
    const first = server(dataDir);
    const { url } = await first.start();
    const err = await startError(server(dataDir));
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as ConfigError).setting).to.equal('dataDir');
    expect(err.message).to.match(new RegExp(`^dataDir: ".*" is in use by another running sync coordinator \\(pid ${process.pid} on `));
    // Refusing must not have dropped the first server's lock (closing a descriptor of a locked file would).
    const other = await cliInAnotherProcess(dataDir);
    expect(other.code).to.equal(1);
    expect(other.stderr).to.include(`is in use by another running sync coordinator (pid ${process.pid} on `);
    expect((await fetch(`${url}/status`)).status).to.equal(200);
    await first.stop();
    await server(dataDir).start();
  });

  it('rejects a file with ConfigError naming the path, before binding the port', async () => {
    const file = join(dir, 'file');
    await writeFile(file, '');
    const s = server(file);
    const err = await startError(s);
    expect(err).to.be.instanceOf(ConfigError);
    expect(err.message).to.equal(`dataDir: ${JSON.stringify(file)} is a file, not a directory`);
    expect(s.server.listening).to.equal(false);
  });

  it('rejects a directory the file system refuses to create (procfs), instead of waiting forever', async function () {
    // Node's recursive mkdir never settles on /proc/<new name>: procfs answers ENOENT with the parent there.
    if (process.platform !== 'linux') this.skip();
    const dataDir = '/proc/sync-coordinator-spec/data';
    const s = server(dataDir);
    const err = await startError(s);
    expect(err).to.be.instanceOf(ConfigError);
    expect(err.message).to.equal(`dataDir: cannot create directory ${JSON.stringify(dataDir)} (ENOENT: the file system refuses to create it there)`);
    expect(s.server.listening).to.equal(false);
  });

  it('releases the directory when listening fails', async () => {
    const dataDir = join(dir, 'data');
    const holder = server(join(dir, 'other'));
    const { port } = await holder.start();
    const err = await startError(server(dataDir, port));
    expect((err as NodeJS.ErrnoException).code).to.equal('EADDRINUSE');
    await server(dataDir).start();
  });
});
