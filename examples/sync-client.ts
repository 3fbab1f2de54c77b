/**
 * Three devices syncing one database through the coordinator with SyncClient:
 * A writes, B (online) receives a push, C joins later and catches up, and A
 * sees none of its own writes come back. Starts a throwaway coordinator
 * unless SYNC_URL names a running one (e.g. ws://127.0.0.1:3000/sync/ws).
 *
 *     node --import tsx examples/sync-client.ts
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createCoordinatorServer, SyncClient, HlcClock, decodeHlc, encodeHlc, hlcToWire, randomSiteId, siteIdToWire,
  type ChangeSet, type ColumnChange,
} from '../lib/index.js';

/** One device: a site id and a clock that stamps its transactions. */
function device() {
  const site = randomSiteId();
  return { siteId: siteIdToWire(site), clock: new HlcClock(site) };
}

/** A transaction of column writes: every fact shares the clock tick and gets its own opSeq. */
function transaction(dev: ReturnType<typeof device>, writes: Omit<ColumnChange, 'type' | 'schema' | 'hlc'>[]): ChangeSet {
  const tick = decodeHlc(dev.clock.tick());
  const hlc = (opSeq: number) => hlcToWire(encodeHlc({ ...tick, opSeq }));
  const changes = writes.map((w, i): ColumnChange => ({ type: 'column', schema: 'main', ...w, hlc: hlc(i) }));
  return {
    siteId: dev.siteId,
    transactionId: `${tick.wallTime}:${tick.counter}:${dev.siteId}`,
    hlc: hlc(changes.length - 1),
    changes,
    schemaMigrations: [],
  };
}

let url = process.env.SYNC_URL;
let stopServer = async (): Promise<void> => {};
if (!url) {
  const dataDir = await mkdtemp(join(tmpdir(), 'sync-client-example-'));
  const server = createCoordinatorServer({ config: { host: '127.0.0.1', port: 0, dataDir } });
  const started = await server.start();
  url = `${started.url.replace(/^http/, 'ws')}/ws`;
  stopServer = async () => {
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  };
}

const databaseId = `example:${Date.now()}`;
const [a, b, c] = [device(), device(), device()];
const clientA = await SyncClient.connect({ url, databaseId, siteId: a.siteId });
const clientB = await SyncClient.connect({ url, databaseId, siteId: b.siteId });
for (const client of [clientA, clientB]) client.on('error', (err) => console.error('server error:', err));

// B is caught up (nothing yet), so the server pushes A's writes to it live.
await clientB.getChanges();
const pushed = new Promise<ChangeSet[]>((resolve) => clientB.once('push', resolve));

const result = await clientA.apply([
  transaction(a, [{ table: 'notes', pk: [1], column: 'title', value: 'hello' }]),
  transaction(a, [
    { table: 'notes', pk: [2], column: 'title', value: 'a blob and a bigint' },
    { table: 'notes', pk: [2], column: 'body', value: { __bin: 'AQID/w==' } },
    { table: 'notes', pk: [2], column: 'views', value: { __bigint: '9007199254740993' } },
  ]),
]);
console.log(`A applied ${result.applied} changes in ${result.transactions} transactions`);

const push = await pushed;
console.log(`B got a push of ${push.length} change sets, stamped ${push.map((set) => set.hlc).join(', ')}`);

// A never gets its own writes back (docs/protocol.md §5).
const own = await clientA.getChanges();
console.log(`A reads back ${own.changeSets.length} change sets of its own`);

// C joins later, pages through everything and keeps the cursor for next time.
const clientC = await SyncClient.connect({ url, databaseId, siteId: c.siteId });
const { changeSets, cursor } = await clientC.catchUp();
console.log(`C caught up with ${changeSets.length} change sets; its cursor is ${cursor}`);

const chunks = await clientC.snapshot();
console.log(`C's snapshot: ${chunks.map((chunk) => chunk.type).join(', ')}`);

await Promise.all([clientA.close(), clientB.close(), clientC.close()]);
await stopServer();
