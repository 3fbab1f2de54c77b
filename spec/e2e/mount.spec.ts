import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import request from 'supertest';
import WebSocket, { WebSocketServer } from 'ws';
import { createSyncRouter, type SyncRouter } from '../../lib/create-sync-router.js';
import { SyncClient } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

describe('create-sync-router', () => {
  describe('mounted at a non-default path beside other routes and another WebSocket server', () => {
    let dir: string;
    let server: Server;
    let sync: SyncRouter;
    let chat: WebSocketServer;
    let port: number;

    before(async () => {
      dir = await makeTempDir('mount-');
      const app = express();
      app.get('/api/hello', (_req, res) => { res.json({ hello: 'world' }); });
      sync = createSyncRouter({ path: '/api/v2/replication', dataDir: dir, heartbeatIntervalMs: 0 });
      app.use('/api/v2/replication', sync);
      server = createServer(app);
      chat = new WebSocketServer({ noServer: true });
      chat.on('connection', (ws) => ws.on('message', (m) => ws.send(`echo:${m.toString()}`)));
      server.on('upgrade', (req, socket, head) => {
        if (req.url === '/chat') chat.handleUpgrade(req, socket, head, (ws) => chat.emit('connection', ws, req));
      });
      sync.attach(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      port = (server.address() as AddressInfo).port;
    });

    after(async () => {
      await sync.close();
      await new Promise<void>((resolve) => chat.close(() => resolve()));
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await removeTempDir(dir);
    });

    it('serves its routes under the mount and leaves the app routes alone', async () => {
      await request(server).get('/api/hello').expect(200, { hello: 'world' });
      const status = await request(server).get('/api/v2/replication/status').expect(200);
      expect(status.body.ok).to.equal(true);
      const missing = await request(server).get('/api/v2/replication/nothing/here').expect(404);
      expect(missing.body.error.code).to.equal('NOT_FOUND');
      await request(server).get('/sync/status').expect(404);
    });

    it('takes WebSocket upgrades at <path>/ws and leaves /chat to its own server', async () => {
      const client = await SyncClient.connect({ url: `ws://127.0.0.1:${port}/api/v2/replication/ws`, databaseId: 'db1', siteId: siteIdToWire(randomSiteId()) });
      const ws = new WebSocket(`ws://127.0.0.1:${port}/chat`);
      await new Promise((resolve) => ws.once('open', resolve));
      const echoed = new Promise((resolve) => ws.once('message', (m) => resolve(m.toString())));
      ws.send('hi');
      expect(await echoed).to.equal('echo:hi');
      await client.ping();
      ws.close();
      await client.close();
    });
  });

  describe('#parseOptions (through createSyncRouter)', () => {
    it('refuses unknown options with a hint and bad values with a TypeError naming them', () => {
      expect(() => createSyncRouter({ batchsize: 5 } as never)).to.throw(TypeError, 'Unknown option "batchsize" (did you mean "batchSize"?)');
      expect(() => createSyncRouter({ batchSize: 0 })).to.throw(TypeError, 'batchSize');
      expect(() => createSyncRouter({ path: 'sync' })).to.throw(TypeError, 'path');
      expect(() => createSyncRouter({ authMode: 'magic' as never })).to.throw(TypeError, 'authMode');
      expect(() => createSyncRouter({ authMode: 'token-whitelist' })).to.throw(TypeError, 'authTokens');
      expect(() => createSyncRouter({ hooks: { onConnect: () => true } as never })).to.throw(TypeError, 'Unknown hook "onConnect"');
    });
  });
});
