import { expect } from 'chai';
import { META_FLOOR } from '../../lib/replica/keys.js';
import { summarizeStore, type SummaryProgress } from '../../lib/replica/summary.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { TestSite, valid } from '../helpers/changes.js';
import { ReplicaFixture } from '../helpers/replicas.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

describe('summary', () => {
  const fixture = new ReplicaFixture();
  afterEach(() => fixture.cleanup());

  describe('#summarizeStore', () => {
    it('counts rows, column versions, tombstones and the latest stamp per table, and the meta stamps a sweep and an archive left', async () => {
      let now = Date.now();
      const { replica } = await fixture.create({ now: () => now, retentionHorizonMs: 1000 });
      const a = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], value: 'gone soon' }], [{ table: 'notes' }])]));
      await replica.apply(valid([a.txn([{ pk: [1], delete: true }])]));
      now += 5000;
      expect((await replica.sweep()).swept, 'the tombstone of pk 1 is swept').to.equal(1);
      const floor = await replica.store.get(META_FLOOR);
      await replica.apply(valid([
        a.txn([{ pk: [2], value: 'two' }, { pk: [2], column: 'body', value: 'b' }, { pk: [3], value: 'three' }, { table: 'tags', pk: ['t'], column: 'name', value: 'x' }]),
        a.txn([{ pk: [3], delete: true }, { table: 'tags', pk: ['u'], delete: true }]),
      ]));
      const archived = await replica.lastStamp();
      await replica.markArchived(archived!);
      await replica.apply(valid([a.txn([{ schema: 'Main', table: 'notes', pk: ['x\u0000y'], value: 'other schema' }])]));

      const summary = await summarizeStore(replica.store);
      expect(summary.keyFormat).to.equal(1);
      expect(summary.siteId.equals(replica.siteId)).to.equal(true);
      expect(summary.lastStamp!.equals((await replica.lastStamp())!)).to.equal(true);
      expect(summary.archivedStamp!.equals(archived!)).to.equal(true);
      expect(summary.retentionFloor!.equals(floor!)).to.equal(true);
      expect(summary.migrations).to.equal(1);
      const stamps = (await replica.changesSince(undefined, undefined)).changeSets.map((set) => set.hlc);
      expect(summary.tables.map(({ lastStamp, ...counts }) => ({ ...counts, lastStamp: lastStamp && stamps.indexOf(lastStamp.toString('base64')) }))).to.deep.equal([
        // "Main" sorts before "main": bytewise, as the keys.
        { schema: 'Main', table: 'notes', rows: 1, columnVersions: 1, tombstones: 0, lastStamp: 3 },
        { schema: 'main', table: 'notes', rows: 1, columnVersions: 2, tombstones: 1, lastStamp: 2 },
        { schema: 'main', table: 'tags', rows: 1, columnVersions: 1, tombstones: 1, lastStamp: 2 },
      ]);
      // The migration, the two column versions of pk 2, the tombstone of 3, tag t and tombstone u, the other schema's row.
      expect(summary.log).to.include({ entries: 1 + 2 + 1 + 1 + 1 + 1, transactions: stamps.length });
      expect(summary.log.bytes).to.be.above(0);
    });

    it('reports each part as it goes, from zero up to the total it announced', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const rows = 2500;
      await replica.apply(valid(Array.from({ length: 5 }, (_, t) => a.txn(Array.from({ length: rows / 5 }, (_, i) => ({ pk: [t * 1000 + i], value: i }))))));
      await replica.apply(valid([a.txn([{ pk: [0], delete: true }, { pk: [1], delete: true }])]));
      const reports: SummaryProgress[] = [];
      await summarizeStore(replica.store, { onProgress: (p) => reports.push(p) });
      expect([...new Set(reports.map((r) => r.part))]).to.deep.equal(['column versions', 'tombstones', 'change log']);
      const columns = reports.filter((r) => r.part === 'column versions');
      expect(columns[0]).to.deep.equal({ part: 'column versions', done: 0, total: rows - 2 });
      expect(columns.at(-1)).to.deep.equal({ part: 'column versions', done: rows - 2, total: rows - 2 });
      expect(columns.length, 'more than a start and an end').to.be.above(2);
      expect(reports.filter((r) => r.part === 'tombstones').at(-1)).to.deep.equal({ part: 'tombstones', done: 2 });
      expect(reports.at(-1)).to.deep.equal({ part: 'change log', done: rows, total: rows });
      for (let i = 1; i < reports.length; i++) {
        if (reports[i]!.part === reports[i - 1]!.part) expect(reports[i]!.done).to.be.at.least(reports[i - 1]!.done);
      }
    });

    it('summarizes a database that never accepted a change', async () => {
      const { replica } = await fixture.create();
      const summary = await summarizeStore(replica.store);
      expect(summary).to.deep.include({ tables: [], migrations: 0, log: { transactions: 0, entries: 0, bytes: 0 } });
      expect(summary).not.to.have.property('lastStamp');
      expect(summary).not.to.have.property('archivedStamp');
    });

    it('refuses a LevelDB store that is not a replica store', async () => {
      const dir = await makeTempDir('not-a-replica-');
      const store = await openLevelStore(dir);
      try {
        await store.write([{ type: 'put', key: Buffer.from('hello'), value: Buffer.from('world') }]);
        await summarizeStore(store).then(
          () => expect.fail('should refuse'),
          (err: Error) => expect(err.message).to.equal('not a replica store: it has no key format or server site id'),
        );
      } finally {
        await store.close();
        await removeTempDir(dir);
      }
    });
  });
});
