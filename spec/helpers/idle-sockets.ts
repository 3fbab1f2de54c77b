/**
 * Child process for the idle-socket memory test. Arguments: `url count
 * [transactions]`. With `transactions`, first writes that many to each of
 * the databases `idle-0` … `idle-9` (one writer socket each, closed after).
 * Then opens `count` WebSockets to `url`, each doing what a real client
 * does (docs/protocol.md §8): handshake (databases in turn), then one
 * `get_changes` from the beginning. Prints `ready` once every socket has
 * its `changes` page, then keeps them open and silent until the parent
 * closes its stdin. Its sockets live here so that the server's process
 * holds only its own side of them.
 */
import WebSocket from 'ws';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { TestSite } from './changes.js';

const DATABASES = 10;
const [url, countArg, transactionsArg] = process.argv.slice(2);
const count = Number(countArg);
const transactions = Number(transactionsArg ?? 0);

function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

/** The next frame on `ws`, which must be of `type`. */
function next(ws: WebSocket, type: string): Promise<void> {
  return new Promise((resolve) => ws.once('message', (data) => {
    if ((JSON.parse(String(data)) as { type?: string }).type !== type) fail(`expected ${type}, got ${String(data).slice(0, 200)}`);
    resolve();
  }));
}

async function open(): Promise<WebSocket> {
  const ws = new WebSocket(url!);
  ws.on('error', (err) => fail(err.message));
  await new Promise((resolve) => ws.once('open', resolve));
  return ws;
}

for (let db = 0; db < DATABASES && transactions > 0; db++) {
  const ws = await open();
  const site = new TestSite();
  const acknowledged = next(ws, 'handshake_ack');
  ws.send(JSON.stringify({ type: 'handshake', databaseId: `idle-${db}`, siteId: site.wire, protocolVersion: 1 }));
  await acknowledged;
  const sets = Array.from({ length: transactions }, (_, i) => site.txn([{ pk: [i], value: `value ${i}` }], i === 0 ? [{ table: 'notes', ddl: 'create table notes (id integer primary key, title text)' }] : []));
  const applied = next(ws, 'apply_result');
  ws.send(JSON.stringify({ type: 'apply_changes', changes: sets }));
  await applied;
  ws.close();
}

const sockets: WebSocket[] = [];
let caughtUp = 0;
for (let i = 0; i < count; i++) {
  const ws = new WebSocket(url!);
  sockets.push(ws);
  ws.on('error', (err) => fail(`socket ${i}: ${err.message}`));
  ws.on('open', () => {
    ws.send(JSON.stringify({ type: 'handshake', databaseId: `idle-${i % DATABASES}`, siteId: siteIdToWire(randomSiteId()), protocolVersion: 1 }));
    void next(ws, 'handshake_ack').then(() => {
      ws.send('{"type":"get_changes"}');
      return next(ws, 'changes');
    }).then(() => {
      if (++caughtUp === count) process.stdout.write('ready\n');
    });
  });
  // A few at a time, so that the server's accept backlog never overflows.
  if (i % 100 === 99) await new Promise((resolve) => setTimeout(resolve, 20));
}
process.stdin.resume();
process.stdin.on('end', () => {
  for (const ws of sockets) ws.terminate();
});
