import { expect } from 'chai';
import { TestSite, valid } from '../helpers/changes.js';
import { ReplicaFixture, collectSnapshot } from '../helpers/replicas.js';
import type { ChangeSet, ColumnChange, SnapshotChunk } from '../../lib/protocol/messages.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';

/** A lone high surrogate, and the replacement character UTF-8 would turn it into. */
const LONE = '\ud83d';
const FFFD = '\ufffd';

type Cell = { schema: string; table: string; pk: unknown[]; column: string; value: unknown };

/** Every cell of a snapshot, in a form that keeps names exactly (JSON keeps lone surrogates apart). */
function snapshotCells(chunks: SnapshotChunk[]): Cell[] {
  return chunks.filter((c) => c.type === 'column-versions').flatMap((c) => {
    const chunk = c as Extract<SnapshotChunk, { type: 'column-versions' }>;
    return chunk.entries.map((e) => ({ schema: chunk.schema, table: chunk.table, pk: e.pk, column: e.column, value: e.value }));
  });
}

function sortCells(cells: Cell[]): Cell[] {
  return [...cells].sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1));
}

describe('replica: names and keys that differ only in ways a byte encoding can lose', () => {
  const fixture = new ReplicaFixture();
  afterEach(() => fixture.cleanup());

  describe('lone UTF-16 surrogates', () => {
    // Each pair differs only by a lone surrogate vs U+FFFD, in one field.
    const drafts = [
      { column: `c${LONE}`, value: 'column with a lone surrogate' },
      { column: `c${FFFD}`, value: 'column with U+FFFD' },
      { table: `t${LONE}`, column: 'c', value: 'table with a lone surrogate' },
      { table: `t${FFFD}`, column: 'c', value: 'table with U+FFFD' },
      { schema: `s${LONE}`, column: 'c', value: 'schema with a lone surrogate' },
      { schema: `s${FFFD}`, column: 'c', value: 'schema with U+FFFD' },
      { pk: [`p${LONE}`], column: 'c', value: 'pk with a lone surrogate' },
      { pk: [`p${FFFD}`], column: 'c', value: 'pk with U+FFFD' },
      { table: '\udc00', column: '\udc00', value: 'lone low surrogates' },
      { table: FFFD, column: FFFD, value: 'replacement characters' },
    ];
    const expected: Cell[] = drafts.map((d) => ({ schema: d.schema ?? 'main', table: d.table ?? 'notes', pk: d.pk ?? [1], column: d.column, value: d.value }));

    function writes(site: TestSite): ChangeSet {
      return site.txn(drafts.map((d) => ({ pk: [1], ...d })));
    }

    it('stores each write in its own cell and returns them all distinct, values intact, in the change log and a snapshot', async () => {
      const { replica, dir } = await fixture.create();
      const set = writes(new TestSite());
      expect(await replica.apply(valid([set]))).to.include({ applied: drafts.length, skipped: 0, conflicts: 0 });

      const logged = (await replica.changesSince(undefined, undefined)).changeSets.flatMap((s) => s.changes as ColumnChange[]);
      expect(sortCells(logged.map((c) => ({ schema: c.schema, table: c.table, pk: c.pk, column: c.column, value: c.value })))).to.deep.equal(sortCells(expected));
      expect(sortCells(snapshotCells(await collectSnapshot(replica)))).to.deep.equal(sortCells(expected));
      const stats = replica.tableStats();

      // The table counts and key filter are rebuilt from the keys on reopen: still distinct.
      await replica.close();
      const again = await Replica.open(await openLevelStore(dir));
      try {
        await again.whenFilterReady();
        expect(sortCells(snapshotCells(await collectSnapshot(again)))).to.deep.equal(sortCells(expected));
        expect(again.tableStats()).to.have.deep.members(stats);
        expect(again.tableStats().map((t) => [t.schema, t.table])).to.have.deep.members(
          [['main', 'notes'], ['main', `t${LONE}`], ['main', `t${FFFD}`], [`s${LONE}`, 'notes'], [`s${FFFD}`, 'notes'], ['main', '\udc00'], ['main', FFFD]]);
        expect(again.tableStats().find((t) => t.schema === 'main' && t.table === 'notes')!.count).to.equal(4);
        // Re-sending the same message finds every cell where it was stored.
        expect(await again.apply(valid([set]))).to.include({ applied: 0, skipped: drafts.length });
      } finally {
        await again.close();
      }
    });

    it('a delete of one row removes exactly its cells, whatever its column names', async () => {
      const { replica } = await fixture.create();
      const site = new TestSite();
      await replica.apply(valid([writes(site)]));
      expect(await replica.apply(valid([site.txn([{ pk: [1], delete: true }, { table: `t${LONE}`, pk: [1], delete: true }])]))).to.include({ applied: 2 });
      const left = snapshotCells(await collectSnapshot(replica));
      expect(sortCells(left)).to.deep.equal(sortCells(expected.filter((c) => !(c.schema === 'main' && ((c.table === 'notes' && c.pk[0] === 1) || c.table === `t${LONE}`)))));
      const chunks = await collectSnapshot(replica);
      const tombs = chunks.filter((c) => c.type === 'tombstone').map((c) => (c as { table: string }).table);
      expect(tombs).to.have.members(['notes', `t${LONE}`]);
      expect(replica.tableStats().find((t) => t.table === 'notes' && t.schema === 'main')!.count).to.equal(2);
    });

    it('keeps migrations of objects whose names differ only by a lone surrogate apart', async () => {
      const { replica } = await fixture.create();
      const site = new TestSite();
      const set = site.txn([], [
        { table: `t${LONE}` }, { table: `t${FFFD}` },
        { type: 'add_index', table: `i${LONE}` }, { type: 'add_index', table: `i${FFFD}` },
        { schema: `s${LONE}`, table: 't' }, { schema: `s${FFFD}`, table: 't' },
      ]);
      expect(await replica.apply(valid([set]))).to.include({ applied: 6 });
      const migrations = (await collectSnapshot(replica)).filter((c) => c.type === 'schema-migration').map((c) => {
        const m = (c as Extract<SnapshotChunk, { type: 'schema-migration' }>).migration;
        return [m.schema, m.type, m.table];
      });
      expect(migrations).to.have.deep.members(set.schemaMigrations!.map((m) => [m.schema, m.type, m.table]));
      const logged = (await replica.changesSince(undefined, undefined)).changeSets.flatMap((s) => s.schemaMigrations ?? []);
      expect(logged.map((m) => [m.schema, m.type, m.table])).to.have.deep.members(migrations);
    });
  });

  describe('dotted names in a resume checkpoint (docs/protocol.md §6)', () => {
    async function resume(replica: Replica, completedTables: string[]): Promise<string[][]> {
      const header = (await collectSnapshot(replica))[0] as Extract<SnapshotChunk, { type: 'header' }>;
      const chunks = await collectSnapshot(replica, {
        checkpoint: {
          snapshotId: header.snapshotId, siteId: new TestSite().wire, hlc: header.hlc, lastTableIndex: 0, lastEntryIndex: 0,
          completedTables, entriesProcessed: 0, createdAt: Date.now(),
        },
      });
      const started = chunks.filter((c) => c.type === 'table-start').map((c) => [(c as { schema: string }).schema, (c as { table: string }).table]);
      expect(chunks[0]).to.include({ tableCount: started.length });
      expect(chunks.at(-1)).to.include({ type: 'footer', totalTables: started.length });
      return started;
    }

    it('skips neither of two tables that read the same dotted name', async () => {
      const { replica } = await fixture.create();
      const site = new TestSite();
      await replica.apply(valid([site.txn([
        { schema: 'main', table: 'x.y', pk: [1], value: 'in main / x.y' },
        { schema: 'main.x', table: 'y', pk: [1], value: 'in main.x / y' },
        { schema: 'main', table: 'other', pk: [1], value: 'other' },
      ])]));
      expect(await resume(replica, ['main.x.y'])).to.have.deep.members([['main', 'x.y'], ['main.x', 'y'], ['main', 'other']]);
      expect(await resume(replica, ['main.x.y', 'main.other'])).to.have.deep.members([['main', 'x.y'], ['main.x', 'y']]);
    });

    it('skips a dotted name that reads as exactly one table', async () => {
      const { replica } = await fixture.create();
      const site = new TestSite();
      await replica.apply(valid([site.txn([
        { schema: 'main', table: 'x.y', pk: [1], value: 'a' },
        { schema: 'main', table: 'other', pk: [1], value: 'b' },
      ])]));
      expect(await resume(replica, ['main.x.y'])).to.deep.equal([['main', 'other']]);
    });

    it('counts a table whose rows are all deleted, or only named by a migration, as a reading', async () => {
      const { replica } = await fixture.create();
      const site = new TestSite();
      await replica.apply(valid([site.txn([
        { schema: 'main', table: 'x.y', pk: [1], value: 'a' },
        { schema: 'main.x', table: 'y', pk: [1], value: 'b' },
        { schema: 'a', table: 'b.c', pk: [1], value: 'c' },
      ], [{ schema: 'a.b', table: 'c' }])]));
      // (main.x, y) keeps only a tombstone: the client may have completed it while it had rows.
      await replica.apply(valid([site.txn([{ schema: 'main.x', table: 'y', pk: [1], delete: true }])]));
      const started = await resume(replica, ['main.x.y', 'a.b.c']);
      expect(started).to.have.deep.members([['main', 'x.y'], ['a', 'b.c']]);
      // The walk over the tombstones' tables leaves the stream itself whole.
      const chunks = await collectSnapshot(replica);
      expect(snapshotCells(chunks).map((c) => c.value)).to.have.members(['a', 'c']);
    });
  });
});
