import { expect } from 'chai';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import type { KvIterator, KvOp, KvRange, KvStore } from '../../lib/storage/kv.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const b = (text: string): Buffer => Buffer.from(text);
const put = (key: Buffer | string, value: Buffer | string): KvOp => ({
  type: 'put',
  key: typeof key === 'string' ? b(key) : key,
  value: typeof value === 'string' ? b(value) : value,
});
const del = (key: Buffer | string): KvOp => ({ type: 'del', key: typeof key === 'string' ? b(key) : key });

async function drain(it: KvIterator): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for (let e = await it.next(); e; e = await it.next()) out.push([e[0].toString(), e[1].toString()]);
  return out;
}

async function keysOf(store: KvStore, range?: KvRange): Promise<string[]> {
  const it = store.iterator(range);
  try {
    return (await drain(it)).map(([k]) => k);
  } finally {
    await it.close();
  }
}

async function expectStoreClosed(promise: Promise<unknown>): Promise<void> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  expect(isSyncError(err), `expected a SyncError, got ${String(err)}`).to.equal(true);
  expect((err as { code: string }).code).to.equal(ErrorCode.StoreClosed);
}

function expectThrowsStoreClosed(fn: () => unknown): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isSyncError(err), `expected a SyncError, got ${String(err)}`).to.equal(true);
  expect((err as { code: string }).code).to.equal(ErrorCode.StoreClosed);
}

/**
 * The behaviour every KvStore must have. `open` opens (creating if needed)
 * the store kept in `dir`; opening the same dir again must find the data.
 */
export function kvSuite(name: string, open: (dir: string) => Promise<KvStore>): void {
  describe(name, () => {
    let dir: string;
    let store: KvStore;

    beforeEach(async () => {
      dir = await makeTempDir('kv-suite-');
      store = await open(dir);
    });

    afterEach(async () => {
      await store.close();
      await removeTempDir(dir);
    });

    describe('#get', () => {
      it('returns undefined for a missing key', async () => {
        expect(await store.get(b('nope'))).to.equal(undefined);
      });

      it('returns the stored bytes', async () => {
        const value = Buffer.from([0, 1, 2, 0xff]);
        await store.write([put('k', value)]);
        expect(await store.get(b('k'))).to.deep.equal(value);
      });

      it('stores an empty value', async () => {
        await store.write([put('k', Buffer.alloc(0))]);
        expect(await store.get(b('k'))).to.deep.equal(Buffer.alloc(0));
      });
    });

    describe('#getMany', () => {
      it('returns values in the order of the keys, undefined for missing ones', async () => {
        await store.write([put('a', '1'), put('c', '3')]);
        const values = await store.getMany([b('c'), b('b'), b('a'), b('c')]);
        expect(values.map((v) => v?.toString())).to.deep.equal(['3', undefined, '1', '3']);
      });

      it('returns an empty array for no keys', async () => {
        expect(await store.getMany([])).to.deep.equal([]);
      });
    });

    describe('#write', () => {
      it('applies puts and deletes of one batch together', async () => {
        await store.write([put('old', 'x'), put('keep', 'y')]);
        await store.write([del('old'), put('new', 'z'), put('keep', 'y2')]);
        expect(await store.getMany([b('old'), b('new'), b('keep')])).to.deep.equal([undefined, b('z'), b('y2')]);
      });

      it('applies ops of one batch in order', async () => {
        await store.write([put('a', '1'), del('a'), del('b'), put('b', '2'), put('c', '1'), put('c', '2')]);
        expect(await store.getMany([b('a'), b('b'), b('c')])).to.deep.equal([undefined, b('2'), b('2')]);
      });

      it('applies nothing when one op of a batch is invalid', async () => {
        await store.write([put('a', '1')]);
        const bad = { type: 'put', key: b('c'), value: undefined } as unknown as KvOp;
        const err = await store.write([del('a'), put('b', '2'), bad]).then(() => undefined, (e: unknown) => e);
        expect(err).to.be.instanceOf(Error);
        expect(await store.getMany([b('a'), b('b'), b('c')])).to.deep.equal([b('1'), undefined, undefined]);
      });

      it('accepts an empty batch and the sync option', async () => {
        await store.write([]);
        await store.write([put('a', '1')], { sync: true });
        expect(await store.get(b('a'))).to.deep.equal(b('1'));
      });

      it('deletes a missing key without complaint', async () => {
        await store.write([del('ghost')]);
        expect(await store.get(b('ghost'))).to.equal(undefined);
      });
    });

    describe('ordering', () => {
      it('sorts keys bytewise, unsigned, shorter prefix first', async () => {
        const keys = [
          [0xff, 0xff], [0x00], [0x7f], [0x80], [0xff], [0x00, 0x00], [0x01], [0x00, 0xff], [0x61], [0x61, 0x00],
        ].map((k) => Buffer.from(k));
        await store.write(keys.map((k, i) => put(k, String(i))));
        const it = store.iterator();
        const seen: Buffer[] = [];
        for (let e = await it.next(); e; e = await it.next()) seen.push(e[0]);
        await it.close();
        expect(seen.map((k) => k.toString('hex'))).to.deep.equal(
          [...keys].sort(Buffer.compare).map((k) => k.toString('hex')),
        );
        expect(seen[0]).to.deep.equal(Buffer.from([0x00]));
        expect(seen.at(-1)).to.deep.equal(Buffer.from([0xff, 0xff]));
      });

      it('returns keys and values as Buffers', async () => {
        await store.write([put('k', 'v')]);
        const it = store.iterator();
        const entry = await it.next();
        await it.close();
        expect(Buffer.isBuffer(entry?.[0])).to.equal(true);
        expect(Buffer.isBuffer(entry?.[1])).to.equal(true);
      });
    });

    describe('#iterator ranges', () => {
      beforeEach(async () => {
        await store.write(['a', 'b', 'c', 'd', 'e'].map((k) => put(k, k.toUpperCase())));
      });

      it('iterates everything in order without a range', async () => {
        const it = store.iterator();
        expect(await drain(it)).to.deep.equal([['a', 'A'], ['b', 'B'], ['c', 'C'], ['d', 'D'], ['e', 'E']]);
        await it.close();
      });

      it('honours gt, gte, lt and lte', async () => {
        expect(await keysOf(store, { gt: b('b') })).to.deep.equal(['c', 'd', 'e']);
        expect(await keysOf(store, { gte: b('b') })).to.deep.equal(['b', 'c', 'd', 'e']);
        expect(await keysOf(store, { lt: b('d') })).to.deep.equal(['a', 'b', 'c']);
        expect(await keysOf(store, { lte: b('d') })).to.deep.equal(['a', 'b', 'c', 'd']);
        expect(await keysOf(store, { gt: b('a'), lt: b('e') })).to.deep.equal(['b', 'c', 'd']);
        expect(await keysOf(store, { gte: b('bb'), lte: b('dd') })).to.deep.equal(['c', 'd']);
      });

      it('iterates in reverse within bounds', async () => {
        expect(await keysOf(store, { reverse: true })).to.deep.equal(['e', 'd', 'c', 'b', 'a']);
        expect(await keysOf(store, { reverse: true, gt: b('a'), lt: b('e') })).to.deep.equal(['d', 'c', 'b']);
        expect(await keysOf(store, { reverse: true, gte: b('b'), lte: b('d') })).to.deep.equal(['d', 'c', 'b']);
      });

      it('stops after limit entries, forwards and in reverse', async () => {
        expect(await keysOf(store, { limit: 2 })).to.deep.equal(['a', 'b']);
        expect(await keysOf(store, { limit: 2, reverse: true, lt: b('e') })).to.deep.equal(['d', 'c']);
        expect(await keysOf(store, { limit: 0 })).to.deep.equal([]);
        expect(await keysOf(store, { limit: -1 })).to.deep.equal(['a', 'b', 'c', 'd', 'e']);
        expect(await keysOf(store, { limit: 10, gte: b('d') })).to.deep.equal(['d', 'e']);
      });

      it('is empty when the bounds exclude everything', async () => {
        expect(await keysOf(store, { gt: b('e') })).to.deep.equal([]);
        expect(await keysOf(store, { gt: b('c'), lt: b('c') })).to.deep.equal([]);
        expect(await keysOf(store, { gte: b('d'), lte: b('b') })).to.deep.equal([]);
        expect(await keysOf(store, { lt: Buffer.alloc(0) })).to.deep.equal([]);
        expect(await keysOf(store, { lte: Buffer.alloc(0), reverse: true })).to.deep.equal([]);
      });

      it('treats an empty lower bound as no bound', async () => {
        expect(await keysOf(store, { gt: Buffer.alloc(0), lt: b('c') })).to.deep.equal(['a', 'b']);
        expect(await keysOf(store, { gte: Buffer.alloc(0), limit: 1 })).to.deep.equal(['a']);
      });

      it('applies the stricter of two bounds on the same side', async () => {
        expect(await keysOf(store, { gt: b('c'), gte: b('a') })).to.deep.equal(['d', 'e']);
        expect(await keysOf(store, { gt: b('a'), gte: b('c') })).to.deep.equal(['c', 'd', 'e']);
        expect(await keysOf(store, { lt: b('c'), lte: b('d') })).to.deep.equal(['a', 'b']);
        expect(await keysOf(store, { lt: b('e'), lte: b('c'), reverse: true })).to.deep.equal(['c', 'b', 'a']);
      });
    });

    describe('#iterator snapshot', () => {
      it('does not see writes made after it was created', async () => {
        await store.write([put('a', '1'), put('b', '1'), put('c', '1')]);
        const it = store.iterator();
        await store.write([put('a', '2'), del('b'), put('bb', 'new'), put('d', 'new')]);
        expect(await drain(it)).to.deep.equal([['a', '1'], ['b', '1'], ['c', '1']]);
        await it.close();
        expect(await keysOf(store)).to.deep.equal(['a', 'bb', 'c', 'd']);
      });

      it('keeps its view across seeks', async () => {
        await store.write([put('a', '1'), put('b', '1'), put('c', '1')]);
        const it = store.iterator();
        expect((await it.next())?.[0].toString()).to.equal('a');
        await store.write([del('a'), put('b', '2'), put('a0', 'new')]);
        it.seek(b('a'));
        expect(await drain(it)).to.deep.equal([['a', '1'], ['b', '1'], ['c', '1']]);
        it.seek(Buffer.from([0]));
        expect((await it.next())?.[0].toString()).to.equal('a');
        await it.close();
      });

      it('does not see a batch written while it is being read', async () => {
        await store.write(Array.from({ length: 50 }, (_, i) => put(`k${String(i).padStart(2, '0')}`, 'old')));
        const it = store.iterator();
        const first = await it.next();
        await store.write(Array.from({ length: 50 }, (_, i) => put(`k${String(i).padStart(2, '0')}`, 'new')));
        const rest = await drain(it);
        await it.close();
        expect(first?.[1].toString()).to.equal('old');
        expect(rest).to.have.length(49);
        expect(rest.every(([, v]) => v === 'old')).to.equal(true);
      });
    });

    describe('#iterator nextBatch', () => {
      it('returns every entry of the range once, in order, in batches, honouring limit, skip and seek', async () => {
        const keys = Array.from({ length: 3000 }, (_, i) => `k${String(i).padStart(5, '0')}`);
        await store.write(keys.map((k) => put(k, `v-${k}`)));
        const collect = async (range: KvRange, max: number, seekTo?: string): Promise<string[]> => {
          const it = store.iterator(range);
          if (seekTo) it.seek(b(seekTo));
          const out: string[] = [];
          try {
            for (let batch = await it.nextBatch(max); batch.length > 0; batch = await it.nextBatch(max)) {
              expect(batch.length).to.be.at.most(max);
              for (const [k, v] of batch) {
                expect(v.toString()).to.equal(`v-${k.toString()}`);
                out.push(k.toString());
              }
            }
            expect(await it.nextBatch(max)).to.deep.equal([]);
          } finally {
            await it.close();
          }
          return out;
        };
        expect(await collect({}, 500)).to.deep.equal(keys);
        expect(await collect({ limit: 1234 }, 100)).to.deep.equal(keys.slice(0, 1234));
        expect(await collect({ gt: b('k00010'), lt: b('k02000') }, 7)).to.deep.equal(keys.slice(11, 2000));
        expect(await collect({ reverse: true, lt: b('k00100') }, 33)).to.deep.equal(keys.slice(0, 100).reverse());
        expect(await collect({}, 1000, 'k02990')).to.deep.equal(keys.slice(2990));
      });
    });

    describe('#iterator seek', () => {
      beforeEach(async () => {
        await store.write(['b', 'd', 'f', 'h'].map((k) => put(k, k)));
      });

      async function keysAfterSeek(range: KvRange, target: Buffer | string, count = 10): Promise<string[]> {
        const it = store.iterator(range);
        try {
          it.seek(typeof target === 'string' ? b(target) : target);
          const out: string[] = [];
          for (let e = await it.next(); e && out.length < count; e = await it.next()) out.push(e[0].toString());
          return out;
        } finally {
          await it.close();
        }
      }

      it('moves to the first key at or after the target', async () => {
        expect(await keysAfterSeek({}, 'd')).to.deep.equal(['d', 'f', 'h']);
        expect(await keysAfterSeek({}, 'e')).to.deep.equal(['f', 'h']);
        expect(await keysAfterSeek({}, 'a')).to.deep.equal(['b', 'd', 'f', 'h']);
        expect(await keysAfterSeek({}, 'z')).to.deep.equal([]);
      });

      it('moves to the last key at or before the target in reverse', async () => {
        expect(await keysAfterSeek({ reverse: true }, 'f')).to.deep.equal(['f', 'd', 'b']);
        expect(await keysAfterSeek({ reverse: true }, 'e')).to.deep.equal(['d', 'b']);
        expect(await keysAfterSeek({ reverse: true }, 'z')).to.deep.equal(['h', 'f', 'd', 'b']);
        expect(await keysAfterSeek({ reverse: true }, 'a')).to.deep.equal([]);
      });

      it('can move backwards and forwards repeatedly', async () => {
        const it = store.iterator();
        it.seek(b('f'));
        expect((await it.next())?.[0].toString()).to.equal('f');
        it.seek(b('c'));
        expect((await it.next())?.[0].toString()).to.equal('d');
        it.seek(b('g'));
        expect((await it.next())?.[0].toString()).to.equal('h');
        expect(await it.next()).to.equal(undefined);
        it.seek(b('a'));
        expect((await it.next())?.[0].toString()).to.equal('b');
        await it.close();
      });

      it('stays within the range', async () => {
        expect(await keysAfterSeek({ lt: b('f') }, 'c')).to.deep.equal(['d']);
        expect(await keysAfterSeek({ lt: b('f') }, 'f')).to.deep.equal([]);
        expect(await keysAfterSeek({ reverse: true, gt: b('b') }, 'e')).to.deep.equal(['d']);
        expect(await keysAfterSeek({ reverse: true, gte: b('d') }, 'c')).to.deep.equal([]);
      });

      it('lands on the start of the range when the target lies before it', async () => {
        expect(await keysAfterSeek({ gte: b('d') }, 'a')).to.deep.equal(['d', 'f', 'h']);
        expect(await keysAfterSeek({ gt: b('d') }, 'a')).to.deep.equal(['f', 'h']);
        expect(await keysAfterSeek({ gt: b('d') }, 'd')).to.deep.equal(['f', 'h']);
        expect(await keysAfterSeek({ reverse: true, lte: b('f') }, 'z')).to.deep.equal(['f', 'd', 'b']);
        expect(await keysAfterSeek({ reverse: true, lt: b('f') }, 'z')).to.deep.equal(['d', 'b']);
        expect(await keysAfterSeek({ reverse: true, lt: b('f') }, 'f')).to.deep.equal(['d', 'b']);
      });

      it('treats an empty target as the smallest possible key', async () => {
        expect(await keysAfterSeek({}, Buffer.alloc(0))).to.deep.equal(['b', 'd', 'f', 'h']);
        expect(await keysAfterSeek({ reverse: true }, Buffer.alloc(0))).to.deep.equal([]);
      });

      it('counts the limit over all entries returned, across seeks', async () => {
        const it = store.iterator({ limit: 3 });
        const seen: string[] = [];
        seen.push((await it.next())![0].toString());
        it.seek(b('f'));
        for (let e = await it.next(); e; e = await it.next()) seen.push(e[0].toString());
        await it.close();
        expect(seen).to.deep.equal(['b', 'f', 'h']);

        const again = store.iterator({ limit: 2 });
        expect((await again.next())![0].toString()).to.equal('b');
        again.seek(b('a'));
        expect((await again.next())![0].toString()).to.equal('b');
        expect(await again.next()).to.equal(undefined);
        await again.close();
      });
    });

    describe('#close', () => {
      it('can be called twice', async () => {
        expect(store.isOpen).to.equal(true);
        await Promise.all([store.close(), store.close()]);
        await store.close();
        expect(store.isOpen).to.equal(false);
      });

      it('makes later operations fail with STORE_CLOSED', async () => {
        await store.write([put('a', '1')]);
        await store.close();
        await expectStoreClosed(store.get(b('a')));
        await expectStoreClosed(store.getMany([b('a')]));
        await expectStoreClosed(store.write([put('b', '2')]));
        expectThrowsStoreClosed(() => store.iterator());
      });

      it('ends open iterators, which then fail with STORE_CLOSED', async () => {
        await store.write([put('a', '1'), put('b', '2')]);
        const idle = store.iterator();
        const started = store.iterator();
        expect((await started.next())?.[0].toString()).to.equal('a');
        await store.close();
        await expectStoreClosed(idle.next());
        await expectStoreClosed(started.next());
        expectThrowsStoreClosed(() => started.seek(b('a')));
        await started.close();
        await started.close();
      });

      it('waits for a pending read before closing', async () => {
        await store.write(Array.from({ length: 100 }, (_, i) => put(`k${i}`, 'v'.repeat(100))));
        const it = store.iterator();
        const pending = it.next();
        const [entry] = await Promise.all([pending, store.close()]);
        expect(entry?.[0].toString()).to.equal('k0');
        expect(store.isOpen).to.equal(false);
      });

      it('lets an iterator be closed twice and refuses it afterwards', async () => {
        await store.write([put('a', '1')]);
        const it = store.iterator();
        await it.close();
        await it.close();
        const err = await it.next().then(() => undefined, (e: unknown) => e);
        expect(err).to.be.instanceOf(Error);
        expect(() => it.seek(b('a'))).to.throw();
        // The store itself is unaffected.
        expect(await store.get(b('a'))).to.deep.equal(b('1'));
      });
    });

    describe('persistence', () => {
      it('keeps data across close and reopen', async () => {
        const big = Buffer.alloc(64 * 1024, 7);
        await store.write([put('a', '1'), put('big', big), put('gone', 'x')]);
        await store.write([del('gone')], { sync: true });
        await store.close();
        store = await open(dir);
        expect(store.isOpen).to.equal(true);
        expect(await store.getMany([b('a'), b('big'), b('gone')])).to.deep.equal([b('1'), big, undefined]);
        expect(await keysOf(store)).to.deep.equal(['a', 'big']);
      });
    });
  });
}
