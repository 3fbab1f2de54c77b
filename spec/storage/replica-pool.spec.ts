import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import type { KvStore } from '../../lib/storage/kv.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { ReplicaPool, type Lease, type ReplicaPoolOptions } from '../../lib/storage/replica-pool.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const KEY = Buffer.from('greeting');

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (e: unknown) => e);
}

function expectStoreClosed(err: unknown): void {
  expect(isSyncError(err), `expected a SyncError, got ${String(err)}`).to.equal(true);
  expect((err as { code: string }).code).to.equal(ErrorCode.StoreClosed);
}

/** Polls until `check` holds; fails only if it never does within a generous bound. */
async function eventually(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (check()) return;
    await sleep(10);
  }
  expect.fail(`never happened: ${what}`);
}

/** A promise the test resolves when it chooses. */
function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => { open = resolve; });
  return { promise, open };
}

describe('replica-pool', () => {
  let dataDir: string;
  let pool: ReplicaPool<KvStore> | undefined;
  /** open() calls per id. */
  let opens: Map<string, number>;
  /** Every store the pool opened, to check that each gets closed. */
  let stores: KvStore[];

  function makePool(options: Partial<ReplicaPoolOptions<KvStore>> = {}): ReplicaPool<KvStore> {
    pool = new ReplicaPool<KvStore>({
      async open(id) {
        opens.set(id, (opens.get(id) ?? 0) + 1);
        const store = await openLevelStore(databaseDirectory(dataDir, id));
        stores.push(store);
        return store;
      },
      close: (store) => store.close(),
      ...options,
    });
    return pool;
  }

  async function writeGreeting(p: ReplicaPool<KvStore>, id: string): Promise<void> {
    await p.use(id, (store) => store.write([{ type: 'put', key: KEY, value: Buffer.from(`hello ${id}`) }]));
  }

  async function readGreeting(p: ReplicaPool<KvStore>, id: string): Promise<string | undefined> {
    return p.use(id, async (store) => (await store.get(KEY))?.toString());
  }

  beforeEach(async () => {
    dataDir = await makeTempDir('replica-pool-');
    opens = new Map();
    stores = [];
    pool = undefined;
  });

  afterEach(async () => {
    await pool?.close().catch(() => undefined);
    await removeTempDir(dataDir);
  });

  describe('constructor', () => {
    it('refuses missing callbacks and out-of-range limits with TypeError', () => {
      const open = async (): Promise<number> => 1;
      const close = async (): Promise<void> => undefined;
      const bad: unknown[] = [
        undefined,
        { close },
        { open },
        { open, close, maxOpen: 0 },
        { open, close, maxOpen: 1.5 },
        { open, close, maxOpen: Number.POSITIVE_INFINITY },
        { open, close, idleMs: -1 },
        { open, close, idleMs: Number.NaN },
        { open, close, idleMs: 2 ** 31 },
        { open, close, idleMs: '50' },
      ];
      for (const options of bad) {
        expect(() => new ReplicaPool(options as ReplicaPoolOptions<number>), JSON.stringify(options)).to.throw(TypeError);
      }
      expect(new ReplicaPool({ open, close, maxOpen: 1, idleMs: 0 }).size).to.equal(0);
    });
  });

  describe('#acquire', () => {
    it('opens a database once for concurrent acquires', async () => {
      const p = makePool();
      const leases = await Promise.all(Array.from({ length: 10 }, () => p.acquire('shared')));
      expect(opens.get('shared')).to.equal(1);
      expect(new Set(leases.map((l) => l.resource)).size).to.equal(1);
      expect(leases.every((l) => l.id === 'shared')).to.equal(true);
      for (const lease of leases) lease.release();
      expect(p.size).to.equal(1);
      expect(p.openIds()).to.deep.equal(['shared']);
    });

    it('rejects every waiter when an open fails, and retries on the next acquire', async () => {
      let failNext = true;
      const p = makePool({
        async open(id) {
          opens.set(id, (opens.get(id) ?? 0) + 1);
          await sleep(1);
          if (failNext) {
            failNext = false;
            throw new Error('disk on fire');
          }
          return openLevelStore(databaseDirectory(dataDir, id));
        },
      });
      const results = await Promise.allSettled([p.acquire('db'), p.acquire('db'), p.acquire('db')]);
      expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected', 'rejected']);
      for (const r of results) expect((r as PromiseRejectedResult).reason.message).to.equal('disk on fire');
      expect(p.isOpen('db')).to.equal(false);
      expect(p.size).to.equal(0);

      await writeGreeting(p, 'db');
      expect(await readGreeting(p, 'db')).to.equal('hello db');
      expect(opens.get('db')).to.equal(2);
    });

    it('waits for a closing database to finish closing, then reopens it with its data', async () => {
      const closing = gate();
      const p = makePool({
        maxOpen: 1,
        async close(store) {
          await closing.promise;
          await store.close();
        },
      });
      await writeGreeting(p, 'a');
      // Opening b evicts a, whose close is held open by the gate.
      const b = p.acquire('b');
      await eventually(() => !p.isOpen('a'), 'a is evicted');
      const a = p.acquire('a');
      closing.open();
      const [leaseB, leaseA] = await Promise.all([b, a]);
      expect((await leaseA.resource.get(KEY))?.toString()).to.equal('hello a');
      expect(opens.get('a')).to.equal(2);
      leaseA.release();
      leaseB.release();
    });

    it('rejects with STORE_CLOSED after close', async () => {
      const p = makePool();
      await p.close();
      expectStoreClosed(await errorOf(p.acquire('db')));
      expect(opens.size).to.equal(0);
    });

    it('treats a second release of a lease as a no-op', async () => {
      const p = makePool({ maxOpen: 1 });
      const first = await p.acquire('a');
      const second = await p.acquire('a');
      first.release();
      first.release();
      // a is still leased through `second`, so opening b must not evict it.
      await writeGreeting(p, 'b');
      expect(p.isOpen('a')).to.equal(true);
      expect(second.resource.isOpen).to.equal(true);
      second.release();
      expect(p.size).to.equal(1);
    });
  });

  describe('#use', () => {
    it('returns what the callback returns and releases on failure too', async () => {
      const p = makePool({ maxOpen: 1 });
      expect(await p.use('a', () => 42)).to.equal(42);
      const err = await errorOf(p.use('a', async () => { throw new Error('boom'); }));
      expect((err as Error).message).to.equal('boom');
      // Released, so b can take a's place.
      await writeGreeting(p, 'b');
      expect(p.openIds()).to.deep.equal(['b']);
    });
  });

  describe('eviction', () => {
    it('serves more databases than maxOpen, never holding more than maxOpen open', async () => {
      const p = makePool({ maxOpen: 5 });
      const ids = Array.from({ length: 30 }, (_, i) => `tenant:${i}.Db_${i % 3}`);
      for (const id of ids) {
        await writeGreeting(p, id);
        expect(p.size).to.be.at.most(5);
      }
      for (const id of [...ids].reverse()) {
        expect(await readGreeting(p, id)).to.equal(`hello ${id}`);
        expect(p.size).to.be.at.most(5);
      }
      // Only the pool's most recent five stores are still open.
      expect(stores.filter((s) => s.isOpen)).to.have.length(5);
      expect(opens.size).to.equal(30);
    });

    it('keeps data written before an eviction', async () => {
      const p = makePool({ maxOpen: 1 });
      await writeGreeting(p, 'first');
      await writeGreeting(p, 'second');
      expect(p.isOpen('first')).to.equal(false);
      expect(await readGreeting(p, 'first')).to.equal('hello first');
      expect(opens.get('first')).to.equal(2);
    });

    it('evicts the least recently used database first', async () => {
      const p = makePool({ maxOpen: 3 });
      for (const id of ['a', 'b', 'c', 'a', 'd']) await writeGreeting(p, id);
      expect(p.openIds().sort()).to.deep.equal(['a', 'c', 'd']);
      await writeGreeting(p, 'e');
      expect(p.openIds().sort()).to.deep.equal(['a', 'd', 'e']);
    });

    it('never closes a leased database, going over maxOpen until leases are released', async () => {
      const p = makePool({ maxOpen: 2 });
      const a = await p.acquire('a');
      const b = await p.acquire('b');
      const c = await p.acquire('c');
      expect(p.size).to.equal(3);
      for (const id of ['d', 'e', 'f']) await writeGreeting(p, id);
      expect(p.isOpen('a') && p.isOpen('b') && p.isOpen('c')).to.equal(true);
      await a.resource.write([{ type: 'put', key: KEY, value: Buffer.from('still here') }]);

      a.release();
      b.release();
      c.release();
      expect(p.size).to.be.at.most(2);
      expect(await readGreeting(p, 'a')).to.equal('still here');
    });
  });

  describe('idle close', () => {
    it('closes a database nobody used for idleMs, and reopens it on demand', async () => {
      const p = makePool({ idleMs: 50 });
      await writeGreeting(p, 'sleepy');
      const [store] = stores;
      await eventually(() => !p.isOpen('sleepy') && !store!.isOpen, 'the idle store is closed');
      expect(p.size).to.equal(0);
      expect(await readGreeting(p, 'sleepy')).to.equal('hello sleepy');
    });

    it('does not close a leased database however long it is held', async () => {
      const p = makePool({ idleMs: 20 });
      const lease = await p.acquire('busy');
      await sleep(150);
      expect(p.isOpen('busy')).to.equal(true);
      await lease.resource.write([{ type: 'put', key: KEY, value: Buffer.from('ok') }]);
      lease.release();
      await eventually(() => !p.isOpen('busy'), 'the released store is closed');
    });

    it('does not close databases when idleMs is 0', async () => {
      const p = makePool({ idleMs: 0 });
      await writeGreeting(p, 'a');
      await sleep(50);
      expect(p.isOpen('a')).to.equal(true);
    });
  });

  describe('#close', () => {
    it('closes every database, and can be called again', async () => {
      const p = makePool({ maxOpen: 10 });
      for (const id of ['a', 'b', 'c']) await writeGreeting(p, id);
      const held = await p.acquire('a');
      await Promise.all([p.close(), p.close()]);
      await p.close();
      expect(p.size).to.equal(0);
      expect(stores.every((s) => !s.isOpen)).to.equal(true);
      held.release();
      expectStoreClosed(await errorOf(p.acquire('a')));
      expectStoreClosed(await errorOf(p.use('b', () => 1)));
    });

    it('waits for an open in flight and closes what it opened', async () => {
      const opening = gate();
      const p = makePool({
        async open(id) {
          await opening.promise;
          const store = await openLevelStore(databaseDirectory(dataDir, id));
          stores.push(store);
          return store;
        },
      });
      const acquiring = errorOf(p.acquire('late'));
      const closed = p.close();
      opening.open();
      await closed;
      expectStoreClosed(await acquiring);
      expect(stores).to.have.length(1);
      expect(stores[0]!.isOpen).to.equal(false);
    });

    it('reports a failing close after closing the rest', async () => {
      const p = makePool({
        async close(store, id) {
          await store.close();
          if (id === 'bad') throw new Error('close failed');
        },
      });
      await writeGreeting(p, 'bad');
      await writeGreeting(p, 'good');
      const err = await errorOf(p.close());
      expect((err as Error).message).to.equal('close failed');
      expect(stores.every((s) => !s.isOpen)).to.equal(true);
    });
  });
  describe('retire', () => {
    it('closes an unleased resource at once; the next acquire opens a fresh one', async () => {
      const p = makePool();
      await writeGreeting(p, 'a');
      p.retire('a');
      expect(p.isOpen('a')).to.equal(false);
      expect(await readGreeting(p, 'a')).to.equal('hello a');
      expect(opens.get('a')).to.equal(2);
      expect(stores[0]!.isOpen).to.equal(false);
    });

    it('keeps a leased resource until its last lease goes, while new acquires wait for a fresh open', async () => {
      const p = makePool();
      const held = await p.acquire('a');
      p.retire('a');
      expect(p.isOpen('a')).to.equal(false);
      let got: Lease<KvStore> | undefined;
      const next = p.acquire('a').then((lease) => { got = lease; return lease; });
      await sleep(30);
      expect(got, 'waits for the retired store to close').to.equal(undefined);
      expect(held.resource.isOpen, 'the holder can still use it').to.equal(true);
      held.release();
      const lease = await next;
      expect(lease.resource).to.not.equal(held.resource);
      expect(held.resource.isOpen).to.equal(false);
      expect(opens.get('a')).to.equal(2);
      lease.release();
    });

    it('closes a retired resource that is still leased when the pool closes', async () => {
      const p = makePool();
      const held = await p.acquire('a');
      p.retire('a');
      await p.close();
      expect(held.resource.isOpen).to.equal(false);
      held.release();
    });

    it('does nothing for an id that is not open', () => {
      const p = makePool();
      expect(() => p.retire('nope')).to.not.throw();
    });
  });
});
