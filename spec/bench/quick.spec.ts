import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

// The benchmark prints figures, never pass/fail: CI only checks that a smoke
// run completes and writes its report. No figure is asserted.
describe('bench', function () {
  this.timeout(300_000);

  it('runs with --quick and writes a report with every section', async () => {
    const dir = await makeTempDir('bench-');
    try {
      const out = join(dir, 'report.json');
      const { code, stdout, stderr } = await runBench(['--quick', '--subscribers', '3', '--out', out]);
      expect(code, stderr).to.equal(0);
      expect(stdout).to.contain('ratio to relay');
      const report = JSON.parse(await readFile(out, 'utf8'));
      expect(Object.keys(report.apply)).to.deep.equal(['50/msg serial', '50/msg window 16', '1/msg serial', '1/msg window 16']);
      for (const figures of Object.values(report.apply) as { coordinator: { changesPerSec: number; pushesReceived: number } }[]) {
        expect(figures.coordinator.changesPerSec).to.be.greaterThan(0);
        expect(figures.coordinator.pushesReceived).to.be.greaterThan(0);
      }
      // The storage floor replays the server's own batches: per new-row change a column record and a log entry, plus the stamp and the table count.
      expect(Object.keys(report.storageFloor)).to.deep.equal(['50/msg serial', '1/msg serial']);
      expect(report.storageFloor['50/msg serial'].opsPerMessage).to.equal(50 * 2 + 2);
      expect(report.storageFloor['1/msg serial'].opsPerMessage).to.equal(1 * 2 + 2);
      expect(report.storageFloor['1/msg serial'].poolRoundTripUs).to.be.greaterThan(0);
      expect(report.storageFloor['1/msg serial'].poolRoundTripAfterWorkUs).to.be.greaterThan(0);
      expect(report.storageFloor['50/msg serial'].totalAfterWorkUs).to.be.greaterThan(0);
      expect(stdout).to.contain('storage floor, 50/msg serial');
      expect(stdout).to.contain("a bare round trip through libuv's pool");
      expect(stdout).to.contain('µs of main-thread work as a server does');
      expect(report.catchup).to.have.property('2000');
      expect(report.memory.idleRssMb).to.be.greaterThan(0);
      // --quick runs the serial loads with S3 in both modes, and a small restore.
      expect(stdout).to.contain('local stand-in for S3');
      expect(Object.keys(report.s3.apply)).to.deep.equal(['50/msg serial', '1/msg serial']);
      for (const modes of Object.values(report.s3.apply) as { async: { changesPerSec: number; archive: { caughtUpMs: number } }; ack: { changesPerSec: number } }[]) {
        expect(modes.async.changesPerSec).to.be.greaterThan(0);
        expect(modes.async.archive).to.have.property('caughtUpMs');
        expect(modes.ack.changesPerSec).to.be.greaterThan(0);
      }
      expect(report.s3.restore.entries).to.equal(5000);
      expect(report.s3.restore.storeEntries).to.be.greaterThan(0);
      // And every scale figure at tiny sizes: every push delivered, the store churn of 120 databases through 100 open stores.
      expect(stdout).to.contain('Scale: each figure against a coordinator of its own');
      const { scale } = report;
      expect(scale.connections.connections).to.equal(200);
      expect(scale.connections.pushesReceived).to.equal(scale.connections.pushesExpected).and.equal(200 * 2);
      expect(scale.connections.memory.collected.rssAfterMb).to.be.greaterThan(0);
      expect(scale.fanout.pushesReceived).to.equal(scale.fanout.pushesExpected).and.equal(50 * 20);
      expect(scale.databases.touch.churn).to.deep.equal({ opens: 120, closes: 20 });
      expect(scale.databases.hot.churn).to.deep.equal({ opens: 10, closes: 10 });
      expect(scale.size.snapshot.entries).to.equal(20_000 + 500);
      expect(scale.size.end.changesPerSec).to.be.greaterThan(0);
    } finally {
      await removeTempDir(dir);
    }
  });

  it('runs the cluster loads with --nodes 2 --quick: every setup beside the relay, every push delivered', async () => {
    const dir = await makeTempDir('bench-');
    try {
      const out = join(dir, 'report.json');
      const { code, stdout, stderr } = await runBench(['--quick', '--subscribers', '3', '--no-s3', '--scale', 'none', '--only', '50/msg serial', '--nodes', '2', '--out', out]);
      expect(code, stderr).to.equal(0);
      expect(stdout).to.contain('Cluster (--nodes 2)');
      const { cluster } = JSON.parse(await readFile(out, 'utf8'));
      expect(Object.keys(cluster.loads)).to.deep.equal(['1 database', '10 databases', '10 databases, by database']);
      for (const { setups } of Object.values(cluster.loads) as { setups: Record<string, { changesPerSec: number; pushesExpected: number; pushesReceived: number }> }[]) {
        expect(Object.keys(setups)).to.deep.equal(['relay', '1 node', '1 node + Redis', '2 nodes + Redis']);
        for (const figures of Object.values(setups)) {
          expect(figures.changesPerSec).to.be.greaterThan(0);
          expect(figures.pushesReceived).to.equal(figures.pushesExpected);
        }
      }
      // Spread, subscribers on the other node got pushes; by database, each node held only its own half.
      expect(cluster.loads['10 databases'].setups['2 nodes + Redis'].pushOtherNode.count).to.be.greaterThan(0);
      expect(cluster.loads['10 databases'].setups['2 nodes + Redis'].openDatabases).to.deep.equal([10, 10]);
      expect(cluster.loads['10 databases, by database'].setups['2 nodes + Redis'].openDatabases).to.deep.equal([5, 5]);
    } finally {
      await removeTempDir(dir);
    }
  });

  it('refuses --nodes 1, naming the flag and the value', async () => {
    const { code, stderr } = await runBench(['--nodes', '1']);
    expect(code).to.not.equal(0);
    expect(stderr).to.contain('--nodes must be an integer ≥ 2, got "1"');
  });
});

/** bench/run.ts with `args`, to its exit. */
async function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'run.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  // 'close', not 'exit': the output is complete only once its pipes closed.
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stdout, stderr };
}
