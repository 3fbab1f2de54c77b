import { expect } from 'chai';
import { Random } from '../helpers/random.js';
import { TestSite } from '../helpers/changes.js';
import { stateOf } from '../helpers/replicas.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';

const DB = 'crash:db';
const KILLS = 12;
/** Cells per message: 3 change sets of 2 changes; a message is stored whole or not at all. */
const CELLS_PER_MESSAGE = 6;
const WINDOW = 4;

/** Message `id` ("cycle/writer/n") as 3 change sets of 2 cells each. */
function message(site: TestSite, id: string): ChangeSet[] {
  const [cycle, writer, n] = id.split('/').map(Number);
  return [0, 1, 2].map((k) => site.txn([
    { pk: [cycle!, writer!, n!, k], column: 'a', value: `m${id}` },
    { pk: [cycle!, writer!, n!, k], column: 'b', value: { __bin: Buffer.from(`blob ${id} ${k}`).toString('base64') } },
  ]));
}

/** Writes over one socket, WINDOW messages in flight, until the socket dies; adds acknowledged ids to `acked`. */
async function wsWriter(proc: CoordinatorProcess, cycle: number, writer: number, acked: Set<string>, firstAck: () => void): Promise<void> {
  const site = new TestSite();
  let n = 0;
  let socket: RawSocket;
  const sendNext = (): void => {
    const id = `${cycle}/${writer}/${n++}`;
    if (socket.ws.readyState === socket.ws.OPEN) socket.send(JSON.stringify({ type: 'apply_changes', requestId: id, changes: message(site, id) }));
  };
  socket = await RawSocket.open(proc.wsUrl, {
    onFrame(text) {
      const reply = JSON.parse(text) as { type: string; requestId?: string };
      if (reply.type === 'handshake_ack') {
        for (let i = 0; i < WINDOW; i++) sendNext();
      } else if (reply.type === 'apply_result') {
        acked.add(reply.requestId!);
        firstAck();
        sendNext();
      } else if (reply.type !== 'push_changes') {
        throw new Error(`unexpected reply ${text.slice(0, 200)}`);
      }
      return true;
    },
  });
  socket.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: site.wire, protocolVersion: 1 }));
  await socket.closed;
}

/** Posts one message at a time over HTTP until the server is gone. */
async function httpWriter(proc: CoordinatorProcess, cycle: number, writer: number, acked: Set<string>, firstAck: () => void): Promise<void> {
  const site = new TestSite();
  for (let n = 0; ; n++) {
    const id = `${cycle}/${writer}/${n}`;
    let status: number;
    try {
      ({ status } = await proc.post(`/${DB}/changes`, JSON.stringify({ changes: message(site, id) }), { 'x-site-id': site.wire }));
    } catch {
      return;
    }
    expect(status).to.equal(200);
    acked.add(id);
    firstAck();
  }
}

describe('hardening: SIGKILL under continuous writes (against a coordinator process)', function () {
  this.timeout(240_000);
  let dataDir: string;
  before(async () => { dataDir = await makeTempDir('crash-process-'); });
  after(async () => {
    await cleanupCoordinatorProcesses();
    await removeTempDir(dataDir);
  });

  it(`loses nothing acknowledged and leaves no half-applied message across ${KILLS} kills`, async () => {
    const rng = new Random(0xc0ffee);
    const acked = new Set<string>();
    for (let cycle = 0; cycle < KILLS; cycle++) {
      const proc = await startCoordinatorProcess({ dataDir, router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0 } });
      let started!: () => void;
      const firstAck = new Promise<void>((resolve) => { started = resolve; });
      const writers = [
        wsWriter(proc, cycle, 0, acked, started),
        wsWriter(proc, cycle, 1, acked, started),
        httpWriter(proc, cycle, 2, acked, started),
      ];
      await firstAck;
      // A random moment while all three keep writing.
      await new Promise((resolve) => setTimeout(resolve, rng.int(300)));
      expect(await proc.kill()).to.deep.equal({ code: null, signal: 'SIGKILL' });
      await Promise.all(writers);
      await proc.cleanup();

      const replica = await Replica.open(await openLevelStore(databaseDirectory(dataDir, DB)));
      const cells = new Map<string, number>();
      try {
        const state = await stateOf(replica);
        for (const key of Object.keys(state.cells)) {
          const [c, w, n] = JSON.parse(key.split('|')[2]!) as number[];
          const id = `${c}/${w}/${n}`;
          cells.set(id, (cells.get(id) ?? 0) + 1);
        }
      } finally {
        await replica.close();
      }
      for (const id of acked) expect(cells.get(id), `acknowledged message ${id}, after kill ${cycle + 1}`).to.equal(CELLS_PER_MESSAGE);
      // Messages in flight at the kill are whole or absent.
      for (const [id, n] of cells) expect(n, `message ${id}, after kill ${cycle + 1}`).to.equal(CELLS_PER_MESSAGE);
    }
    if (process.env.CRASH_TALLY) process.stderr.write(`acknowledged ${acked.size} messages\n`);
    expect(acked.size).to.be.greaterThan(KILLS * 10);
  });
});
