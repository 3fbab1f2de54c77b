import { expect } from 'chai';
import { request, type IncomingMessage } from 'node:http';
import { TestSite } from '../helpers/changes.js';
import { stateOf } from '../helpers/replicas.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';

const DB = 'shutdown:db';

describe('hardening: SIGTERM under load (against a coordinator process)', function () {
  this.timeout(120_000);
  after(() => cleanupCoordinatorProcesses());

  it('answers what it took, closes sockets with 1001, ends stalled streams, stores whole messages and exits 0', async () => {
    const proc = await startCoordinatorProcess({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0 } });
    try {
      // Enough data that a snapshot cannot fit in the socket buffers of a client that does not read.
      const filler = new TestSite();
      const { socket: fill } = await RawSocket.handshake(proc.wsUrl, DB, filler.wire);
      for (let i = 0; i < 8; i++) {
        const set = filler.txn(Array.from({ length: 256 }, (_, j) => ({ pk: ['fill', i, j], value: 'f'.repeat(8192) })));
        expect((await fill.request({ type: 'apply_changes', requestId: 'f', changes: [set] }, ['apply_result', 'error'])).type).to.equal('apply_result');
      }
      await fill.close();

      const snapshot = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = request(`${proc.baseUrl}/${DB}/snapshot`, { agent: false, headers: { 'x-site-id': new TestSite().wire } }, (res) => {
          res.pause();
          resolve(res);
        });
        req.on('error', () => { /* the server ends it */ });
        req.once('error', reject);
        req.end();
      });
      expect(snapshot.statusCode).to.equal(200);
      const snapshotEnded = new Promise<boolean>((resolve) => {
        snapshot.once('close', () => resolve(snapshot.complete));
        snapshot.once('error', () => resolve(false));
      });
      const silent = await RawSocket.open(proc.wsUrl);

      const acked = new Set<string>();
      const writers = await Promise.all([0, 1, 2].map(async (w) => {
        const site = new TestSite();
        let n = 0;
        let socket!: RawSocket;
        const sendNext = (): void => {
          const id = `${w}/${n++}`;
          const changes = [0, 1].map((k) => site.txn([{ pk: [w, id, k], column: 'a', value: id }, { pk: [w, id, k], column: 'b', value: k }]));
          if (socket.ws.readyState === socket.ws.OPEN) socket.send(JSON.stringify({ type: 'apply_changes', requestId: id, changes }));
        };
        let firstAck!: () => void;
        const acking = new Promise<void>((resolve) => { firstAck = resolve; });
        socket = await RawSocket.open(proc.wsUrl, {
          onFrame(text) {
            const reply = JSON.parse(text) as { type: string; requestId?: string; code?: string };
            if (reply.type === 'handshake_ack') for (let i = 0; i < 4; i++) sendNext();
            if (reply.type === 'apply_result') {
              acked.add(reply.requestId!);
              firstAck();
              sendNext();
            }
            // Messages taken after shutdown began are refused, never half-stored (checked below).
            if (reply.type === 'error') expect(reply.code).to.equal('SHUTTING_DOWN');
            return true;
          },
        });
        socket.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: site.wire, protocolVersion: 1 }));
        await acking;
        return socket;
      }));

      const status = await proc.stop();
      expect(status, 'exit status').to.deep.equal({ code: 0, signal: null });
      for (const socket of writers) expect(await socket.closed).to.equal(1001);
      expect(await silent.closed).to.equal(1001);
      snapshot.resume();
      expect(await snapshotEnded, 'the stalled snapshot was cut, not completed').to.equal(false);

      const replica = await Replica.open(await openLevelStore(databaseDirectory(proc.dataDir, DB)));
      const cells = new Map<string, number>();
      try {
        for (const key of Object.keys((await stateOf(replica)).cells)) {
          const pk = JSON.parse(key.split('|')[2]!) as unknown[];
          if (pk[0] === 'fill') continue;
          const id = String(pk[1]);
          cells.set(id, (cells.get(id) ?? 0) + 1);
        }
      } finally {
        await replica.close();
      }
      expect(acked.size).to.be.greaterThan(0);
      for (const id of acked) expect(cells.get(id), `acknowledged ${id}`).to.equal(4);
      for (const [id, n] of cells) expect(n, `message ${id} is whole`).to.equal(4);
    } finally {
      await proc.cleanup();
    }
  });
});
