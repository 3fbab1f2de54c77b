import { expect } from 'chai';
import { Registry } from 'prom-client';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { eventually } from '../helpers/coordinator-process.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { openFsArchive } from '../../lib/durability/fs-archive.js';
import { RedisLog } from '../../lib/cluster/redis-log.js';
import { databaseKey, parseBatchKey } from '../../lib/durability/layout.js';
import { restoreDatabase } from '../../lib/durability/restore.js';
import { openLevelReplica } from '../../lib/replica/open-level.js';
import { join } from 'node:path';
import type { SyncRouterOptions } from '../../lib/config/options.js';
import type { SnapshotChunk } from '../../lib/protocol/messages.js';

const DB = 'acme:trimmed';

/** A database's state as a node's snapshot shows it (snapshot ids aside), or the HTTP status when it cannot. */
async function state(node: TestServer, db = DB): Promise<unknown[] | number> {
  const res = await fetch(`${node.baseUrl}/${db}/snapshot`, { headers: { 'x-site-id': new TestSite().wire } });
  if (res.status !== 200) return res.status;
  return (await res.text()).trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk).map((c) => (c.type === 'header' || c.type === 'footer' ? { ...c, snapshotId: '' } : c));
}

describe('cluster: trimmed logs and nodes that were away', function () {
  this.timeout(60_000);
  let redis: RedisTestServer;
  let log: RedisLog;
  const nodes: TestServer[] = [];
  const dirs: string[] = [];
  const sockets: RawSocket[] = [];

  beforeEach(async () => {
    redis = await startRedisServer();
    log = await RedisLog.open({ url: redis.url });
  });
  afterEach(async () => {
    await Promise.all(sockets.splice(0).map((s) => s.close(true)));
    await Promise.all(nodes.splice(0).map((n) => n.close()));
    await log.close();
    await redis.close();
    await Promise.all(dirs.splice(0).map((d) => removeTempDir(d)));
  });

  async function dir(): Promise<string> {
    const d = await makeTempDir('cluster-catch-up-');
    dirs.push(d);
    return d;
  }

  async function node(options: SyncRouterOptions): Promise<TestServer> {
    const n = await startTestServer({ redis: redis.url, clusterLogRetentionMs: 1000, ...options });
    nodes.push(n);
    return n;
  }

  async function stop(n: TestServer): Promise<void> {
    nodes.splice(nodes.indexOf(n), 1);
    await n.close();
  }

  /** Writes `count` transactions of 10 rows through `n`, each acknowledged. */
  async function write(n: TestServer, site: TestSite, from: number, count: number): Promise<void> {
    const { socket, reply } = await RawSocket.handshake(n.wsUrl, DB, site.wire);
    expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
    sockets.push(socket);
    for (let i = from; i < from + count; i++) {
      const set = site.txn(Array.from({ length: 10 }, (_, k) => ({ pk: [i * 10 + k], value: `v${i}` })));
      const answer = await socket.request({ type: 'apply_changes', requestId: String(i), changes: [set] }, ['apply_result', 'error']);
      expect(answer.type, JSON.stringify(answer)).to.equal('apply_result');
    }
    await socket.close(true);
  }

  /** Waits until the log of DB was trimmed past everything written so far (its oldest entry is newer than `since`). */
  async function trimmed(): Promise<void> {
    const info = await log.info(DB);
    const last = info.lastId!;
    expect(await eventually(async () => {
      const now = await log.info(DB);
      return now.trimmedBelow !== undefined && (now.firstId === undefined || now.firstId > last || now.length <= 1);
    }, 200, 100), 'the log was never trimmed').to.equal(true);
  }

  it('with an archive, trims only archived entries, and a node whose copy is older than the log restores from the archive and follows on', async () => {
    const archiveDir = await dir();
    const aDir = await dir();
    const bDir = await dir();
    const registry = new Registry();
    const a = await node({ nodeId: 'a', dataDir: aDir, archive: await openFsArchive(archiveDir), registry });
    const site = new TestSite();
    let b = await node({ nodeId: 'b', dataDir: bDir, archive: await openFsArchive(archiveDir) });
    await write(a, site, 0, 20);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
    // b goes away; a takes 40 more transactions, archives them, and trims them out of the log.
    await stop(b);
    await write(a, site, 20, 40);
    await trimmed();
    const metrics = await registry.metrics();
    expect(metrics).to.match(/sync_cluster_entries_trimmed_total\{node="a"\} [1-9]/);
    // b comes back on its old copy, which the log no longer continues: it restores from the archive.
    b = await node({ nodeId: 'b', dataDir: bDir, archive: await openFsArchive(archiveDir), registry: new Registry() });
    const expected = await state(a);
    expect(await state(b)).to.deep.equal(expected);
    expect(await b.sync.registry.metrics()).to.match(/sync_cluster_catch_ups_total\{from="archive",node="b"\} 1/);
    // And it follows the log from there: writes through either node reach the other.
    await write(b, site, 60, 5);
    await write(a, site, 65, 5);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
    expect(((await state(a)) as SnapshotChunk[]).filter((c) => c.type === 'header')).to.have.length(1);
  });

  it('with an archive, one node archives each database, and another takes over when it goes', async () => {
    const archiveDir = await dir();
    const archive = await openFsArchive(archiveDir);
    const a = await node({ nodeId: 'a', archive: await openFsArchive(archiveDir), clusterLogRetentionMs: 60_000 });
    const b = await node({ nodeId: 'b', archive: await openFsArchive(archiveDir), clusterLogRetentionMs: 60_000 });
    const site = new TestSite();
    // Both have it open (a first: it takes the lease), and both take writes.
    await write(a, site, 0, 10);
    await write(b, site, 10, 10);
    await write(a, site, 20, 10);
    const uploads = async (n: TestServer): Promise<number> => Number(/^sync_archive_uploads_total\{[^}]*\} (\d+)/m.exec(await n.sync.registry.metrics())?.[1] ?? 0);
    /** The archive's batches of DB: one chain without gaps. */
    const chain = async (): Promise<boolean> => {
      const batches: { after: string; last: string }[] = [];
      for await (const o of archive.list(databaseKey(DB))) {
        const b = parseBatchKey(DB, o.key);
        if (b) batches.push({ after: b.after.toString('hex'), last: b.last.toString('hex') });
      }
      batches.sort((x, y) => (x.after < y.after ? -1 : 1));
      // No gap, as a restore needs it: each batch starts at or before where the chain so far ends (a new
      // holder that had not applied all its predecessor archived re-uploads a little: an overlap, harmless).
      let end = batches[0]?.last;
      for (const b of batches.slice(1)) {
        if (b.after > end!) return false;
        if (b.last > end!) end = b.last;
      }
      return end !== undefined;
    };
    const all = async (): Promise<string | undefined> => {
      for await (const o of archive.list(databaseKey(DB))) {
        const b = parseBatchKey(DB, o.key);
        if (b && b.last.toString('hex') === (await log.archivedOf(DB))?.toString('hex')) return b.last.toString('hex');
      }
      return undefined;
    };
    expect(await eventually(async () => (await all()) !== undefined && (await uploads(a)) > 0, 200, 50)).to.equal(true);
    expect(await uploads(b)).to.equal(0);
    expect(await chain()).to.equal(true);
    // a goes: b takes the lease and archives what comes next.
    await stop(a);
    await write(b, site, 30, 10);
    // b takes the lease at its next upkeep once a's lapses (3 rounds): allow a busy machine 30 s.
    expect(await eventually(async () => (await uploads(b)) > 0, 600, 50)).to.equal(true);
    expect(await chain()).to.equal(true);
    // The archive alone restores what b serves.
    expect(await eventually(async () => {
      const target = join(await dir(), 'restored');
      const result = await restoreDatabase(archive, DB, target);
      const replica = await openLevelReplica(target);
      try {
        return result.restored && replica.committedStamp?.equals((await log.archivedOf(DB)) ?? Buffer.alloc(0)) === true &&
          (await log.info(DB)).lastId !== undefined && replica.tableStats().reduce((n, t) => n + t.count, 0) === 400;
      } finally {
        await replica.close();
      }
    }, 100, 100)).to.equal(true);
    await archive.close();
  });

  it('with an archive, a node new to the cluster after the log was trimmed serves the whole database', async () => {
    const archiveDir = await dir();
    const a = await node({ nodeId: 'a', archive: await openFsArchive(archiveDir) });
    await write(a, new TestSite(), 0, 30);
    await trimmed();
    const c = await node({ nodeId: 'c', archive: await openFsArchive(archiveDir) });
    expect(await state(c)).to.deep.equal(await state(a));
    expect(await c.sync.registry.metrics(), 'counted as a catch-up from the archive').to.match(/sync_cluster_catch_ups_total\{from="archive",node="c"\} 1/);
  });

  /** This node's /status cluster entry of DB. */
  async function following(n: TestServer): Promise<{ following: boolean } | undefined> {
    const status = await (await fetch(`${n.baseUrl}/status`)).json() as { data: { cluster: { databases: Record<string, { following: boolean }> } } };
    return status.data.cluster.databases[DB];
  }

  it('while Redis is down, serves a database it has on disk from that copy (reads, no writes), and follows its log once Redis is back', async () => {
    const aDir = await dir();
    const bDir = await dir();
    const a = await node({ nodeId: 'a', dataDir: aDir, clusterLogRetentionMs: 600_000 });
    let b = await node({ nodeId: 'b', dataDir: bDir, clusterLogRetentionMs: 600_000 });
    const site = new TestSite();
    await write(a, site, 0, 5);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
    const copy = await state(b);
    await stop(b);
    await write(a, site, 5, 5);
    await redis.stop();
    b = await node({ nodeId: 'b', dataDir: bDir, clusterLogRetentionMs: 600_000 });
    // Its own copy, as it was: readable over HTTP and WebSocket.
    expect(await state(b)).to.deep.equal(copy);
    const { socket, reply } = await RawSocket.handshake(b.wsUrl, DB, site.wire);
    sockets.push(socket);
    expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
    expect(await following(b)).to.include({ following: false });
    const refused = await socket.request({ type: 'apply_changes', requestId: 'x', changes: [site.txn([{ pk: ['during'], value: 1 }])] }, ['apply_result', 'error']);
    expect(refused).to.include({ type: 'error', code: 'STORAGE_UNAVAILABLE', fatal: false });
    expect(await b.sync.registry.metrics()).to.match(/sync_cluster_catch_ups_total\{from="local",node="b"\} 1/);
    await redis.restart();
    // It catches up with what a took meanwhile, and takes writes again.
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 200, 50), 'b caught up').to.equal(true);
    expect(await following(b)).to.include({ following: true });
    await write(b, site, 10, 2);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
  });

  it('a copy served while Redis was down that the log was trimmed past is reopened once Redis is back: its sockets close with 1013, and it restores from the archive', async () => {
    const archiveDir = await dir();
    const aDir = await dir();
    const bDir = await dir();
    const a = await node({ nodeId: 'a', dataDir: aDir, archive: await openFsArchive(archiveDir) });
    let b = await node({ nodeId: 'b', dataDir: bDir, archive: await openFsArchive(archiveDir) });
    const site = new TestSite();
    await write(a, site, 0, 10);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
    const copy = await state(b);
    await stop(b);
    await write(a, site, 10, 30);
    await trimmed();
    await redis.stop();
    b = await node({ nodeId: 'b', dataDir: bDir, archive: await openFsArchive(archiveDir) });
    expect(await state(b), 'its old copy while Redis is down').to.deep.equal(copy);
    const { socket, reply } = await RawSocket.handshake(b.wsUrl, DB, new TestSite().wire);
    sockets.push(socket);
    expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
    await redis.restart();
    expect(await socket.closed, 'closed with try again later').to.equal(1013);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 200, 50), 'b restored what a holds').to.equal(true);
    expect(await b.sync.registry.metrics()).to.match(/sync_cluster_catch_ups_total\{from="archive",node="b"\} 1/);
    await write(b, site, 40, 2);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
  });

  it('without an archive, trims by age, and a node whose copy is older than the log refuses the database with 503 instead of serving a partial copy', async () => {
    const aDir = await dir();
    const bDir = await dir();
    const a = await node({ nodeId: 'a', dataDir: aDir });
    let b = await node({ nodeId: 'b', dataDir: bDir });
    const site = new TestSite();
    await write(a, site, 0, 5);
    expect(await eventually(async () => JSON.stringify(await state(b)) === JSON.stringify(await state(a)), 100, 50)).to.equal(true);
    await stop(b);
    await write(a, site, 5, 10);
    await trimmed();
    b = await node({ nodeId: 'b', dataDir: bDir });
    expect(await state(b)).to.equal(503);
    const { socket, reply } = await RawSocket.handshake(b.wsUrl, DB, new TestSite().wire);
    sockets.push(socket);
    expect(reply).to.include({ type: 'error', code: 'STORAGE_UNAVAILABLE' });
    expect((reply as { message?: string }).message).to.match(/trimmed/);
    // The node that kept up goes on serving it.
    expect(await state(a)).to.be.an('array');
  });
});
