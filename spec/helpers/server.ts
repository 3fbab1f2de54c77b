import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Express } from 'express';
import { createSyncRouter, type SyncRouter } from '../../lib/create-sync-router.js';
import type { SyncRouterOptions } from '../../lib/config/options.js';
import { SyncClient, type SyncClientOptions } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

/** A router mounted in a fresh Express app on 127.0.0.1, port 0, over a temp data dir. */
export interface TestServer {
  app: Express;
  server: Server;
  sync: SyncRouter;
  /** http://127.0.0.1:<port><path> */
  baseUrl: string;
  wsUrl: string;
  dataDir: string;
  /** Connects a client (random site id unless given) and completes the handshake. */
  connect(databaseId: string, options?: Partial<SyncClientOptions>): Promise<SyncClient>;
  close(): Promise<void>;
}

export async function startTestServer(options: SyncRouterOptions = {}): Promise<TestServer> {
  const dataDir = options.dataDir ?? await makeTempDir('server-');
  const path = options.path ?? '/sync';
  const sync = createSyncRouter({ heartbeatIntervalMs: 0, ...options, dataDir, path });
  const app = express();
  app.use(path, sync);
  const server = createServer(app);
  sync.attach(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const clients: SyncClient[] = [];
  return {
    app, server, sync, dataDir,
    baseUrl: `http://127.0.0.1:${port}${path}`,
    wsUrl: `ws://127.0.0.1:${port}${path}/ws`,
    async connect(databaseId, extra = {}) {
      const client = await SyncClient.connect({ url: `ws://127.0.0.1:${port}${path}/ws`, databaseId, siteId: siteIdToWire(randomSiteId()), ...extra });
      clients.push(client);
      return client;
    },
    async close() {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await sync.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      if (!options.dataDir) await removeTempDir(dataDir);
    },
  };
}
