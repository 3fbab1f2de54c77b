import { expect } from 'chai';
import { Redis } from 'ioredis';
import { LogGapError, LogRewoundError, RedisLog, type LogBreak, type LogEntry, type RedisLogOptions, type Tail } from '../../lib/cluster/redis-log.js';
import { compareEntryIds, entryIdAfter, entryIdOf, stampsOf } from '../../lib/cluster/stamps.js';
import { ErrorCode, isSyncError, SyncError } from '../../lib/errors.js';
import { compareHlc, hlcFromSite } from '../../lib/protocol/hlc.js';
import { randomSiteId } from '../../lib/protocol/site-id.js';
import { TestSite, valid } from '../helpers/changes.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';

const site = new TestSite();

/** One message of `n` change sets writing row `row`. */
function message(row: number, n = 1) {
  const sets = [];
  for (let i = 0; i < n; i++) sets.push(site.txn([{ pk: [row], column: 'title', value: `v${row}.${i}` }]));
  return { sets: valid(sets), site: site.wire };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` until it holds; mocha's timeout bounds the wait. */
async function until(condition: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await condition())) await sleep(10);
}

async function rejection(promise: Promise<unknown>): Promise<SyncError> {
  try {
    await promise;
  } catch (err) {
    if (isSyncError(err)) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/** Collects what a tail delivers, per database. */
class Collector {
  readonly entries = new Map<string, LogEntry[]>();
  concurrent = false;
  private busy = new Set<string>();

  handler(db: string, delayMs = 0) {
    return {
      onEntries: async (batch: LogEntry[]) => {
        if (this.busy.has(db)) this.concurrent = true;
        this.busy.add(db);
        if (delayMs > 0) await sleep(delayMs);
        const list = this.entries.get(db) ?? [];
        list.push(...batch);
        this.entries.set(db, list);
        this.busy.delete(db);
      },
    };
  }

  ids(db: string): string[] {
    return (this.entries.get(db) ?? []).map((e) => e.id);
  }
}

describe('cluster/redis-log', function () {
  let server: RedisTestServer;
  let raw: Redis;
  const opened: RedisLog[] = [];
  let dbCount = 0;
  const freshDb = () => `db-${++dbCount}`;

  async function open(options: RedisLogOptions = {}): Promise<RedisLog> {
    const log = await RedisLog.open({ url: server.url, ...options });
    opened.push(log);
    return log;
  }

  /** Connections Redis has open for a node, by the names RedisLog gives them. */
  async function connectionsOf(nodeId: string): Promise<number> {
    const list = await raw.client('LIST') as string;
    return list.split('\n').filter((line) => line.includes(`name=sync-coordinator:${nodeId}:`)).length;
  }

  before(async () => {
    server = await startRedisServer();
    raw = new Redis(server.url, { lazyConnect: true });
    // It reconnects by itself after the outage test; its errors meanwhile are expected.
    raw.on('error', () => {});
    await raw.connect();
  });

  afterEach(async () => {
    await Promise.all(opened.splice(0).map((log) => log.close()));
  });

  after(async () => {
    raw?.disconnect();
    await server?.close();
  });

  describe('#append and #read', () => {
    it('returns the entries in order with their change sets, sender, node and stamps', async () => {
      const log = await open({ nodeId: 'node-a' });
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const sent = [message(1, 1), message(2, 3), message(3, 2), message(4, 1)];
      const ids: string[] = [];
      for (const m of sent) ids.push(await log.append(db, m));
      for (let i = 1; i < ids.length; i++) expect(compareEntryIds(ids[i - 1]!, ids[i]!)).to.be.lessThan(0);

      const entries = await log.read(db, '0-0');
      expect(entries.map((e) => e.id)).to.deep.equal(ids);
      let previous: Buffer | undefined;
      entries.forEach((entry, i) => {
        expect(entry.corrupt).to.equal(undefined);
        expect(entry.sets.map((s) => s.wire)).to.deep.equal(sent[i]!.sets.map((s) => s.wire));
        expect(entry.site).to.equal(site.wire);
        expect(entry.node).to.equal('node-a');
        expect(entry.stamps.map((s) => s.toString('hex'))).to.deep.equal(stampsOf(entry.id, entry.sets.length, siteId).map((s) => s.toString('hex')));
        for (const stamp of entry.stamps) {
          expect(hlcFromSite(stamp, siteId)).to.equal(true);
          if (previous) expect(compareHlc(previous, stamp)).to.be.lessThan(0);
          previous = stamp;
        }
      });
      expect((await log.read(db, ids[1]!)).map((e) => e.id)).to.deep.equal(ids.slice(2));
      expect((await log.read(db, ids[0]!, { count: 2 })).map((e) => e.id)).to.deep.equal(ids.slice(1, 3));
      expect(await log.read(db, ids[3]!)).to.deep.equal([]);
      expect(await log.read(freshDb(), '0-0')).to.deep.equal([]);
      expect(await log.info(db)).to.deep.equal({ length: 4, firstId: ids[0], lastId: ids[3] });
    });

    it('places an entry above `after`, and the next one above it, across a millisecond boundary', async () => {
      const log = await open();
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const ms = Date.now() + 120_000;
      const id = await log.append(db, message(1, 10), { after: `${ms}-65530` });
      // 10 stamps from ms-65531 end at (ms+1)-4: seq never leaves the 16-bit counter.
      expect(id).to.equal(`${ms + 1}-4`);
      // Readers must hold what `after` stands for: from the start, the log has a gap.
      expect(await rejection(log.read(db, '0-0'))).to.be.instanceOf(LogGapError);
      const [entry] = await log.read(db, `${ms}-65530`);
      expect(entry!.stamps.map(entryIdOf)).to.deep.equal([
        `${ms}-65531`, `${ms}-65532`, `${ms}-65533`, `${ms}-65534`, `${ms}-65535`,
        `${ms + 1}-0`, `${ms + 1}-1`, `${ms + 1}-2`, `${ms + 1}-3`, `${ms + 1}-4`,
      ]);
      expect(hlcFromSite(entry!.stamps[0]!, siteId)).to.equal(true);
      // Redis's clock is behind that entry now; the next one still goes above it.
      expect(await log.append(db, message(2))).to.equal(`${ms + 1}-5`);
    });

    it('goes on above the stream when its last-id key was lost or the stream was written by hand', async () => {
      const log = await open();
      const db = freshDb();
      const start = `${Date.now() + 60_000}-0`;
      const first = await log.append(db, message(1), { after: start });
      await raw.del(`sync:{${db}}:last`);
      const second = await log.append(db, message(2));
      expect(compareEntryIds(second, first)).to.be.greaterThan(0);
      const byHand = await raw.xadd(`sync:{${db}}:log`, `${Date.now() + 90_000}-7`, 'sets', 'not json');
      const m3 = message(3);
      const third = await log.append(db, m3);
      expect(compareEntryIds(third, byHand!)).to.be.greaterThan(0);
      const entries = await log.read(db, start);
      expect(entries.map((e) => e.id)).to.deep.equal([first, second, byHand, third]);
      expect(entries.map((e) => e.prev)).to.deep.equal([start, first, '', byHand]);
      // Every node reads the same bytes, so every node skips the damaged entry alike.
      expect(entries[2]!.corrupt).to.match(/JSON/);
      expect(entries[2]!.sets).to.deep.equal([]);
      expect(entries[3]!.sets.map((set) => set.wire)).to.deep.equal(m3.sets.map((set) => set.wire));
    });

    it('refuses misuse with a TypeError and a bad database id with INVALID_DATABASE_ID', async () => {
      const log = await open();
      let misuse: unknown;
      await log.append('x', { sets: [], site: site.wire }).catch((err: unknown) => { misuse = err; });
      expect(misuse).to.be.instanceOf(TypeError).with.property('message', 'append needs at least one change set in entry.sets');
      await log.append('x', { sets: message(1).sets, site: 'nope' }).catch((err: unknown) => { misuse = err; });
      expect(misuse).to.be.instanceOf(TypeError).with.property('message').that.includes('entry.site must be');
      const bad = await rejection(log.append('no spaces', message(1)));
      expect(bad.code).to.equal(ErrorCode.InvalidDatabaseId);
      expect(() => log.tail('x', '*', randomSiteId(), { onEntries() {} })).to.throw(TypeError, 'after must be a stream entry id');
    });
  });

  describe('#siteIdOf', () => {
    it('gives every node the same site id, also when they ask at once', async () => {
      const logs = await Promise.all([1, 2, 3, 4, 5].map(() => open()));
      const db = freshDb();
      const ids = await Promise.all(logs.flatMap((log) => [log.siteIdOf(db), log.siteIdOf(db, randomSiteId())]));
      for (const id of ids) expect(id.toString('hex')).to.equal(ids[0]!.toString('hex'));
    });

    it('keeps the first proposal (a replica that existed before the cluster)', async () => {
      const [a, b] = await Promise.all([open(), open()]);
      const db = freshDb();
      const mine = randomSiteId();
      expect((await a.siteIdOf(db, mine)).equals(mine)).to.equal(true);
      expect((await b.siteIdOf(db, randomSiteId())).equals(mine)).to.equal(true);
    });
  });

  describe('#tail', () => {
    it('tails hundreds of databases on one node with two connections', async () => {
      const reader = await open({ nodeId: 'reader' });
      const writer = await open({ nodeId: 'writer' });
      const dbs = Array.from({ length: 200 }, freshDb);
      const collector = new Collector();
      const sites = await Promise.all(dbs.map((db) => writer.siteIdOf(db)));
      // Half start before anything is written, half after their first entry.
      const acked = new Map<string, string[]>(dbs.map((db) => [db, []]));
      dbs.slice(0, 100).forEach((db, i) => reader.tail(db, '0-0', sites[i]!, collector.handler(db)));
      await Promise.all(dbs.map(async (db) => acked.get(db)!.push(await writer.append(db, message(0)))));
      dbs.slice(100).forEach((db, i) => reader.tail(db, '0-0', sites[100 + i]!, collector.handler(db)));
      await Promise.all(dbs.map(async (db) => {
        for (let i = 1; i < 3; i++) acked.get(db)!.push(await writer.append(db, message(i)));
      }));
      await until(() => dbs.every((db) => collector.ids(db).length >= 3));
      for (const db of dbs) expect(collector.ids(db), db).to.deep.equal(acked.get(db));
      expect(await connectionsOf('reader')).to.equal(2);
    });

    it('shows two nodes every entry in the same order, one batch at a time', async () => {
      const a = await open({ nodeId: 'a' });
      const b = await open({ nodeId: 'b' });
      const db = freshDb();
      const siteId = await a.siteIdOf(db);
      const seenA = new Collector();
      const seenB = new Collector();
      a.tail(db, '0-0', siteId, seenA.handler(db, 3));
      b.tail(db, '0-0', siteId, seenB.handler(db, 1));
      const acked: string[] = [];
      await Promise.all([a, b].map(async (log, n) => {
        for (let i = 0; i < 40; i++) acked.push(await log.append(db, message(n * 100 + i, 1 + (i % 3))));
      }));
      await until(() => seenA.ids(db).length === 80 && seenB.ids(db).length === 80);
      expect(seenA.ids(db)).to.deep.equal(seenB.ids(db));
      expect([...seenA.ids(db)].sort(compareEntryIds)).to.deep.equal(seenA.ids(db));
      expect([...acked].sort(compareEntryIds)).to.deep.equal(seenA.ids(db));
      const stampsA = seenA.entries.get(db)!.flatMap((e) => e.stamps.map((s) => s.toString('hex')));
      const stampsB = seenB.entries.get(db)!.flatMap((e) => e.stamps.map((s) => s.toString('hex')));
      expect(stampsA).to.deep.equal(stampsB);
      expect(new Set(seenA.entries.get(db)!.map((e) => e.node))).to.deep.equal(new Set(['a', 'b']));
      expect(seenA.concurrent || seenB.concurrent, 'a batch started before the previous one finished').to.equal(false);
    });

    it('starts after the given entry and keeps the position of what was handled', async () => {
      const log = await open();
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push(await log.append(db, message(i)));
      const collector = new Collector();
      const tail = log.tail(db, ids[1]!, siteId, collector.handler(db));
      await until(() => collector.ids(db).length === 3);
      expect(collector.ids(db)).to.deep.equal(ids.slice(2));
      await until(() => tail.position === ids[4]);
      tail.stop();
      await log.append(db, message(9));
      expect(() => log.tail(db, '0-0', siteId, collector.handler(db))).not.to.throw();
      expect(() => log.tail(db, '0-0', siteId, collector.handler(db))).to.throw(TypeError, 'already tailed');
    });

    it('delivers a batch again after its handler failed', async () => {
      const errors: Error[] = [];
      const log = await open({ onError: (err) => errors.push(err) });
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const id = await log.append(db, message(1));
      const calls: string[][] = [];
      log.tail(db, '0-0', siteId, {
        onEntries(entries) {
          calls.push(entries.map((e) => e.id));
          if (calls.length === 1) throw new Error('store busy');
        },
      });
      await until(() => calls.length === 2);
      expect(calls).to.deep.equal([[id], [id]]);
      expect(errors.map((e) => e.message)).to.include('store busy');
    });
  });

  describe('#trim', () => {
    it('drops what a stamp covers and tells readers behind it', async () => {
      const log = await open();
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const ids: string[] = [];
      for (let i = 0; i < 10; i++) ids.push(await log.append(db, message(i, 2)));
      const covered = (await log.read(db, ids[2]!, { count: 1 }))[0]!.stamps[1]!; // last stamp of entry 3
      expect(await log.trim(db, entryIdAfter(covered))).to.equal(4);
      expect(await log.firstId(db)).to.equal(ids[4]);
      expect(await log.info(db)).to.deep.equal({ length: 6, firstId: ids[4], lastId: ids[9], trimmedBelow: entryIdAfter(covered) });
      // A reader at entry 4 misses nothing; one further back does.
      expect((await log.read(db, ids[3]!)).map((e) => e.id)).to.deep.equal(ids.slice(4));
      const err = await rejection(log.read(db, ids[2]!));
      expect(err).to.be.instanceOf(LogGapError);
      expect(err.code).to.equal(ErrorCode.SnapshotRequired);
      expect(err.message).to.include(`entries after ${ids[2]} are not in the log`);

      const trimmed: LogBreak[] = [];
      const collector = new Collector();
      log.tail(db, '0-0', siteId, { ...collector.handler(db), onBroken: (e) => trimmed.push(e) });
      await until(() => trimmed.length === 1);
      expect(trimmed[0]!.after).to.equal('0-0');
      expect(collector.ids(db)).to.deep.equal([]);
      const other = freshDb();
      expect(await log.trim(other, '1-0')).to.equal(0);
    });

    it('stops a tail that the trim overtook while it was busy', async () => {
      const log = await open();
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const first = await log.append(db, message(0));
      let release!: () => void;
      const gate = new Promise<void>((resolve) => { release = resolve; });
      const trimmed: LogBreak[] = [];
      const batches: string[][] = [];
      const tail = log.tail(db, '0-0', siteId, {
        async onEntries(entries) {
          batches.push(entries.map((e) => e.id));
          await gate;
        },
        onBroken: (e) => trimmed.push(e),
      });
      await until(() => batches.length === 1);
      const later: string[] = [];
      for (let i = 1; i < 4; i++) later.push(await log.append(db, message(i)));
      await log.trim(db, later[2]!); // drops entries 1 and 2, which the tail has not read
      release();
      await until(() => trimmed.length === 1);
      expect(trimmed[0]!.after).to.equal(first);
      expect(tail.position).to.equal(first);
      expect(batches).to.deep.equal([[first]]);
    });
  });

  describe('continuity', () => {
    it('makes a reader below a barrier restore, and lets one at it go on', async () => {
      const log = await open();
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const e1 = await log.append(db, message(1));
      // A replica whose own stamps run ahead of the log (e.g. it existed before the cluster).
      const above = `${Date.now() + 60_000}-0`;
      const barrier = await log.barrier(db, above);
      const e2 = await log.append(db, message(2));
      expect(compareEntryIds(barrier, above)).to.be.greaterThan(0);

      const gap = await rejection(log.read(db, e1));
      expect(gap).to.be.instanceOf(LogGapError).with.property('needs', above);
      expect(gap.code).to.equal(ErrorCode.SnapshotRequired);
      const fromAbove = await log.read(db, above);
      expect(fromAbove.map((e) => [e.id, e.sets.length, e.stamps.length, e.corrupt])).to.deep.equal([[barrier, 0, 0, undefined], [e2, 1, 1, undefined]]);
      expect(fromAbove[1]!.prev).to.equal(barrier);

      const broken: LogBreak[] = [];
      const seen = new Collector();
      log.tail(db, e1, siteId, { ...seen.handler(db), onBroken: (e) => broken.push(e) });
      const other = await open();
      const seenAbove = new Collector();
      other.tail(db, above, siteId, seenAbove.handler(db));
      await until(() => broken.length === 1 && seenAbove.ids(db).length === 2);
      expect(broken[0]).to.be.instanceOf(LogGapError);
      expect(seen.ids(db)).to.deep.equal([]);
      expect(seenAbove.ids(db)).to.deep.equal([barrier, e2]);
    });

    it('stops a reader whose applied entries Redis lost (a failover), and refuses reads from its position', async () => {
      const reader = await open({ blockMs: 200 });
      const writer = await open();
      const db = freshDb();
      const siteId = await writer.siteIdOf(db);
      const e1 = await writer.append(db, message(1));
      // What a replica had when the primary died: the log up to e1.
      const saved = await Promise.all([`sync:{${db}}:log`, `sync:{${db}}:last`].map(async (key) => [key, await raw.dumpBuffer(key)] as const));
      const e2 = await writer.append(db, message(2));
      const e3 = await writer.append(db, message(3));
      const broken: LogBreak[] = [];
      const seen = new Collector();
      reader.tail(db, '0-0', siteId, { ...seen.handler(db), onBroken: (e) => broken.push(e) });
      await until(() => seen.ids(db).length === 3);
      expect(seen.ids(db)).to.deep.equal([e1, e2, e3]);

      // The failover: the replica becomes primary without e2 and e3.
      for (const [key, dump] of saved) await raw.restore(key, 0, dump!, 'REPLACE');
      await until(() => broken.length === 1);
      expect(broken[0]).to.be.instanceOf(LogRewoundError);
      expect(broken[0]!).to.include({ after: e3, logAt: e1 });

      const e4 = await writer.append(db, message(4));
      const rewound = await rejection(writer.read(db, e3));
      expect(rewound).to.be.instanceOf(LogRewoundError);
      expect(rewound.code).to.equal(ErrorCode.Internal);
      // A node that had only e1 goes on as if nothing happened.
      expect((await writer.read(db, e1)).map((e) => e.id)).to.deep.equal([e4]);
    });
  });

  describe('with minReplicas', () => {
    it('resolves once a replica has the entry, and refuses when none confirms it', async () => {
      const replica = await startRedisServer();
      const client = new Redis(replica.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
      client.on('error', () => {});
      try {
        await client.connect();
        await client.call('REPLICAOF', '127.0.0.1', String(server.port));
        await until(async () => /master_link_status:up/.test(await client.info('replication')));
        // Generous: a busy machine can take a while to replicate even one entry.
        const log = await open({ minReplicas: 1, replicaTimeoutMs: 3000 });
        const db = freshDb();
        const id = await log.append(db, message(1));
        expect((await client.xrange(`sync:{${db}}:log`, id, id)).map(([entryId]) => entryId)).to.deep.equal([id]);

        await replica.stop();
        const err = await rejection(log.append(db, message(2)));
        expect(err.code).to.equal(ErrorCode.StorageUnavailable);
        expect(err.message).to.include('0 of 1 replicas confirmed');
        // The entry is in the log all the same: every node applies it, and a resend is harmless.
        expect(await log.read(db, id)).to.have.length(1);
      } finally {
        client.disconnect();
        await replica.close();
      }
    });
  });

  describe('when Redis is down', () => {
    it('refuses at once with STORAGE_UNAVAILABLE, then resumes without losing an acknowledged entry', async function () {
      this.timeout(120_000);
      const errors: Error[] = [];
      // A command timeout far beyond mocha's: a refusal can only come from the connection state.
      const writer = await open({ nodeId: 'writer', commandTimeoutMs: 600_000 });
      const reader = await open({ nodeId: 'reader', onError: (err) => errors.push(err) });
      const db = freshDb();
      const siteId = await writer.siteIdOf(db);
      const seen = new Collector();
      reader.tail(db, '0-0', siteId, seen.handler(db));

      const acked: string[] = [];
      const refused: SyncError[] = [];
      let writing = true;
      const loop = (async () => {
        for (let i = 0; writing; i++) {
          try {
            acked.push(await writer.append(db, message(i)));
          } catch (err) {
            refused.push(err as SyncError);
            await sleep(20);
          }
        }
      })();
      await until(() => acked.length >= 50 && seen.ids(db).length >= 20);
      await server.stop();
      const ackedBefore = acked.length;
      await until(() => refused.length >= 5);
      for (const err of refused) expect(err.code, err.message).to.equal(ErrorCode.StorageUnavailable);
      expect((await rejection(writer.read(db, '0-0'))).code).to.equal(ErrorCode.StorageUnavailable);
      expect((await rejection(writer.info(db))).code).to.equal(ErrorCode.StorageUnavailable);
      expect((await rejection(writer.trim(db, '1-0'))).code).to.equal(ErrorCode.StorageUnavailable);
      expect((await rejection(writer.siteIdOf(freshDb()))).code).to.equal(ErrorCode.StorageUnavailable);
      // A tail can be started while Redis is away; it waits.
      const late = new Collector();
      const lateDb = freshDb();
      expect(() => reader.tail(lateDb, '0-0', siteId, late.handler(lateDb))).not.to.throw();
      await until(() => errors.length > 0);

      await server.restart();
      await until(() => acked.length >= ackedBefore + 30);
      writing = false;
      await loop;
      await writer.append(lateDb, message(1));

      const stored = (await writer.read(db, '0-0', { count: 100_000 })).map((e) => e.id);
      // Every acknowledged entry survived (AOF); a refused append may have landed too, which is harmless.
      expect(stored).to.include.members(acked);
      await until(() => seen.ids(db).length >= stored.length && late.ids(lateDb).length === 1);
      expect(seen.ids(db)).to.deep.equal(stored);
    });
  });

  describe('when the primary was demoted (failover)', () => {
    it('refuses writes with STORAGE_UNAVAILABLE while Redis answers READONLY, and writes again once it is primary', async () => {
      const log = await open();
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const seen = new Collector();
      log.tail(db, '0-0', siteId, seen.handler(db));
      const before = await log.append(db, message(1));
      await until(() => seen.ids(db).length === 1);
      // A replica of a primary that does not exist: it keeps its data and refuses writes.
      await raw.call('REPLICAOF', '127.0.0.1', '1');
      try {
        const err = await rejection(log.append(db, message(2)));
        expect(err.code).to.equal(ErrorCode.StorageUnavailable);
        expect(err.message).to.include('READONLY');
      } finally {
        await raw.call('REPLICAOF', 'NO', 'ONE');
      }
      let after: string | undefined;
      await until(async () => {
        after = await log.append(db, message(3)).catch(() => undefined);
        return after !== undefined;
      });
      await until(() => seen.ids(db).length === 2);
      expect(seen.ids(db)).to.deep.equal([before, after]);
    });
  });

  describe('#close', () => {
    it('releases its connections and keys, and refuses afterwards', async () => {
      const log = await RedisLog.open({ url: server.url, nodeId: 'closer' });
      const db = freshDb();
      const siteId = await log.siteIdOf(db);
      const collector = new Collector();
      log.tail(db, '0-0', siteId, collector.handler(db, 50));
      log.tail(freshDb(), '0-0', siteId, collector.handler('other'));
      await log.append(db, message(1));
      await until(() => collector.ids(db).length === 1);
      expect(await connectionsOf('closer')).to.equal(2);
      await log.close();
      await log.close();
      expect(await connectionsOf('closer')).to.equal(0);
      expect(await raw.keys('sync:node:closer:*')).to.deep.equal([]);
      expect((await rejection(log.append(db, message(2)))).code).to.equal(ErrorCode.StorageUnavailable);
      expect(() => log.tail(freshDb(), '0-0', siteId, collector.handler('x'))).to.throw(TypeError, 'closed');
    });

    it('fails to open with STORAGE_UNAVAILABLE when nothing listens', async () => {
      const err = await rejection(RedisLog.open({ url: 'redis://127.0.0.1:1', commandTimeoutMs: 500 }));
      expect(err.code).to.equal(ErrorCode.StorageUnavailable);
    });
  });

  it('tails with a handle whose stop() is idempotent', async () => {
    const log = await open();
    const db = freshDb();
    const tail: Tail = log.tail(db, '0-0', await log.siteIdOf(db), { onEntries() {} });
    tail.stop();
    tail.stop();
    expect(tail.db).to.equal(db);
  });
});
