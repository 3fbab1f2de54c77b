import { expect } from 'chai';
import { Registry } from 'prom-client';
import { parseOptions, type SyncRouterOptions } from '../../lib/config/options.js';
import { createMetrics } from '../../lib/metrics/metrics.js';
import { AddressRateLimiter, ConnectionCounter, createLimits, TokenBucket, type RouterLimits } from '../../lib/service/limits.js';
import { RedisLog } from '../../lib/cluster/redis-log.js';
import { SharedLimits, type SharedLimitsConnection } from '../../lib/cluster/shared-limits.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { eventually, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/coordinator-process.js';

describe('shared limits: the local side (service/limits.ts)', () => {
  it('TokenBucket.charge goes into debt, down to maxDebt, and the refill pays it back first', () => {
    const bucket = new TokenBucket(10, 5, 0);
    bucket.charge(8, 0, 100);
    // 5 - 8 = -3: a token is 4 tokens (400 ms at 10/s) away.
    expect(bucket.take(0)).to.equal(400);
    expect(bucket.take(400)).to.equal(0);
    bucket.charge(1000, 400, 20);
    expect(bucket.take(400)).to.equal(2100);
  });

  it('AddressRateLimiter counts granted tokens per address once asked, and charge makes a bucket for an address it did not know', () => {
    const limiter = new AddressRateLimiter(1, 2);
    limiter.take('a', 0);
    expect(limiter.drainTaken().size, 'nothing is counted before the first drain').to.equal(0);
    limiter.take('a', 0);
    limiter.take('a', 0);
    limiter.take('a', 0); // refused: not counted
    limiter.take('b', 0);
    expect([...limiter.drainTaken()]).to.deep.equal([['a', 1], ['b', 1]]);
    expect(limiter.drainTaken().size).to.equal(0);
    limiter.charge('c', 2, 0, 10);
    expect(limiter.take('c', 0), 'the cluster took its burst').to.be.greaterThan(0);
    expect(limiter.drainTaken().size, 'charges are not this node\'s use').to.equal(0);
  });

  it('ConnectionCounter counts other nodes\' connections per address, not in its total', () => {
    const counter = new ConnectionCounter(2, 3);
    counter.opened('a');
    counter.setRemote(new Map([['a', 2], ['b', 5]]));
    expect(counter.check('a')).to.equal('address');
    expect(counter.check('b')).to.equal('address');
    expect(counter.check('c')).to.equal(undefined);
    counter.opened('c');
    expect(counter.check('d'), 'the total is this node\'s alone').to.equal('total');
    counter.setRemote(new Map());
    counter.closed('c');
    expect(counter.check('a')).to.equal(undefined);
    expect([...counter.byAddress()]).to.deep.equal([['a', 1]]);
  });
});

/** A node's limits and their SharedLimits, on a clock the test moves; synced only when the test says. */
interface Member {
  limits: RouterLimits;
  shared: SharedLimits;
  connection: SharedLimitsConnection;
  errors: Error[];
}

describe('SharedLimits (real redis-server, synced by hand)', function () {
  this.timeout(60_000);
  let redis: RedisTestServer;
  let redisLog: RedisLog;
  let clock: number;
  let members: Member[];

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    await redis.close();
  });
  beforeEach(async () => {
    if (!redis.running()) await redis.restart();
    redisLog = await RedisLog.open({ url: redis.url, nodeId: 'spec' });
    clock = 0;
    members = [];
  });
  afterEach(async () => {
    await Promise.all(members.map((m) => m.shared.close()));
    await redisLog.close();
  });

  async function member(nodeId: string, options: SyncRouterOptions = {}, maxAddresses?: number): Promise<Member> {
    const config = parseOptions({ maxConnections: 100, maxConnectionsPerIp: 4, messagesPerSecondPerIp: 100, messageBurstPerIp: 100, ...options });
    const limits = createLimits(config, createMetrics(new Registry()), () => clock);
    const connection = redisLog.connection('limits');
    // Commands fail rather than queue while a connection is not up yet.
    if (connection.redis.status !== 'ready') await new Promise((resolve) => connection.redis.once('ready', resolve));
    const errors: Error[] = [];
    const shared = new SharedLimits({
      usage: limits.usage, connection, nodeId, intervalMs: 0, now: () => clock, onError: (err) => errors.push(err), ...(maxAddresses ? { maxAddresses } : {}),
    });
    const m = { limits, shared, connection, errors };
    members.push(m);
    return m;
  }

  async function syncAll(...ms: Member[]): Promise<void> {
    for (const m of ms) expect(await m.shared.sync(), 'sync').to.equal(true);
  }

  function open(m: Member, address: string, n: number): void {
    for (let i = 0; i < n; i++) m.limits.connections.opened(address);
  }

  it('counts the other nodes\' open connections per address against maxConnectionsPerIp, and frees room when they close', async () => {
    const a = await member('a');
    const b = await member('b');
    open(a, '10.0.0.1', 3);
    open(b, '10.0.0.1', 1);
    expect(b.limits.connections.check('10.0.0.1'), 'before a sync, each node knows its own').to.equal(undefined);
    await syncAll(a, b, a);
    expect(b.limits.connections.check('10.0.0.1')).to.equal('address');
    expect(a.limits.connections.check('10.0.0.1')).to.equal('address');
    expect(b.limits.connections.check('10.0.0.2'), 'other addresses are not affected').to.equal(undefined);
    a.limits.connections.closed('10.0.0.1');
    await syncAll(a, b);
    expect(b.limits.connections.check('10.0.0.1')).to.equal(undefined);
  });

  it('forgets a node at once when it closes, and a node that vanished once its usage expires', async () => {
    const a = await member('a');
    const b = await member('b');
    const c = await member('c');
    open(a, '10.0.0.1', 2);
    open(b, '10.0.0.1', 2);
    await syncAll(a, b, c);
    expect(c.limits.connections.check('10.0.0.1')).to.equal('address');
    await a.shared.close();
    await syncAll(c);
    expect(c.limits.connections.check('10.0.0.1'), 'a closed: 2 left').to.equal(undefined);
    open(c, '10.0.0.1', 2);
    await syncAll(c);
    expect(c.limits.connections.check('10.0.0.1')).to.equal('address');
    // b's process dies: its connection drops without a word, its hash stays until it expires.
    b.connection.redis.disconnect();
    await syncAll(c);
    expect(c.limits.connections.check('10.0.0.1'), 'b still counts within its TTL').to.equal('address');
    const expired = await eventually(async () => (await c.shared.sync()) && c.limits.connections.check('10.0.0.1') === undefined, 100, 100);
    expect(expired, `b's usage expired after its TTL (${c.shared.ttlMs} ms)`).to.equal(true);
  });

  it('publishes and counts at most maxAddresses addresses, those with the most connections', async () => {
    const a = await member('a', {}, 2);
    const b = await member('b', { maxConnectionsPerIp: 1 }, 2);
    open(a, 'x1', 1);
    open(a, 'x3', 3);
    open(a, 'x2', 2);
    await syncAll(a, b);
    expect(b.limits.connections.check('x3')).to.equal('address');
    expect(b.limits.connections.check('x2')).to.equal('address');
    expect(b.limits.connections.check('x1'), 'x1 was not published').to.equal(undefined);
  });

  /** Takes tokens for `address` on `m` until one is refused (at most `max`); returns how many were granted. */
  function drain(m: Member, address: string, max = 10_000): number {
    let n = 0;
    while (n < max && m.limits.takeAddress(address, 'messages') === undefined) n++;
    return n;
  }

  /**
   * Both nodes take all they can every 100 ms of the clock for 10 s; with
   * `share`, they sync every second. Returns the tokens granted in total.
   */
  async function run(share: boolean): Promise<number> {
    clock = 0;
    const a = await member('a');
    const b = await member('b');
    let total = 0;
    for (let step = 1; step <= 100; step++) {
      clock = step * 100;
      // Alternate who goes first, as clients would.
      const [first, second] = step % 2 ? [a, b] : [b, a];
      total += drain(first, '10.0.0.9') + drain(second, '10.0.0.9');
      if (share && step % 10 === 0) await syncAll(a, b);
    }
    return total;
  }

  it('charges the other nodes\' tokens, so an address gets about the configured rate from the cluster, not from each node', async () => {
    const alone = await run(false);
    // Two separate buckets: 2 x (burst 100 + 10 s x 100/s).
    expect(alone).to.be.within(2150, 2200);
    await Promise.all(members.splice(0).map((m) => m.shared.close()));
    const shared = await run(true);
    // One cluster-wide bucket would grant 100 + 1000. On top: one burst per node at the start, and what a node
    // grants during the second before it hears of the other's use (one interval of the rate).
    expect(shared).to.be.within(1000, 1100 + 100 + 100);
  });

  it('keeps working on its own while Redis is away, counting each failed sync, and shares again once it is back', async () => {
    const a = await member('a');
    const b = await member('b');
    open(a, '10.0.0.1', 3);
    await syncAll(a, b);
    open(b, '10.0.0.1', 1);
    expect(b.limits.connections.check('10.0.0.1')).to.equal('address');
    await redis.stop();
    expect(await a.shared.sync()).to.equal(false);
    expect(await b.shared.sync()).to.equal(false);
    expect(a.errors.length).to.be.greaterThan(0);
    expect(b.errors[0]).to.be.instanceOf(Error);
    expect(b.limits.connections.check('10.0.0.1'), 'what was heard counts for a TTL').to.equal('address');
    clock += b.shared.ttlMs + 1;
    expect(await b.shared.sync()).to.equal(false);
    expect(b.limits.connections.check('10.0.0.1'), 'then this node\'s own connections only').to.equal(undefined);
    open(b, '10.0.0.1', 3);
    expect(b.limits.connections.check('10.0.0.1'), 'the local limit still holds').to.equal('address');
    expect(b.limits.takeAddress('10.0.0.1', 'messages')).to.equal(undefined);
    b.limits.connections.closed('10.0.0.1');
    b.limits.connections.closed('10.0.0.1');
    await redis.restart();
    const back = await eventually(async () => (await a.shared.sync()) && (await b.shared.sync()), 200, 100);
    expect(back, 'syncs go through again').to.equal(true);
    expect(b.limits.connections.check('10.0.0.1'), '2 here + 3 on a').to.equal('address');
  });
});

/** Opens a WebSocket (no handshake); resolves with it, or with the HTTP status of the refusal. */
async function tryOpen(node: { wsUrl: string }): Promise<RawSocket | number> {
  try {
    return await RawSocket.open(node.wsUrl);
  } catch (err) {
    const status = (err as { status?: number }).status;
    if (status === undefined) throw err;
    return status;
  }
}

describe('shared limits across routers (real redis-server, nodes in one process)', function () {
  this.timeout(120_000);
  const SYNC_MS = 100;
  let redis: RedisTestServer;
  let nodes: TestServer[];
  let sockets: RawSocket[];
  let proc: CoordinatorProcess | undefined;

  beforeEach(async () => {
    redis = await startRedisServer();
    nodes = [];
    sockets = [];
  });
  afterEach(async () => {
    await Promise.all(sockets.map((s) => s.close(true)));
    await Promise.all(nodes.map((n) => n.close()));
    await proc?.cleanup();
    proc = undefined;
    await redis.close();
  });

  async function node(nodeId: string, options: SyncRouterOptions = {}): Promise<TestServer> {
    const n = await startTestServer({ redis: redis.url, nodeId, clusterLimitsSyncMs: SYNC_MS, maxConnectionsPerIp: 4, handshakeTimeoutMs: 0, ...options });
    nodes.push(n);
    return n;
  }

  async function openOk(target: { wsUrl: string }): Promise<RawSocket> {
    const s = await tryOpen(target);
    expect(s, 'accepted').to.be.instanceOf(RawSocket);
    sockets.push(s as RawSocket);
    return s as RawSocket;
  }

  /** Polls until a new socket to `target` is refused with 429 (closing the ones accepted meanwhile). */
  function refusedEventually(target: { wsUrl: string }): Promise<boolean> {
    return eventually(async () => {
      const s = await tryOpen(target);
      if (typeof s === 'number') return s === 429;
      await s.close();
      return false;
    }, 200, 50);
  }

  /** Polls until a new socket to `target` is accepted; keeps it open. */
  async function acceptedEventually(target: { wsUrl: string }): Promise<RawSocket | undefined> {
    let accepted: RawSocket | undefined;
    await eventually(async () => {
      const s = await tryOpen(target);
      if (typeof s === 'number') return false;
      accepted = s;
      sockets.push(s);
      return true;
    }, 400, 50);
    return accepted;
  }

  async function redisErrors(n: TestServer): Promise<number> {
    const metric = await n.sync.registry.getSingleMetric('sync_cluster_redis_errors_total')?.get();
    return metric?.values[0]?.value ?? 0;
  }

  it('refuses the 5th WebSocket from an address on either node when 4 are open across two, and takes one again when one closes', async () => {
    const a = await node('a');
    const b = await node('b');
    const onA = [await openOk(a), await openOk(a)];
    await openOk(b);
    await openOk(b);
    expect(await refusedEventually(a), '5th on a').to.equal(true);
    expect(await refusedEventually(b), '5th on b').to.equal(true);
    await onA[0]!.close();
    expect(await acceptedEventually(b), 'b takes one once a closed one').to.be.instanceOf(RawSocket);
    expect(await refusedEventually(a), 'and then it is full again').to.equal(true);
  });

  it('forgets the connections of a node that was killed once its usage expires', async () => {
    const a = await node('a');
    proc = await startCoordinatorProcess({
      args: ['--redis-url', redis.url, '--node-id', 'doomed'],
      router: { maxConnectionsPerIp: 4, clusterLimitsSyncMs: SYNC_MS, handshakeTimeoutMs: 0 },
    });
    const onDoomed = [await openOk(proc), await openOk(proc), await openOk(proc)];
    await openOk(a);
    expect(await refusedEventually(a), '3 on the doomed node + 1 here').to.equal(true);
    await proc.kill();
    await Promise.all(onDoomed.map((s) => s.closed));
    for (let i = 0; i < 3; i++) expect(await acceptedEventually(a), `connection ${i + 2} on a after the kill`).to.be.instanceOf(RawSocket);
    expect(await refusedEventually(a), 'then a alone holds 4').to.equal(true);
  });

  it('lets an address through at about messagesPerSecondPerIp over two nodes together, not twice that', async () => {
    const RATE = 40;
    const BURST = 10;
    const a = await node('a', { messagesPerSecondPerIp: RATE, messageBurstPerIp: BURST });
    const b = await node('b', { messagesPerSecondPerIp: RATE, messageBurstPerIp: BURST });
    const counts = { accepted: 0, refused: 0 };
    const start = performance.now();
    const end = start + 5000;
    // Two clients per node, each well above the rate (about 100 requests/s), over HTTP (the rate covers requests too).
    await Promise.all([a, b, a, b].map(async (n) => {
      while (performance.now() < end) {
        const res = await fetch(`${n.baseUrl}/nothing-here`);
        await res.arrayBuffer();
        if (res.status === 429) counts.refused++;
        else counts.accepted++;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }));
    const seconds = (performance.now() - start) / 1000;
    const oneBucket = RATE * seconds + BURST;
    // Each node alone would grant 2 x oneBucket. Shared: one bucket, plus a burst per node and about one to two
    // sync intervals of rate per node before it hears of the other's use; the bound leaves that much again.
    expect(counts.refused, 'the clients asked for more than the rate').to.be.greaterThan(counts.accepted);
    expect(counts.accepted, JSON.stringify({ ...counts, seconds })).to.be.within(0.7 * RATE * seconds, oneBucket * 1.4);
  });

  it('keeps the limits per node while Redis is stopped (counting the errors, throwing nothing), and shares them again when it is back', async () => {
    const a = await node('a');
    const b = await node('b');
    await openOk(a);
    await openOk(a);
    await openOk(b);
    await openOk(b);
    expect(await refusedEventually(a)).to.equal(true);
    await redis.stop();
    // Once what a heard from b is older than its TTL, a counts its own 2 only.
    expect(await acceptedEventually(a), 'a 3rd on a').to.be.instanceOf(RawSocket);
    await openOk(a);
    expect(await tryOpen(a), 'the 5th on a: its own limit still holds').to.equal(429);
    expect(await redisErrors(a)).to.be.greaterThan(0);
    await redis.restart();
    expect(await refusedEventually(b), 'b hears of a\'s 4 again').to.equal(true);
  });
});
