import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Random } from '../helpers/random.js';
import { ReplicaFixture, stateOf } from '../helpers/replicas.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const WRITER = fileURLToPath(new URL('../helpers/crash-writer.ts', import.meta.url));

/** Runs the writer until it has acknowledged `after` messages, then SIGKILLs it. */
function runAndKill(dir: string, start: number, after: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dir, String(start)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const acked: number[] = [];
    let buffered = '';
    child.stdout.on('data', (data: Buffer) => {
      buffered += data.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) acked.push(Number(line));
      if (acked.length >= after && !child.killed) child.kill('SIGKILL');
    });
    child.on('error', reject);
    child.on('exit', () => resolve(acked));
  });
}

describe('replica (crash safety)', function () {
  this.timeout(120_000);
  const fixture = new ReplicaFixture();
  let dir: string;
  before(async () => { dir = await makeTempDir('crash-'); });
  after(() => removeTempDir(dir));
  afterEach(() => fixture.cleanup());

  // Writes do not use `sync: true` by default: LevelDB hands every batch to
  // the kernel (write(2) to its log) before the apply resolves, so a killed
  // process loses nothing it acknowledged. fsync per batch (`syncWrites`)
  // only adds protection against kernel crashes and power loss.
  it('loses nothing acknowledged and leaves no half-applied message across SIGKILLs', async () => {
    const rng = new Random(7);
    const acked = new Set<number>();
    let start = 0;
    for (let round = 0; round < 4; round++) {
      const got = await runAndKill(dir, start, 20 + rng.int(200));
      got.forEach((n) => acked.add(n));
      start = Math.max(start, ...got) + 1000;
    }
    const { replica } = await fixture.create({}, dir);
    const state = await stateOf(replica);
    const perMessage = new Map<number, number>();
    for (const key of Object.keys(state.cells)) {
      const n = JSON.parse(key.split('|')[2]!)[0] as number;
      perMessage.set(n, (perMessage.get(n) ?? 0) + 1);
    }
    for (const n of acked) expect(perMessage.get(n), `acknowledged message ${n}`).to.equal(6);
    // Messages in flight at the kill are either whole or absent.
    for (const [n, count] of perMessage) expect(count, `message ${n}`).to.equal(6);
    expect(acked.size).to.be.greaterThan(80);
  });
});
