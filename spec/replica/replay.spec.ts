import { expect } from 'chai';
import { ReplicaFixture, stateOf, collectSnapshot } from '../helpers/replicas.js';
import { TestSite } from '../helpers/changes.js';
import { Random } from '../helpers/random.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { Replica } from '../../lib/replica/replica.js';
import { validateChangeSets } from '../../lib/protocol/validate.js';
import { encodeHlc, hlcFromWire, hlcToWire, compareHlc } from '../../lib/protocol/hlc.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

/** Random writes, overwrites and deletes from 3 sites, in `n` messages. */
async function history(replica: Replica, r: Random, n: number): Promise<void> {
  const sites = [new TestSite(), new TestSite(), new TestSite()];
  for (let i = 0; i < n; i++) {
    const site = r.pick(sites);
    const changes = Array.from({ length: 1 + r.int(4) }, () => (r.next() < 0.15
      ? { table: r.pick(['a', 'b']), pk: [r.int(20)], delete: true }
      : { table: r.pick(['a', 'b']), pk: [r.int(20)], column: r.pick(['x', 'y', 'z']), value: r.int(1000) }));
    await replica.apply(validateChangeSets([site.txn(changes)], { now: Date.now() }));
  }
}

/** The whole change log after `cursor`, as the archive stores it: change sets whose hlc is their stamp. */
async function logAfter(replica: Replica, cursor?: Buffer): Promise<ChangeSet[]> {
  const out: ChangeSet[] = [];
  for (let at = cursor; ;) {
    const page = await replica.changesSince(at, undefined, 100);
    out.push(...page.changeSets);
    if (!page.hasMore) return out;
    at = page.lastStamp;
  }
}

async function replayInto(target: Replica, sets: ChangeSet[]): Promise<void> {
  const valid = validateChangeSets(sets, { now: Date.now() });
  await target.replay(valid, sets.map((s) => hlcFromWire(s.hlc)));
}

/** The snapshot minus what a replay legitimately changes (the snapshot id, tombstone creation times). */
async function comparable(replica: Replica): Promise<unknown[]> {
  return (await collectSnapshot(replica)).map((chunk) => {
    if (chunk.type === 'header' || chunk.type === 'footer') return { ...chunk, snapshotId: '' };
    if (chunk.type === 'tombstone') return { ...chunk, entries: chunk.entries.map((e) => ({ ...e, createdAt: 0 })) };
    return chunk;
  });
}

describe('replica: archive primitives', () => {
  const fixture = new ReplicaFixture();
  afterEach(() => fixture.cleanup());

  describe('#replay', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      it(`rebuilds the same state and log, under the same stamps, from the log alone (seed ${seed})`, async () => {
        const r = new Random(seed);
        const { replica: source } = await fixture.create();
        await history(source, r, 150);
        const { replica: copy } = await fixture.create();
        await replayInto(copy, await logAfter(source));
        expect(await stateOf(copy)).to.deep.equal(await stateOf(source));
        // Every cursor handed out by the source means the same on the copy.
        const log = await logAfter(source);
        for (const cursor of [undefined, ...log.filter(() => r.next() < 0.2).map((s) => hlcFromWire(s.hlc))]) {
          expect(await logAfter(copy, cursor), `after ${cursor ? hlcToWire(cursor) : 'the start'}`).to.deep.equal(await logAfter(source, cursor));
        }
      });
    }

    it('replays whole messages with the outcome an apply of each would have', async () => {
      const site = new TestSite();
      const first = site.txn([{ pk: [1], value: 'a' }, { pk: [2], value: 'b' }]);
      const second = site.txn([{ pk: [1], value: 'c' }]);
      const messages = [validateChangeSets([first], { now: Date.now() }), validateChangeSets([first, second], { now: Date.now() })];
      const { replica: applied } = await fixture.create();
      const expected = [];
      for (const m of messages) expected.push(await applied.apply(m));
      const { replica: replayed } = await fixture.create();
      const base = Date.now();
      const stamps = [[stampAt(replayed, base, 1)], [stampAt(replayed, base, 2), stampAt(replayed, base, 3)]];
      const outcomes = await replayed.replayMessages(messages, stamps);
      expect(outcomes.map(({ applied: a, skipped, conflicts, transactions }) => ({ a, skipped, conflicts, transactions })))
        .to.deep.equal(expected.map(({ applied: a, skipped, conflicts, transactions }) => ({ a, skipped, conflicts, transactions })));
      // Only change sets that changed something are stamped, with the stamps given.
      expect(outcomes[1]!.stamps.map(hlcToWire)).to.deep.equal([hlcToWire(stamps[1]![1]!)]);
      expect(await stateOf(replayed)).to.deep.equal(await stateOf(applied));
    });

    it('continues stamps above the replayed ones', async () => {
      const { replica: source } = await fixture.create();
      await history(source, new Random(9), 20);
      const { replica: copy } = await fixture.create();
      await replayInto(copy, await logAfter(source));
      const last = copy.committedStamp!;
      expect(compareHlc(last, source.committedStamp!)).to.equal(0);
      const outcome = await copy.apply(validateChangeSets([new TestSite().txn([{ pk: [999], value: 'new' }])], { now: Date.now() }));
      expect(compareHlc(outcome.stamps[0]!, last)).to.equal(1);
    });
  });

  describe('#entries', () => {
    it('is a consistent copy: a store filled with them opens as the same replica', async () => {
      const { replica: source } = await fixture.create();
      await history(source, new Random(11), 100);
      const dir = await makeTempDir('replica-copy-');
      try {
        const store = await openLevelStore(dir);
        let batch: { type: 'put'; key: Buffer; value: Buffer }[] = [];
        for await (const [key, value] of source.entries()) {
          batch.push({ type: 'put', key: Buffer.from(key), value: Buffer.from(value) });
          if (batch.length >= 500) { await store.write(batch); batch = []; }
        }
        await store.write(batch);
        const copy = await Replica.open(store);
        try {
          expect(copy.siteIdWire).to.equal(source.siteIdWire);
          expect(await comparable(copy)).to.deep.equal(await comparable(source));
          // A copy taken at some point plus a replay of what came after equals the source.
          const at = copy.committedStamp!;
          await history(source, new Random(12), 50);
          await replayInto(copy, await logAfter(source, at));
          expect(await stateOf(copy)).to.deep.equal(await stateOf(source));
        } finally {
          await copy.close();
        }
      } finally {
        await removeTempDir(dir);
      }
    });
  });

  describe('#markArchived', () => {
    it('remembers the archived stamp across reopen and never moves it back', async () => {
      const dir = await makeTempDir('replica-archived-');
      try {
        let replica = await Replica.open(await openLevelStore(dir));
        await history(replica, new Random(13), 10);
        const stamp = replica.committedStamp!;
        expect(await replica.archivedStamp()).to.equal(undefined);
        await replica.markArchived(stamp);
        await replica.close();
        replica = await Replica.open(await openLevelStore(dir));
        expect((await replica.archivedStamp())!.equals(stamp)).to.equal(true);
        await replica.markArchived(Buffer.alloc(30));
        expect((await replica.archivedStamp())!.equals(stamp)).to.equal(true);
        await replica.close();
      } finally {
        await removeTempDir(dir);
      }
    });
  });
});

/** A stamp of the replica's own site at (wall, counter). */
function stampAt(replica: Replica, wall: number, counter: number): Buffer {
  return encodeHlc({ wallTime: wall, counter, siteId: replica.siteId, opSeq: 0 });
}
