import { expect } from 'chai';
import { request, type IncomingMessage } from 'node:http';
import { TestSite } from '../helpers/changes.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, eventually, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';

const DB = 'backpressure:db';
const MB = 1024 * 1024;

/** Fills the database with 1000 cells of 8 KiB: about 8 MiB, two `get_changes` pages of the 4 MiB page budget. */
async function fill(proc: CoordinatorProcess): Promise<void> {
  const site = new TestSite();
  const { socket } = await RawSocket.handshake(proc.wsUrl, DB, site.wire);
  for (let i = 0; i < 4; i++) {
    const set = site.txn(Array.from({ length: 250 }, (_, j) => ({ pk: [i, j], value: `${i}/${j}`.padEnd(8192, '.') })));
    expect((await socket.request({ type: 'apply_changes', requestId: String(i), changes: [set] }, ['apply_result', 'error'])).type).to.equal('apply_result');
  }
  await socket.close();
}

describe('hardening: backpressure on replies and streams (against a coordinator process)', function () {
  this.timeout(120_000);
  after(() => cleanupCoordinatorProcesses());

  it('answers a client that does not read one reply at a time, so its requests cannot pile up in memory', async () => {
    const proc = await startCoordinatorProcess({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0, sendHardLimitMs: 0 } });
    try {
      await fill(proc);
      let replies = 0;
      const reader = await RawSocket.open(proc.wsUrl, {
        onFrame(text) {
          if (!text.startsWith('{"type":"changes"')) return false;
          replies++;
          return true;
        },
      });
      // clientPaging: one reply per get_changes, so every request has exactly one answer to count.
      reader.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: new TestSite().wire, protocolVersion: 1, clientPaging: true }));
      expect((await reader.next()).type).to.equal('handshake_ack');
      const before = proc.rss();
      reader.pauseReading();
      // 40 pages of ~4 MiB: over 150 MiB if the server queued every answer.
      const REQUESTS = 40;
      for (let i = 0; i < REQUESTS; i++) reader.send('{"type":"get_changes"}');
      let peak = before;
      for (let i = 0; i < 30; i++) {
        peak = Math.max(peak, proc.rss());
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const served = replies;
      reader.resumeReading();
      if (process.env.BP_TALLY) process.stderr.write(`paused growth ${((peak - before) / MB).toFixed(1)} MB, served ${served}\n`);
      expect(await eventually(() => replies === REQUESTS, 600)).to.equal(true);
      expect((peak - before) / MB, 'RSS growth (MB) while the client did not read').to.be.below(80);
      await reader.close();
    } finally {
      await proc.cleanup();
    }
  });

  describe('a client that stays over the hard limit', () => {
    let proc: CoordinatorProcess;
    before(async () => {
      proc = await startCoordinatorProcess({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 0, sendHardLimitBytes: MB, sendHardLimitMs: 300 } });
      await fill(proc);
    });
    after(() => proc?.cleanup());

    const refusals = (): Promise<number> => proc.metric('sync_limit_refusals_total{limit="send_buffer"}');

    it('loses its WebSocket (close 1013) and the process keeps serving', async () => {
      const before = await refusals();
      const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, new TestSite().wire);
      expect(reply.type).to.equal('handshake_ack');
      socket.pauseReading();
      for (let i = 0; i < 10; i++) socket.send('{"type":"get_changes"}');
      expect(await eventually(async () => (await refusals()) > before)).to.equal(true);
      socket.resumeReading();
      // The close frame sits behind data the client never read, so it may see the connection drop instead.
      expect([1013, 1006]).to.include(await socket.closed);
      const { socket: next, reply: ack } = await RawSocket.handshake(proc.wsUrl, DB, new TestSite().wire);
      expect(ack.type).to.equal('handshake_ack');
      await next.close();
    });

    it('cuts an HTTP snapshot whose client stops reading', async () => {
      const before = await refusals();
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = request(`${proc.baseUrl}/${DB}/snapshot`, { agent: false, headers: { 'x-site-id': new TestSite().wire } }, (r) => {
          r.pause();
          resolve(r);
        });
        req.on('error', () => { /* the server cuts it */ });
        req.once('error', reject);
        req.end();
      });
      expect(res.statusCode).to.equal(200);
      const ended = new Promise<boolean>((resolve) => {
        res.once('close', () => resolve(res.complete));
        res.once('error', () => resolve(false));
      });
      expect(await eventually(async () => (await refusals()) > before)).to.equal(true);
      res.resume();
      expect(await ended, 'the snapshot was cut').to.equal(false);
      expect((await proc.get('/status')).status).to.equal(200);
    });
  });
});
