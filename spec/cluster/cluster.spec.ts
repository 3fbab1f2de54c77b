import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { Random } from '../helpers/random.js';
import { eventually } from '../helpers/coordinator-process.js';
import type { ChangeSet, SnapshotChunk } from '../../lib/protocol/messages.js';

const DB = 'acme:clustered';

/** A database's state as a node's snapshot shows it (snapshot ids aside). */
async function state(node: TestServer, db = DB): Promise<unknown[]> {
  const res = await fetch(`${node.baseUrl}/${db}/snapshot`, { headers: { 'x-site-id': new TestSite().wire } });
  expect(res.status).to.equal(200);
  return (await res.text()).trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk).map((c) => (c.type === 'header' || c.type === 'footer' ? { ...c, snapshotId: '' } : c));
}

async function page(node: TestServer, cursor: string | undefined, db = DB): Promise<{ changes: ChangeSet[]; hasMore: boolean }> {
  const url = `${node.baseUrl}/${db}/changes${cursor ? `?sinceHLC=${encodeURIComponent(cursor)}` : ''}`;
  return ((await (await fetch(url, { headers: { 'x-site-id': new TestSite().wire } })).json()) as { data: { changes: ChangeSet[]; hasMore: boolean } }).data;
}

describe('cluster (three nodes on one Redis)', function () {
  this.timeout(60_000);
  let redis: RedisTestServer;
  let nodes: TestServer[];
  const sockets: RawSocket[] = [];

  beforeEach(async () => {
    redis = await startRedisServer();
    nodes = [];
    for (let i = 0; i < 3; i++) nodes.push(await startTestServer({ redis: redis.url, nodeId: `node-${i}`, batchSize: 50 }));
  });
  afterEach(async () => {
    await Promise.all(sockets.splice(0).map((s) => s.close(true)));
    await Promise.all(nodes.map((n) => n.close()));
    await redis.close();
  });

  async function connect(node: TestServer, site: TestSite, db = DB): Promise<RawSocket> {
    const { socket, reply } = await RawSocket.handshake(node.wsUrl, db, site.wire);
    expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
    sockets.push(socket);
    return socket;
  }

  it('gives a database one server site id on every node', async () => {
    const acks = await Promise.all(nodes.map(async (node) => {
      const { socket, reply } = await RawSocket.handshake(node.wsUrl, DB, new TestSite().wire);
      sockets.push(socket);
      return (reply as unknown as { serverSiteId: string }).serverSiteId;
    }));
    expect(new Set(acks).size).to.equal(1);
  });

  it('converges every node to the same state, and pushes every write to the sockets of every node', async () => {
    const r = new Random(7);
    const writers = [new TestSite(), new TestSite(), new TestSite()];
    const readers = await Promise.all(nodes.map((node) => connect(node, new TestSite())));
    const pushed = readers.map(() => new Set<string>());
    readers.forEach((socket, i) => {
      void (async () => {
        for (;;) {
          const m = await socket.next(60_000).catch(() => ({ type: '#closed' }));
          if (m.type === '#closed') return;
          if (m.type === 'push_changes') for (const set of (m as unknown as { changeSets: ChangeSet[] }).changeSets) pushed[i]!.add(set.transactionId);
        }
      })();
    });
    const sent: string[] = [];
    const sockets_ = await Promise.all(writers.map((site, i) => connect(nodes[i]!, site)));
    await Promise.all(writers.map(async (site, w) => {
      for (let i = 0; i < 40; i++) {
        const changes = r.next() < 0.1 ? [{ pk: [r.int(30)], delete: true }] : [{ pk: [r.int(30)], column: r.pick(['a', 'b']), value: `${w}:${i}` }];
        const set = site.txn(changes);
        const reply = await sockets_[w]!.request({ type: 'apply_changes', requestId: `${w}-${i}`, changes: [set] }, ['apply_result', 'error']);
        expect(reply.type, JSON.stringify(reply)).to.equal('apply_result');
        sent.push(set.transactionId);
      }
    }));
    // Each node applies the log on its own time: an acknowledgement says only that the accepting node has it.
    const same = async (): Promise<boolean> => {
      const states = await Promise.all(nodes.map((n) => state(n)));
      return JSON.stringify(states[1]) === JSON.stringify(states[0]) && JSON.stringify(states[2]) === JSON.stringify(states[0]);
    };
    expect(await eventually(same, 200, 50), 'every node converges to the same snapshot').to.equal(true);
    // Every reader got every write that changed something, whichever node took it.
    const expected = new Set((await collect(nodes[0]!)).map((s) => s.transactionId));
    expect(await eventually(() => pushed.every((set) => [...expected].every((id) => set.has(id))), 100, 50)).to.equal(true);
    expect(expected.size).to.be.greaterThan(0);
  });

  it('hands out cursors that mean the same on every node: paging across nodes returns every change once', async () => {
    const site = new TestSite();
    const socket = await connect(nodes[0]!, site);
    for (let i = 0; i < 12; i++) {
      const sets = Array.from({ length: 20 }, (_, k) => site.txn([{ pk: [i * 20 + k], value: i }]));
      expect((await socket.request({ type: 'apply_changes', requestId: String(i), changes: sets }, ['apply_result', 'error'])).type).to.equal('apply_result');
    }
    await eventually(async () => (await Promise.all(nodes.map((n) => state(n)))).every((s, _, all) => JSON.stringify(s) === JSON.stringify(all[0])), 100, 50);
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let i = 0; ; i++) {
      const { changes, hasMore } = await page(nodes[i % 3]!, cursor);
      seen.push(...changes.map((c) => c.transactionId));
      if (changes.length > 0) cursor = changes.at(-1)!.hlc;
      if (!hasMore) break;
    }
    expect(seen).to.have.length(240);
    expect(new Set(seen).size).to.equal(240);
    expect(seen).to.deep.equal((await collect(nodes[2]!)).map((s) => s.transactionId));
  });

  it('refuses writes with STORAGE_UNAVAILABLE while Redis is down, storing nothing, and takes them again after', async () => {
    const site = new TestSite();
    const socket = await connect(nodes[1]!, site);
    expect((await socket.request({ type: 'apply_changes', requestId: 'a', changes: [site.txn([{ pk: [1], value: 'before' }])] }, ['apply_result', 'error'])).type).to.equal('apply_result');
    const before = await state(nodes[1]!);
    await redis.stop();
    const refused = await socket.request({ type: 'apply_changes', requestId: 'b', changes: [site.txn([{ pk: [2], value: 'during' }])] }, ['apply_result', 'error']) as { type: string; code?: string };
    expect(refused).to.include({ type: 'error', code: 'STORAGE_UNAVAILABLE' });
    // Reads of what is applied go on.
    expect(await state(nodes[1]!)).to.deep.equal(before);
    await redis.restart();
    const again = await eventually(async () => {
      const reply = await socket.request({ type: 'apply_changes', requestId: 'c', changes: [site.txn([{ pk: [3], value: 'after' }])] }, ['apply_result', 'error']);
      return reply.type === 'apply_result';
    }, 40, 250);
    expect(again).to.equal(true);
    expect(await eventually(async () => JSON.stringify(await state(nodes[0]!)) === JSON.stringify(await state(nodes[1]!)), 100, 50)).to.equal(true);
  });
});

/** Every change set of the database, paged from the start on one node. */
async function collect(node: TestServer): Promise<ChangeSet[]> {
  const out: ChangeSet[] = [];
  for (let cursor: string | undefined; ;) {
    const { changes, hasMore } = await page(node, cursor);
    out.push(...changes);
    if (changes.length > 0) cursor = changes.at(-1)!.hlc;
    if (!hasMore) return out;
  }
}
