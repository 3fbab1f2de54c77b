import { expect } from 'chai';
import { TestSite } from '../helpers/changes.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, eventually } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';

const DATABASES = 20;

describe('hardening: idle resources (against a coordinator process)', function () {
  this.timeout(60_000);
  after(() => cleanupCoordinatorProcesses());

  it('closes the stores of databases nobody uses after storeIdleMs and returns to its file descriptors', async () => {
    const proc = await startCoordinatorProcess({ router: { storeIdleMs: 300 } });
    try {
      const openStores = async (): Promise<number> => JSON.parse((await proc.get('/status')).body).data.openStores as number;
      // The baseline: listening, nothing open, no client connected.
      expect(await openStores()).to.equal(0);
      const baseline = proc.fdCount();

      const site = new TestSite();
      const sockets = await Promise.all(Array.from({ length: DATABASES }, async (_, i) => {
        const { socket, reply } = await RawSocket.handshake(proc.wsUrl, `idle:db-${i}`, site.wire);
        expect(reply.type).to.equal('handshake_ack');
        expect((await socket.request({ type: 'apply_changes', changes: [site.txn([{ pk: [i], value: 'x' }])] }, ['apply_result'])).type).to.equal('apply_result');
        return socket;
      }));
      // Sessions hold their databases open however long they idle.
      expect(await openStores()).to.equal(DATABASES);
      expect(proc.fdCount()).to.be.greaterThan(baseline + DATABASES);
      await Promise.all(sockets.map((s) => s.close()));
      // HTTP reads open a database only for the request.
      expect((await proc.get('/idle:db-0/changes', { 'x-site-id': new TestSite().wire })).status).to.equal(200);

      expect(await eventually(async () => (await openStores()) === 0)).to.equal(true);
      expect(await eventually(() => proc.fdCount() <= baseline), `descriptors back to ${baseline}, now ${proc.fdCount()}`).to.equal(true);
    } finally {
      await proc.cleanup();
    }
  });
});
