/**
 * Child process for the idle-socket memory test: opens `count` WebSockets to
 * `url`, completes each one's handshake (databases `idle-0` … `idle-9` in
 * turn), prints `ready` once every handshake is acknowledged, then keeps
 * them open and silent until the parent closes its stdin. Its sockets live
 * here so that the server's process holds only its own side of them.
 */
import WebSocket from 'ws';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';

const [url, countArg] = process.argv.slice(2);
const count = Number(countArg);
const sockets: WebSocket[] = [];
let acknowledged = 0;
for (let i = 0; i < count; i++) {
  const ws = new WebSocket(url!);
  sockets.push(ws);
  ws.on('open', () => ws.send(JSON.stringify({ type: 'handshake', databaseId: `idle-${i % 10}`, siteId: siteIdToWire(randomSiteId()), protocolVersion: 1 })));
  ws.on('message', (data) => {
    const type = (JSON.parse(String(data)) as { type?: string }).type;
    if (type !== 'handshake_ack') {
      process.stderr.write(`socket ${i}: expected handshake_ack, got ${String(data).slice(0, 200)}\n`);
      process.exit(1);
    }
    if (++acknowledged === count) process.stdout.write('ready\n');
  });
  ws.on('error', (err) => {
    process.stderr.write(`socket ${i}: ${err.message}\n`);
    process.exit(1);
  });
  // A few at a time, so that the server's accept backlog never overflows.
  if (i % 100 === 99) await new Promise((resolve) => setTimeout(resolve, 20));
}
process.stdin.resume();
process.stdin.on('end', () => {
  for (const ws of sockets) ws.terminate();
});
