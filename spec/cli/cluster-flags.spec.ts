import { expect } from 'chai';
import { Redis } from 'ioredis';
import { TestSite } from '../helpers/changes.js';
import { cleanupCoordinatorProcesses, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';

/** The server site id a node hands out for `db` (the same on every node of one cluster). */
async function serverSiteId(proc: CoordinatorProcess, db: string): Promise<string> {
  const { socket, reply } = await RawSocket.handshake(proc.wsUrl, db, new TestSite().wire);
  await socket.close();
  expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
  return (reply as unknown as { serverSiteId: string }).serverSiteId;
}

describe('cli: joining a cluster (--redis-url/--node-id, SYNC_REDIS_URL/SYNC_NODE_ID)', function () {
  this.timeout(60_000);
  let redis: RedisTestServer;

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    await cleanupCoordinatorProcesses();
    await redis?.close();
  });

  it('a node started with the flags and a node started with the environment share the database, under their node ids', async () => {
    const byFlags = await startCoordinatorProcess({ args: ['--redis-url', redis.url, '--node-id', 'by-flags'] });
    const byEnv = await startCoordinatorProcess({ env: { SYNC_REDIS_URL: redis.url, SYNC_NODE_ID: 'by-env' } });
    const db = 'cli:joined';
    expect(await serverSiteId(byFlags, db), 'one server site id for the database on both nodes').to.equal(await serverSiteId(byEnv, db));
    const site = new TestSite();
    const res = await byFlags.post(`/${db}/changes`, JSON.stringify({ changes: [site.txn([{ pk: [1], value: 'through by-flags' }])] }), { 'x-site-id': site.wire });
    expect(res.status, res.body).to.equal(200);
    const reader = new TestSite().wire;
    let seen = '';
    for (let i = 0; i < 100 && !seen.includes('through by-flags'); i++) {
      seen = (await byEnv.get(`/${db}/changes`, { 'x-site-id': reader })).body;
      if (!seen.includes('through by-flags')) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(seen, 'a write through one node is read on the other').to.include('through by-flags');
    const client = new Redis(redis.url, { lazyConnect: true });
    try {
      await client.connect();
      const names = String(await client.client('LIST')).split('\n').map((line) => /\bname=(\S*)/.exec(line)?.[1]).filter(Boolean);
      expect(names).to.include.members(['sync-coordinator:by-flags:cmd', 'sync-coordinator:by-env:cmd']);
    } finally {
      client.disconnect();
    }
  });
});
