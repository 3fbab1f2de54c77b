import { expect } from 'chai';
import { Random } from '../helpers/random.js';
import { TestSite } from '../helpers/changes.js';
import { eventually } from '../helpers/coordinator-process.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { TestCluster, changesPage, converged, nodeState } from '../helpers/cluster-acceptance.js';
import { Tally, httpWriter, idsIn, wsWriter } from '../helpers/s3-acceptance.js';
import {
  ReferenceClient, countRows, expectedState, readServerState, settle,
  type ReferenceClientOptions, type RowWrite,
} from '../helpers/reference-client.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import type { WireSqlValue } from '../../lib/protocol/values.js';

/**
 * The cluster issue's acceptance, with real processes: three coordinator
 * nodes (the CLI with --redis-url and --node-id) on one real redis-server
 * (AOF everysec), clients spread over them. Clients are ReferenceClients
 * (they do exactly what docs/protocol.md §8 says real clients do) whose
 * every connection goes where a load balancer would send it, and raw
 * writers that record which writes were acknowledged. What is checked is
 * what users would notice: every node ends with the same data, every
 * client with every change, and nothing acknowledged is ever lost.
 *
 * CLUSTER_ACCEPTANCE_DEBUG=sync-coordinator:cluster,... passes DEBUG to the
 * nodes; a failing test prints their stderr. CLUSTER_FIGURES=1 prints what
 * the kill and outage runs did (writes acknowledged and refused).
 */

const DEBUG = process.env.CLUSTER_ACCEPTANCE_DEBUG;
const figures = (line: string): void => {
  if (process.env.CLUSTER_FIGURES) process.stderr.write(`      ${line}\n`);
};
const NODES = 3;
/** Small pages, so paging crosses nodes many times. */
const BATCH_SIZE = 50;
/** Reconnect backoff base of the clients: the real 1 s, scaled down (the cap follows at 60 × base). */
const BACKOFF_MS = 20;
/** How long everything must have been silent before a scenario stops waiting. */
const QUIET_MS = 1500;
const UNLIMITED = { messagesPerSecond: 0, messagesPerSecondPerIp: 0 };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
const fmt = (n: number): string => n.toLocaleString('en-US');

/** Row `i` of the 2,500-transaction scenarios: one transaction, one row, three columns. */
function smallRow(i: number, tag: string): RowWrite {
  return { pk: [i], values: { s: `${tag}-${i}`, i, r: i + 0.5 } };
}

/** Commits `transactions`, waiting for acks before a pending push would pass a full batch (as real-client.spec.ts does, §8). */
async function commitPaced(client: ReferenceClient, transactions: RowWrite[][], maxChanges = 900): Promise<void> {
  let pending = 0;
  for (const rows of transactions) {
    const size = rows.reduce((n, r) => n + Object.keys(r.values).length, 0);
    if (pending + size > maxChanges) {
      await client.whenPushed();
      pending = 0;
    }
    client.write(rows);
    pending += size;
  }
  await client.whenPushed();
}

/** Waits out the debounce of commits made offline, so the connect is what pushes them. */
async function debounceLapsed(client: ReferenceClient): Promise<void> {
  while (client.pushScheduled) await sleep(5);
}

function describeClient(name: string, client: ReferenceClient): string {
  return `${name}: ${client.connections} connection(s), closes [${client.closeCodes.join(',')}], errors ${client.errorSummary()}, ` +
    `pages with hasMore ${client.pagesWithMore}, dropped while a snapshot landed ${client.droppedWhileLanding}`;
}

describe('acceptance: a cluster of three node processes on one redis-server', function () {
  this.timeout(120_000);
  let redis: RedisTestServer;
  let cluster: TestCluster;
  const clients: ReferenceClient[] = [];

  before(async () => {
    redis = await startRedisServer();
    cluster = await TestCluster.start(redis, {
      nodes: NODES, router: UNLIMITED, args: ['--batch-size', String(BATCH_SIZE)], env: DEBUG ? { DEBUG } : {},
    });
  });
  afterEach(async function () {
    await Promise.all(clients.splice(0).map((c) => c.stop()));
    if (this.currentTest?.state === 'failed') process.stderr.write(`${cluster.stderr()}\n`);
    // A test that failed half-way leaves the next one a whole cluster.
    if (!redis.running()) await redis.restart();
    for (let i = 0; i < NODES; i++) if (!cluster.alive(i)) await cluster.restart(i);
  });
  after(async () => {
    await cluster?.close();
    await redis?.close();
  });

  /**
   * A ReferenceClient behind a load balancer: each connection goes to
   * `route()` (a node index; by default node `home`, or the next live node
   * while it is down). `nodesUsed` lists the node of every connect.
   */
  function client(databaseId: string, home: number, extra: Partial<ReferenceClientOptions> & { route?: () => number } = {}): ReferenceClient & { nodesUsed: number[] } {
    const nodesUsed: number[] = [];
    const { route, ...options } = extra;
    const pick = route ?? (() => liveNode(home));
    const c = new ReferenceClient({
      databaseId, reconnectDelayMs: BACKOFF_MS, ...options,
      url: () => {
        const i = pick();
        nodesUsed.push(i);
        return cluster.proc(i).wsUrl;
      },
    });
    clients.push(c);
    return Object.assign(c, { nodesUsed });
  }

  /** `home` if its process runs, else the next node whose process runs. */
  function liveNode(home: number): number {
    for (let k = 0; k < NODES; k++) if (cluster.alive((home + k) % NODES)) return (home + k) % NODES;
    return home;
  }

  async function started(...list: ReferenceClient[]): Promise<void> {
    for (const c of list) c.start();
    await Promise.all(list.map((c) => c.whenReady()));
  }

  it('converges every node to identical snapshots of 5 databases, and every client spread over the nodes ends with every change', async () => {
    const DBS = range(5).map((d) => `conv:db-${d}`);
    const rng = new Random(11);
    const COLUMNS = ['a', 'b', 'c'];
    const value = (): WireSqlValue => (rng.int(3) === 0 ? rng.int(1000) : `v${rng.int(100_000)}`);
    // Per database 3 clients, client j on node (d + j) % 3: every node serves every database.
    const groups = DBS.map((db, d) => range(3).map((j) => client(db, (d + j) % NODES)));
    await started(...groups.flat());
    await Promise.all(groups.flat().map(async (c, k) => {
      for (let t = 0; t < 30; t++) {
        // A shared key space of 15 rows per database: concurrent overwrites and deletes across nodes.
        c.commit(range(1 + rng.int(3)).map(() => {
          const pk = [rng.int(15)];
          if (rng.int(8) === 0) return { pk, delete: true as const };
          return { pk, values: Object.fromEntries(COLUMNS.filter(() => rng.int(2) === 0).concat('a').map((col) => [col, value()])) };
        }));
        // Past the debounce now and then, so pushes interleave with other clients' writes.
        await sleep(k % 2 === 0 ? 20 + rng.int(60) : 5);
      }
    }));
    // No whenPushed(): a commit that a remote delete erased before its push is never sent (nothing of it is left,
    // as with a real client), so "every commit acknowledged" need not come; the states below are what counts.

    for (const [d, db] of DBS.entries()) {
      const list = groups[d]!;
      const expected = expectedState(list);
      expect(expected.isEmpty(), 'precondition: the clients wrote something').to.equal(false);
      const done = await settle(list, () => list.every((c) => c.model.sameAs(expected)), { quietMs: QUIET_MS });
      const state = await converged(cluster.procs, db);
      // More than a header and a footer. Deleted rows stay deleted (allowResurrection is off), so in some
      // interleavings every row of a database ends deleted: the snapshot is then its tombstones alone.
      expect(state.length, `${db}: a non-empty snapshot`).to.be.greaterThan(2);
      for (const proc of cluster.procs) {
        const server = (await readServerState(proc.baseUrl, db)).model;
        expect(server.sameAs(expected), `${db} on ${proc.baseUrl} holds the merge of every commit: ${JSON.stringify(server.diff(expected))}`).to.equal(true);
      }
      list.forEach((c, j) => {
        expect(c.model.sameAs(expected), `${db}: client ${j} (node ${c.nodesUsed.join(',')}) has every change: ${JSON.stringify(c.model.diff(expected))}; ${describeClient('client', c)}`).to.equal(true);
        expect(c.connections, 'no client had to reconnect').to.equal(1);
      });
      expect(done).to.equal(true);
    }
  });

  it('pages get_changes with one cursor across node 1, node 2 and node 3: every change exactly once', async () => {
    const db = 'cursors:db';
    const rng = new Random(23);
    const writers = range(NODES).map(() => new TestSite());
    const all: ChangeSet[] = [];
    /** POSTs `count` transactions of 1-4 changes through node `i`, in messages of 1-5 transactions. */
    async function write(i: number, count: number, tag: string): Promise<ChangeSet[]> {
      const sent: ChangeSet[] = [];
      while (sent.length < count) {
        // Each transaction its own rows: the feed holds live facts only, and an overwritten transaction would leave it.
        const sets = range(Math.min(1 + rng.int(5), count - sent.length)).map((m) => {
          const n = sent.length + m;
          return writers[i]!.txn(range(1 + rng.int(4)).map((k) => ({ pk: [`${tag}-${i}-${n}`, k], column: 'v', value: `${tag}:${n}:${k}` })));
        });
        const res = await cluster.proc(i).post(`/${db}/changes`, JSON.stringify({ changes: sets }), { 'x-site-id': writers[i]!.wire });
        expect(res.status, res.body.slice(0, 300)).to.equal(200);
        sent.push(...sets);
      }
      return sent;
    }
    for (const batch of await Promise.all(range(NODES).map((i) => write(i, 100, 'first')))) all.push(...batch);
    await converged(cluster.procs, db);

    const reader = new TestSite().wire;
    const oneNode: ChangeSet[] = [];
    for (let cursor: string | undefined; ;) {
      const { changes, hasMore } = await changesPage(cluster.proc(0), db, cursor, reader);
      oneNode.push(...changes);
      if (!hasMore) break;
      cursor = changes.at(-1)!.hlc;
    }
    const seen: ChangeSet[] = [];
    const servedBy: number[] = [];
    let cursor: string | undefined;
    for (let page = 0; ; page++) {
      const node = page % NODES;
      const { changes, hasMore } = await changesPage(cluster.proc(node), db, cursor, reader);
      seen.push(...changes);
      servedBy.push(node);
      if (!hasMore) break;
      expect(changes.length, 'a page with more behind it is not empty').to.be.greaterThan(0);
      cursor = changes.at(-1)!.hlc;
    }
    expect(servedBy.length, `enough pages that every node serves several (batch size ${BATCH_SIZE})`).to.be.at.least(3 * NODES);
    const ids = seen.map((s) => s.transactionId);
    expect(new Set(ids).size, 'no change twice').to.equal(ids.length);
    expect(new Set(ids), 'every change').to.deep.equal(new Set(all.map((s) => s.transactionId)));
    expect(seen, 'the same change sets, stamps and order as paging one node').to.deep.equal(oneNode);

    // A client's cursor from node 1 means the same on the others: after it, exactly what came later.
    const end = seen.at(-1)!.hlc;
    const later = await write(2, 40, 'later');
    await converged(cluster.procs, db);
    for (const node of [1, 0]) {
      const after: ChangeSet[] = [];
      for (let at: string | undefined = end; ;) {
        const { changes, hasMore } = await changesPage(cluster.proc(node), db, at, reader);
        after.push(...changes);
        if (!hasMore) break;
        at = changes.at(-1)!.hlc;
      }
      expect(after.map((s) => s.transactionId), `node ${node + 1} after the cursor`).to.deep.equal(later.map((s) => s.transactionId));
    }
  });

  it('survives kill -9 of a node under continuous writes, 5 rounds: nothing acknowledged is lost, its clients go on through another node', async function () {
    this.timeout(180_000);
    const db = 'kill:db';
    const tally = new Tally();
    let stopping = false;
    const until = (): boolean => stopping;
    /** Raw writers on node i (one WebSocket, one HTTP), recording every acknowledged id; they end when the node dies. */
    const writersOn = (i: number, round: number): Promise<void>[] => [
      wsWriter(cluster.proc(i), db, `r${round}-n${i}-ws`, tally, { window: 2, paceMs: 10, until }),
      httpWriter(cluster.proc(i), db, `r${round}-n${i}-http`, tally, { paceMs: 20, until }),
    ];
    const running: Promise<void>[] = range(NODES).flatMap((i) => writersOn(i, 0));
    // A device per node that keeps committing its own rows, and goes on through another node while its own is down.
    const devices = range(NODES).map((i) => client(db, i));
    await started(...devices);
    const devicePks: WireSqlValue[][] = [];
    const deviceLoops = devices.map(async (c, i) => {
      for (let n = 0; !stopping; n++) {
        c.write({ pk: [`dev${i}-${n}`], values: { s: `dev${i}-${n}` } });
        devicePks.push([`dev${i}-${n}`]);
        // Slower than the push debounce (~50 ms), so pushes go out while it writes (§8).
        await sleep(120);
      }
    });

    const victims: number[] = [];
    for (let round = 1; round <= 5; round++) {
      await sleep(1500);
      const victim = (round - 1) % NODES;
      victims.push(victim);
      const connectsBefore = devices[victim]!.nodesUsed.length;
      expect(await cluster.kill(victim), `round ${round}: kill -9 of node ${victim + 1}`).to.deep.equal({ code: null, signal: 'SIGKILL' });
      // While it is down, its device reconnects to another node and its writes are acknowledged there.
      const moved = await eventually(() => devices[victim]!.ready && devices[victim]!.nodesUsed.length > connectsBefore, 600, 25);
      expect(moved, `round ${round}: the device of node ${victim + 1} reconnected (${describeClient('device', devices[victim]!)})`).to.equal(true);
      expect(devices[victim]!.nodesUsed.at(-1), `round ${round}: to another node`).to.not.equal(victim);
      await sleep(500);
      await cluster.restart(victim);
      running.push(...writersOn(victim, round));
    }
    await sleep(1500);
    stopping = true;
    await Promise.all([...running, ...deviceLoops]);
    await Promise.all(devices.map((c) => c.whenPushed()));

    const state = await converged(cluster.procs, db);
    const stored = idsIn(state);
    const lost = [...tally.acked].filter((id) => !stored.has(id));
    figures(`kill -9 ×5: ${fmt(tally.acked.size)} raw writes acknowledged, ${tally.refused.size} refused, ${fmt(devicePks.length)} device rows; ` +
      `device nodes ${devices.map((c) => c.nodesUsed.map((n) => n + 1).join('>')).join(' | ')}`);
    expect(tally.acked.size, 'precondition: writes were acknowledged in every round').to.be.greaterThan(200);
    expect(lost, `acknowledged writes missing after 5 kills (of ${fmt(tally.acked.size)})`).to.deep.equal([]);
    expect(tally.refused.size, `refusals: ${JSON.stringify(tally.codes())}`).to.equal(0);
    const server = (await readServerState(cluster.proc(0).baseUrl, db)).model;
    expect(countRows(server, devicePks), "every device's rows").to.equal(devicePks.length);
    const done = await settle(devices, () => devices.every((c) => c.model.sameAs(server)), { quietMs: QUIET_MS });
    devices.forEach((c, i) => {
      expect(c.model.sameAs(server), `device ${i} (nodes ${c.nodesUsed.join(',')}) has every change: ${JSON.stringify(c.model.diff(server))}; ${describeClient('device', c)}`).to.equal(true);
    });
    expect(done).to.equal(true);
    expect(cluster.nodes.map((n) => n.runs), 'each node was killed and restarted').to.deep.equal([3, 3, 2]);
    expect(victims).to.deep.equal([0, 1, 2, 0, 1]);
  });

  it('refuses writes with STORAGE_UNAVAILABLE (HTTP 503) while Redis is down for 30 s under load, serves reads, loses nothing acknowledged, and takes writes again after', async function () {
    this.timeout(180_000);
    const OUTAGE_MS = 30_000;
    const db = 'outage:db';
    const tally = new Tally();
    let stopping = false;
    const until = (): boolean => stopping;
    const writers = range(NODES).flatMap((i) => [
      wsWriter(cluster.proc(i), db, `n${i}-ws`, tally, { window: 2, paceMs: 20, until }),
      httpWriter(cluster.proc(i), db, `n${i}-http`, tally, { paceMs: 20, until }),
    ]);
    const device = client(db, 0);
    const reader = client(db, 1);
    await started(device, reader);
    device.write({ pk: ['before'], values: { s: 'before' } });
    await device.whenPushed();
    await sleep(2000);
    expect(tally.refused.size, 'precondition: writes are taken while Redis is up').to.equal(0);

    await redis.stop();
    const outageStart = Date.now();
    const ackedBy = (tag: string): string[] => [...tally.acked].filter((id) => id.startsWith(`${tag}/`));
    const ackedByNode = (i: number): string[] => [...ackedBy(`n${i}-ws`), ...ackedBy(`n${i}-http`)];
    const ackedAtStop = range(NODES).map(ackedByNode);
    const tags = range(NODES).flatMap((i) => [`n${i}-ws`, `n${i}-http`]);
    const ackedAtStopByTag = tags.map((tag) => ackedBy(tag).length);
    await sleep(3000);
    // Reads go on: each node serves what it had applied, which holds every write it acknowledged.
    const during = await Promise.all(cluster.procs.map((p) => nodeState(p, db)));
    during.forEach((state, i) => {
      const stored = idsIn(state);
      expect(ackedAtStop[i]!.filter((id) => !stored.has(id)), `node ${i + 1}: acknowledged writes readable during the outage`).to.deep.equal([]);
    });
    for (const proc of cluster.procs) expect((await changesPage(proc, db, undefined, new TestSite().wire)).changes.length).to.be.greaterThan(0);
    // A device that connects now bootstraps from what node 3 holds.
    const late = client(db, 2);
    await started(late);
    expect(await settle([late], async () => late.model.sameAs((await readServerState(cluster.proc(2).baseUrl, db)).model), { quietMs: QUIET_MS }), 'a device connecting during the outage gets what node 3 holds').to.equal(true);
    // A device's commit is refused: the app sees the transient code, the socket stays open.
    device.write({ pk: ['during'], values: { s: 'during' } });
    expect(await eventually(() => device.errors.some((e) => e.code === 'STORAGE_UNAVAILABLE'), 200, 50), `the device was told (${describeClient('device', device)})`).to.equal(true);
    const refusal = device.errors.find((e) => e.code === 'STORAGE_UNAVAILABLE')!;
    expect(refusal.fatal, 'not fatal: the device keeps its writes and syncs on').to.equal(false);
    expect(device.connections, 'the device kept its connection').to.equal(1);
    expect(device.allOwnAcked).to.equal(false);
    // A database no node has open cannot be opened without Redis (its server site id and log live there):
    // its device is refused with the transient code and a close it reconnects after (1013, try again later).
    const cold = client('outage:cold', 0);
    cold.start();
    expect(await eventually(() => cold.closeCodes.length >= 2, 400, 50), `the cold device was refused and tried again (${describeClient('cold', cold)})`).to.equal(true);
    expect(cold.errors.map((e) => `${e.code}/${String(e.fatal)}`)).to.include('STORAGE_UNAVAILABLE/false');
    expect([...new Set(cold.closeCodes)]).to.deep.equal([1013]);
    expect(cold.stoppedByServer, 'the cold device keeps trying').to.equal(false);

    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - outageStart)));
    const codes = tally.codes();
    expect(Object.keys(codes).sort(), `refusals during the outage: ${JSON.stringify(codes)}`).to.deep.equal(['STORAGE_UNAVAILABLE', 'STORAGE_UNAVAILABLE@503']);
    // Nothing is applied without Redis: every node still shows what it showed at the start of the outage.
    const end = await Promise.all(cluster.procs.map((p) => nodeState(p, db)));
    end.forEach((state, i) => expect(state, `node ${i + 1} unchanged during the outage`).to.deep.equal(during[i]));
    const refusedDuring = tally.refused.size;

    await redis.restart();
    const ackedAtRestart = tally.acked.size;
    // Every writer, on the very WebSocket or HTTP client it used all along, is acknowledged again on every node.
    const resumed = await eventually(() => tags.every((tag, k) => ackedBy(tag).length > ackedAtStopByTag[k]!), 600, 50);
    expect(resumed, `every writer is acknowledged again (${tags.map((tag, k) => `${tag} ${ackedAtStopByTag[k]}>${ackedBy(tag).length}`).join(', ')})`).to.equal(true);
    await cold.whenReady();
    // The device's refused commit reaches the cluster without another commit of the device (which does not
    // retry, §8): its node pulls it back with request_changes once Redis is up.
    const pulled = await eventually(async () => countRows((await readServerState(cluster.proc(2).baseUrl, db)).model, [['during']]) === 1, 400, 100);
    expect(pulled, `the refused write was pulled from the device (${describeClient('device', device)})`).to.equal(true);
    expect(device.ownChangeSets.length, 'the device committed nothing more').to.equal(2);
    device.write({ pk: ['after'], values: { s: 'after' } });
    await device.whenPushed();
    await sleep(2000);
    stopping = true;
    await Promise.all(writers);
    expect(tally.acked.size, 'writes acknowledged after the restart').to.be.greaterThan(ackedAtRestart);
    expect(refusedDuring, 'writes refused during the outage').to.be.greaterThan(0);

    const state = await converged(cluster.procs, db);
    const stored = idsIn(state);
    figures(`Redis down 30 s: ${fmt(tally.acked.size)} raw writes acknowledged (${fmt(ackedAtRestart)} before the restart), refusals ${JSON.stringify(tally.codes())}, ` +
      `${[...tally.refused.keys()].filter((id) => stored.has(id)).length} refused writes stored anyway; device errors ${device.errorSummary()}`);
    expect([...tally.acked].filter((id) => !stored.has(id)), `acknowledged writes missing (of ${fmt(tally.acked.size)})`).to.deep.equal([]);
    const server = (await readServerState(cluster.proc(0).baseUrl, db)).model;
    expect(countRows(server, [['before'], ['during'], ['after']]), "the device's three rows").to.equal(3);
    const all = [device, reader, late];
    expect(await settle(all, () => all.every((c) => c.model.sameAs(server)), { quietMs: QUIET_MS }), 'every device has everything').to.equal(true);
  });

  // Mocha runs these after the tests above: on a cluster that has been through five kills and an outage.
  describe('real clients spread over the nodes (the scenarios of real-client.spec.ts)', () => {
    it('a write, an update and a delete through node 1 reach a client on node 2 and every node', async () => {
      const db = 'rc:basic';
      const a = client(db, 0);
      const b = client(db, 1);
      await started(a, b);
      a.write([smallRow(1, 'one'), smallRow(2, 'two')]);
      a.write({ pk: [1], values: { s: 'changed' } });
      a.delete({ pk: [2] });
      await a.whenPushed();
      expect(await settle([a, b], () => b.model.sameAs(a.model))).to.equal(true);
      await converged(cluster.procs, db);
      for (const proc of cluster.procs) expect((await readServerState(proc.baseUrl, db)).model.sameAs(a.model)).to.equal(true);
      expect(b.model.cell('main', 'items', [1], 's')!.value).to.equal('changed');
      expect(b.model.isDeleted('main', 'items', [2])).to.equal(true);
    });

    it('a device away while 2,500 transactions are written through node 1 reconnects to node 3 and gets them all', async () => {
      const db = 'rc:away';
      const a = client(db, 0);
      let bNode = 1;
      const b = client(db, 1, { route: () => bNode });
      await started(a, b);
      // B's replica is not empty, so its reconnect catches up with get_changes rather than a snapshot (§8).
      a.write({ pk: ['seed'], values: { s: 'seed' } });
      await a.whenPushed();
      expect(await settle([a, b], () => b.model.rows.size > 0, { quietMs: 2000 }), 'the seed row reached B').to.equal(true);
      b.goOffline();
      const pks = range(2500, 1).map((i) => [i]);
      await commitPaced(a, pks.map(([i]) => [smallRow(i!, 'away')]));
      bNode = 2;
      b.goOnline();
      const server = (await readServerState(cluster.proc(0).baseUrl, db)).model;
      expect(countRows(server, pks), 'precondition: node 1 has every transaction').to.equal(2500);
      const done = await settle([a, b], () => b.model.sameAs(server), { quietMs: QUIET_MS });
      const has = countRows(b.model, pks);
      expect(b.nodesUsed, 'B connected to node 2, then node 3').to.deep.equal([1, 2]);
      expect(has, `B has ${fmt(has)} of 2,500 transactions after its reconnect to node 3 (${describeClient('B', b)})`).to.equal(2500);
      expect(done, 'B equals the server').to.equal(true);
      expect(await converged(cluster.procs, db)).to.deep.equal(await nodeState(cluster.proc(0), db));
    });

    it('a device that wrote 2,500 transactions offline pushes them all through node 2, and a device on node 3 gets them all', async () => {
      const db = 'rc:offline';
      const peer = client(db, 2);
      await started(peer);
      const a = client(db, 1, { offline: true });
      a.start();
      const pks = range(2500, 1).map((i) => [i]);
      for (const [i] of pks) a.write(smallRow(i!, 'offline'));
      await debounceLapsed(a);
      a.goOnline();
      const done = await settle([a, peer], async () => {
        if (!peer.model.sameAs(a.model)) return false;
        return (await readServerState(cluster.proc(1).baseUrl, db)).model.sameAs(a.model);
      }, { quietMs: QUIET_MS, pollMs: 200 });
      const onPeer = countRows(peer.model, pks);
      expect(a.connections, 'one connect').to.equal(1);
      expect(a.nodesUsed).to.deep.equal([1]);
      expect(onPeer, `the device on node 3 has ${fmt(onPeer)} of 2,500 offline transactions (${describeClient('writer', a)})`).to.equal(2500);
      expect(done).to.equal(true);
      await converged(cluster.procs, db);
      for (const proc of cluster.procs) {
        const onNode = countRows((await readServerState(proc.baseUrl, db)).model, pks);
        expect(onNode, `${proc.baseUrl} has ${fmt(onNode)} of 2,500`).to.equal(2500);
      }
    });

    it('a snapshot bootstrap cut on node 1 resumes on node 2 with its own site id and ends equal to the server', async () => {
      const db = 'rc:resume';
      const w = client(db, 2);
      await started(w);
      // Two tables, 3,000 rows, 6,000 column versions: 6+ chunks of 1,000 plus table boundaries.
      const txns: RowWrite[][] = [];
      for (let t = 0; t < 10; t++) txns.push(range(100, t * 100).map((i) => ({ table: 'alpha', pk: [i], values: { s: `a-${i}`, i } })));
      for (let t = 0; t < 20; t++) txns.push(range(100, t * 100).map((i) => ({ table: 'beta', pk: [i], values: { s: `b-${i}`, i } })));
      await commitPaced(w, txns);
      await converged(cluster.procs, db);
      const server = (await readServerState(cluster.proc(1).baseUrl, db)).model;
      expect(server.digest().cells, 'precondition').to.equal(6000);

      // First connection to node 1, every later one to node 2.
      let connects = 0;
      const f = client(db, 0, { record: true, cutSnapshotAfterChunks: 7, route: () => (connects++ === 0 ? 0 : 1) });
      f.start();
      const done = await settle([w, f], () => f.model.sameAs(server), { quietMs: QUIET_MS });
      expect(f.nodesUsed.slice(0, 2), 'cut on node 1, resumed on node 2').to.deep.equal([0, 1]);
      expect(f.sent(1).map((m) => m.type), 'the first connection asked node 1 for a snapshot').to.include('get_snapshot');
      const resume = f.sent(2).find((m) => m.type === 'resume_snapshot');
      expect(resume, `the reconnect to node 2 resumes (frames of the 2nd connection: ${f.sent(2).map((m) => m.type).join(', ')})`).to.not.equal(undefined);
      const checkpoint = resume!.checkpoint as { siteId: string; completedTables: string[] };
      expect(checkpoint.siteId, "the checkpoint carries the client's own site id").to.equal(f.siteIdWire);
      // Node 2 takes node 1's checkpoint as its own (stamps are shared): the same snapshot, without the table already landed.
      const header = (conn: number) => f.frames.find((fr) => fr.conn === conn && fr.dir === 's2c' && fr.msg.type === 'snapshot_chunk' && (fr.msg.chunk as { type: string }).type === 'header')?.msg.chunk as { snapshotId: string; tableCount: number } | undefined;
      expect(checkpoint.completedTables).to.deep.equal(['main.alpha']);
      expect(header(2)?.snapshotId, 'node 2 resumed the snapshot node 1 started').to.equal(header(1)?.snapshotId);
      expect(header(2)?.tableCount, 'node 2 sent only the table still missing').to.equal(1);
      const cells = f.model.digest().cells;
      expect(done, `the resumed client has ${fmt(cells)} of 6,000 cells; checkpoint completedTables ${JSON.stringify(checkpoint.completedTables)} (${describeClient('client', f)})`).to.equal(true);
    });
  });
});
