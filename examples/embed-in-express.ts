/**
 * Adding sync to an Express app that already has its own routes and its own
 * WebSocket endpoint. Both WebSocket servers share one http.Server: each
 * `upgrade` listener takes only its own path and leaves the rest alone.
 *
 *     node --import tsx examples/embed-in-express.ts
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express from 'express';
import { WebSocketServer } from 'ws';
import { createSyncRouter } from '../lib/index.js';

const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? '127.0.0.1';
// Without DATA_DIR the data is throwaway, so a demo run leaves nothing behind.
const dataDir = process.env.DATA_DIR ?? await mkdtemp(join(tmpdir(), 'sync-example-'));

// The existing app.
const app = express();
app.get('/api/hello', (_req, res) => {
  res.json({ hello: 'world' });
});
const server = createServer(app);

// The app's own WebSocket endpoint, an echo "chat" at /chat.
const chat = new WebSocketServer({ noServer: true });
chat.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
});
// Every listener sees every upgrade, so each must ignore paths that are not its own.
// (An upgrade that no listener takes is left hanging until the client gives up.)
server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url ?? '/', 'http://localhost').pathname !== '/chat') return;
  chat.handleUpgrade(req, socket, head, (ws) => chat.emit('connection', ws, req));
});

// Sync: HTTP routes under /sync, WebSocket sessions at /sync/ws. The path is
// given once: mounting at sync.path keeps HTTP and WebSocket in agreement.
const sync = createSyncRouter({ path: '/sync', dataDir });
app.use(sync.path, sync);
sync.attach(server);

server.listen(port, host, () => {
  const { port: bound } = server.address() as AddressInfo;
  console.log(`listening on http://${host}:${bound}/sync`);
});

async function shutdown(): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  // Upgraded sockets are no longer HTTP requests: each WebSocket server closes its own.
  for (const socket of chat.clients) socket.close(1001, 'Server shutting down');
  await sync.close();
  server.closeIdleConnections();
  await closed;
  if (!process.env.DATA_DIR) await rm(dataDir, { recursive: true, force: true });
}

// `once`: a second Ctrl-C during a stuck shutdown falls back to the default, killing the process.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    shutdown().then(
      () => process.exit(0),
      (err) => { console.error(err); process.exit(1); },
    );
  });
}
