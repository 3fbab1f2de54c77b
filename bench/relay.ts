/**
 * The transport ceiling: a trivial relay built on `ws` that speaks just
 * enough of the protocol for the benchmark (handshake, apply_changes →
 * push_changes + apply_result, ping). It parses each frame once and re-sends
 * to the other sockets of the database, with no validation and no storage.
 * Prints "listening on ws://127.0.0.1:<port>/sync/ws".
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

interface Peer { ws: WebSocket; databaseId: string; siteId: string }

const databases = new Map<string, Set<Peer>>();
const server = createServer();
const wss = new WebSocketServer({ server, path: '/sync/ws', perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });

wss.on('connection', (ws) => {
  let peer: Peer | undefined;
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.type === 'handshake') {
      peer = { ws, databaseId: msg.databaseId, siteId: msg.siteId };
      let set = databases.get(peer.databaseId);
      if (!set) databases.set(peer.databaseId, (set = new Set()));
      set.add(peer);
      ws.send(JSON.stringify({ type: 'handshake_ack', databaseId: msg.databaseId, serverSiteId: 'AAAAAAAAAAAAAAAAAAAAAA', connectionId: 'relay', protocolVersion: 1 }));
    } else if (msg.type === 'apply_changes' && peer) {
      const frame = JSON.stringify({ type: 'push_changes', changeSets: msg.changes });
      for (const other of databases.get(peer.databaseId) ?? []) {
        if (other.siteId !== peer.siteId) other.ws.send(frame);
      }
      let n = 0;
      for (const set of msg.changes) n += set.changes.length;
      ws.send(JSON.stringify({ type: 'apply_result', requestId: msg.requestId, applied: n, skipped: 0, conflicts: 0, transactions: msg.changes.length }));
    } else if (msg.type === 'ping') {
      ws.send('{"type":"pong"}');
    }
  });
  ws.on('close', () => { if (peer) databases.get(peer.databaseId)?.delete(peer); });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening on ws://127.0.0.1:${(server.address() as AddressInfo).port}/sync/ws\n`);
});
process.on('SIGTERM', () => { wss.close(); server.close(() => process.exit(0)); });
