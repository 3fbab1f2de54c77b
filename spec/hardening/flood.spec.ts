import { expect } from 'chai';
import { TestSite } from '../helpers/changes.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, eventually, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';

const DB = 'flood:db';
const TOKEN = 'good-token';
const BURSTS = 10;
const PER_BURST = 100;
const WRONG_TOKENS = 200;
const SILENT = 300;

/** Runs `task` for 0..n-1, `parallel` at a time. */
async function inBatches(n: number, parallel: number, task: (i: number) => Promise<void>): Promise<void> {
  for (let start = 0; start < n; start += parallel) {
    await Promise.all(Array.from({ length: Math.min(parallel, n - start) }, (_, k) => task(start + k)));
  }
}

describe('hardening: connection flood (against a coordinator process)', function () {
  this.timeout(120_000);
  after(() => cleanupCoordinatorProcesses());

  it('stays responsive, closes silent sockets after the handshake timeout and returns the gauge to 0', async () => {
    const proc: CoordinatorProcess = await startCoordinatorProcess({
      args: ['--auth-mode', 'token-whitelist', '--auth-tokens', TOKEN],
      router: { handshakeTimeoutMs: 1000 },
    });
    try {
      // /status is polled throughout; every answer must be a 200.
      const statuses: number[] = [];
      let polling = true;
      const poller = (async () => {
        while (polling) {
          statuses.push((await proc.get('/status')).status);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      })();

      const silent: RawSocket[] = [];
      await inBatches(SILENT, 100, async () => { silent.push(await RawSocket.open(proc.wsUrl)); });

      let served = 0;
      for (let burst = 0; burst < BURSTS; burst++) {
        await inBatches(PER_BURST, PER_BURST, async () => {
          const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, new TestSite().wire, { token: TOKEN });
          expect(reply.type).to.equal('handshake_ack');
          expect((await socket.request({ type: 'ping' }, ['pong'])).type).to.equal('pong');
          await socket.close();
          served++;
        });
      }

      let refused = 0;
      await inBatches(WRONG_TOKENS, 50, async (i) => {
        const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, new TestSite().wire, { token: `wrong-${i}` });
        expect(reply).to.include({ type: 'error', code: 'AUTH_FAILED', fatal: true });
        expect(await socket.closed).to.equal(4001);
        refused++;
      });

      const silentCodes = await Promise.all(silent.map((s) => s.closed));
      polling = false;
      await poller;

      expect(served).to.equal(BURSTS * PER_BURST);
      expect(refused).to.equal(WRONG_TOKENS);
      expect(silentCodes.every((code) => code === 1008), 'silent sockets closed with 1008').to.equal(true);
      expect(statuses.length).to.be.greaterThan(0);
      expect(statuses.every((s) => s === 200)).to.equal(true);
      expect(await eventually(async () => (await proc.metric('sync_websocket_connections_active')) === 0)).to.equal(true);
      expect(JSON.parse((await proc.get('/status')).body).data.connectedClients).to.equal(0);
      expect(await proc.metric('sync_limit_refusals_total{limit="handshake_timeout"}')).to.equal(SILENT);
      expect(proc.alive()).to.equal(true);
    } finally {
      await proc.cleanup();
    }
  });
});
