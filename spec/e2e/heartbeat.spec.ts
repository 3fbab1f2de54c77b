import { expect } from 'chai';
import WebSocket from 'ws';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';

describe('ws heartbeat', () => {
  let server: TestServer;
  beforeEach(async () => { server = await startTestServer({ heartbeatIntervalMs: 100 }); });
  afterEach(() => server.close());

  it('terminates a socket that stops answering pings and keeps one that answers', async () => {
    const healthy = await server.connect('db');
    // ws answers pings by itself unless told not to: this client plays dead.
    const silent = new WebSocket(server.wsUrl, { autoPong: false });
    await new Promise((resolve) => silent.once('open', resolve));
    const acked = new Promise((resolve) => silent.once('message', resolve));
    silent.send(JSON.stringify({ type: 'handshake', databaseId: 'db', siteId: siteIdToWire(randomSiteId()), protocolVersion: 1 }));
    await acked;
    let pings = 0;
    silent.on('ping', () => { pings++; });
    const code = await new Promise<number>((resolve) => silent.once('close', resolve));
    expect(pings).to.be.at.least(1);
    // Terminated, not closed: no close frame.
    expect(code).to.equal(1006);
    expect(await healthy.ping()).to.deep.equal({ type: 'pong' });
    expect(server.sync.coordinator.hub.size).to.equal(1);
  });
});
