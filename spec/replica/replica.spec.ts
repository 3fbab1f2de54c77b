import { expect } from 'chai';
import { TestSite, valid } from '../helpers/changes.js';
import { ReplicaFixture, collectSnapshot, stateOf } from '../helpers/replicas.js';
import { hlcFromWire, hlcToWire, compareHlc, encodeHlc } from '../../lib/protocol/hlc.js';
import { siteIdToWire } from '../../lib/protocol/site-id.js';
import type { ChangeSet, SnapshotChunk } from '../../lib/protocol/messages.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { SyncError } from '../../lib/errors.js';
import { logs } from '../../lib/log.js';

describe('replica', () => {
  const fixture = new ReplicaFixture();
  afterEach(() => fixture.cleanup());

  describe('#apply', () => {
    it('applies column writes and counts duplicates as skipped and losers as conflicts', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const first = a.txn([{ pk: [1], column: 'title', value: 'hello' }, { pk: [1], column: 'body', value: 'world' }]);
      expect(await replica.apply(valid([first]))).to.include({ applied: 2, skipped: 0, conflicts: 0, transactions: 1 });
      expect(await replica.apply(valid([first]))).to.include({ applied: 0, skipped: 2, conflicts: 0, transactions: 1 });
      const stale = a.txn([{ pk: [1], column: 'title', value: 'older' }], [], { wall: 1 });
      expect(await replica.apply(valid([stale]))).to.include({ applied: 0, skipped: 0, conflicts: 1 });
      const state = await stateOf(replica);
      expect(state.cells['main|notes|[1]|title']!.value).to.equal('hello');
    });

    it('gives each accepted change set the text pushes carry: the coordinator stamp as its hlc, not the origin HLC', async () => {
      const { replica } = await fixture.create();
      const set = new TestSite().txn([{ pk: [1], column: 'title', value: 'hello' }]);
      const outcome = await replica.apply(valid([set]));
      expect(outcome.stamps).to.have.length(1);
      const pushed = JSON.parse(outcome.acceptedJson[0]!) as ChangeSet;
      expect(pushed.hlc).to.equal(hlcToWire(outcome.stamps[0]!));
      expect(pushed.hlc).to.not.equal(set.hlc);
      expect(pushed.changes).to.deep.equal(set.changes);
    });

    it('keeps a deleted row deleted whether the late write arrives before or after the delete', async () => {
      const a = new TestSite();
      const b = new TestSite();
      const write = a.txn([{ pk: [7], column: 'title', value: 'late' }], [], { wall: Date.now() });
      const del = b.txn([{ pk: [7], delete: true }], [], { wall: Date.now() - 1000 });
      for (const order of [[write, del], [del, write]]) {
        const { replica } = await fixture.create();
        for (const set of order) await replica.apply(valid([set]));
        const state = await stateOf(replica);
        expect(state.cells).to.deep.equal({});
        expect(Object.keys(state.tombstones)).to.deep.equal(['main|notes|[7]']);
      }
    });

    it('with allowResurrection, a write newer than the tombstone brings the row back', async () => {
      const { replica } = await fixture.create({ allowResurrection: true });
      const a = new TestSite();
      const now = Date.now();
      await replica.apply(valid([a.txn([{ pk: [7], column: 'title', value: 'old' }], [], { wall: now - 3000 })]));
      await replica.apply(valid([a.txn([{ pk: [7], delete: true }], [], { wall: now - 2000 })]));
      const blocked = await replica.apply(valid([a.txn([{ pk: [7], column: 'title', value: 'mid' }], [], { wall: now - 2500 })]));
      expect(blocked).to.include({ applied: 0, skipped: 1 });
      await replica.apply(valid([a.txn([{ pk: [7], column: 'title', value: 'back' }], [], { wall: now - 1000 })]));
      expect((await stateOf(replica)).cells['main|notes|[7]|title']!.value).to.equal('back');
    });

    it('counts a write blocked by a tombstone in the same message as skipped', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const w = a.txn([{ pk: [3], column: 'title', value: 'x' }]);
      const d = a.txn([{ pk: [3], delete: true }]);
      expect(await replica.apply(valid([w, d]))).to.include({ applied: 1, skipped: 1, conflicts: 0, transactions: 2 });
    });

    it('stores migrations by (schema, kind, name, version) and skips an equal or older one', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const m1 = a.txn([], [{ table: 'notes', ddl: 'v1' }]);
      expect(await replica.apply(valid([m1]))).to.include({ applied: 1 });
      expect(await replica.apply(valid([m1]))).to.include({ applied: 0, skipped: 1 });
      const idx = a.txn([], [{ type: 'add_index', table: 'notes', ddl: 'create index' }]);
      expect(await replica.apply(valid([idx]))).to.include({ applied: 1 });
      expect(Object.keys((await stateOf(replica)).migrations).sort()).to.deep.equal(['main|index|notes|1', 'main|table|notes|1']);
    });

    it("skips changes stamped with the coordinator's own site id", async () => {
      const { replica } = await fixture.create();
      const self = new TestSite(Buffer.from(replica.siteId));
      const result = await replica.apply(valid([self.txn([{ pk: [1], value: 'echo' }])]));
      expect(result).to.include({ applied: 0, skipped: 1 });
      expect((await stateOf(replica)).cells).to.deep.equal({});
    });

    it('returns the applied part of each change set for push, with the original hlc', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const set = a.txn([{ pk: [1], value: 'a' }, { pk: [2], value: 'b' }]);
      await replica.apply(valid([a.txn([{ pk: [2], value: 'newer' }], [], { wall: Date.now() + 1000 })]));
      const out = await replica.apply(valid([set]));
      expect(out.accepted).to.have.length(1);
      expect(out.accepted[0]!.hlc).to.equal(set.hlc);
      expect(out.accepted[0]!.changes.map((c) => c.pk)).to.deep.equal([[1]]);
    });

    it('round-trips every value kind exactly (blob, bigint, unicode, empty string, composite pk)', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const values = [{ __bin: 'AQID/w==' }, { __bigint: '-9223372036854775808' }, 'héllo ✓ 𝄞', '', null, 1.5, true];
      const set = a.txn(values.map((value, i) => ({ pk: [i, 'k\u0000ey', { __bin: 'AA==' }], column: `c${i}`, value })));
      await replica.apply(valid([set]));
      const page = await replica.changesSince(undefined, undefined);
      expect(page.changeSets[0]!.changes.map((c) => (c.type === 'column' ? c.value : undefined))).to.deep.equal(values);
      expect(page.changeSets[0]!.changes[0]!.pk).to.deep.equal([0, 'k\u0000ey', { __bin: 'AA==' }]);
      const cells = (await stateOf(replica)).cells;
      expect(Object.values(cells).map((c) => c.value)).to.have.deep.members(values);
    });

    it('logs each change exactly as its canonical wire form', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const set = a.txn([
        { schema: 'sch "q"', table: 'tä\\b', pk: [1, { __bin: 'AA==' }], column: 'c\u0000"x"', value: { __bigint: '-9223372036854775808' } },
        { pk: ['k'], column: 'title', value: 'héllo ✓ 𝄞\n' },
        { pk: [2], delete: true, priorRow: [2, null] },
      ]);
      const withPrior = { ...set.changes[1]!, priorValue: 'old', priorHlc: set.changes[0]!.hlc } as typeof set.changes[number];
      set.changes.push({ ...withPrior, pk: ['p'] });
      const [validated] = valid([set]);
      await replica.apply([validated!]);
      const page = await replica.changesSince(undefined, undefined);
      expect(page.changeSets[0]!.changes).to.deep.equal(validated!.wire.changes);
      // Byte for byte, not only as parsed values.
      expect(page.json).to.contain(JSON.stringify(validated!.wire.changes[0]));
      expect(page.json).to.contain(JSON.stringify(validated!.wire.changes[3]));
    });

    it('writes nothing when the store refuses the batch', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], value: 'kept' }])]));
      // Test double: a write failure cannot be provoked on a healthy LevelDB.
      const store = replica.store as { write: (...args: unknown[]) => Promise<void> };
      const original = store.write;
      store.write = async () => { throw new Error('disk full'); };
      try {
        await replica.apply(valid([a.txn([{ pk: [1], value: 'lost' }, { pk: [2], value: 'lost' }])])).then(
          () => expect.fail('should reject'), (err: Error) => expect(err.message).to.equal('disk full'));
      } finally {
        store.write = original;
      }
      expect(Object.values((await stateOf(replica)).cells).map((c) => c.value)).to.deep.equal(['kept']);
      expect(replica.tableStats()).to.deep.equal([{ schema: 'main', table: 'notes', count: 1 }]);
    });
  });

  describe('#changesSince', () => {
    it('returns a change accepted after the cursor even when its own HLC is older (late offline edit)', async () => {
      const { replica } = await fixture.create();
      const online = new TestSite();
      const offline = new TestSite();
      const reader = new TestSite();
      await replica.apply(valid([online.txn([{ pk: [1], value: 'online' }], [], { wall: Date.now() })]));
      const first = await replica.changesSince(undefined, reader.id);
      const cursor = hlcFromWire(first.changeSets.at(-1)!.hlc);
      // Edited days ago, pushed only now.
      const old = offline.txn([{ pk: [2], value: 'offline' }], [], { wall: Date.now() - 3 * 86_400_000 });
      await replica.apply(valid([old]));
      const next = await replica.changesSince(cursor, reader.id);
      expect(next.changeSets).to.have.length(1);
      expect(next.changeSets[0]!.transactionId).to.equal(old.transactionId);
      expect(next.changeSets[0]!.changes[0]!.hlc).to.equal(old.changes[0]!.hlc);
      expect(compareHlc(hlcFromWire(next.changeSets[0]!.hlc), cursor)).to.be.greaterThan(0);
      // The stamp is the coordinator's, not the change's.
      expect(next.changeSets[0]!.hlc).not.to.equal(old.hlc);
    });

    it('marks a cursor above every committed stamp as ahead; a cursor within the log is not', async () => {
      const { replica } = await fixture.create();
      const reader = new TestSite();
      const ahead = encodeHlc({ wallTime: Date.now() + 86_400_000, counter: 0, siteId: reader.id, opSeq: 0 });
      expect((await replica.changesSince(ahead, reader.id)).cursorAhead, 'ahead of an empty log').to.equal(true);
      await replica.apply(valid([new TestSite().txn([{ pk: [1], value: 'a' }])]));
      const end = hlcFromWire((await replica.changesSince(undefined, reader.id)).changeSets[0]!.hlc);
      const page = await replica.changesSince(ahead, reader.id);
      expect(page.transactionCount).to.equal(0);
      expect(page.cursorAhead).to.equal(true);
      for (const cursor of [undefined, end]) {
        expect((await replica.changesSince(cursor, reader.id)).cursorAhead, cursor ? 'at the end' : 'from the beginning').to.equal(undefined);
      }
    });

    it("never returns the asking site's own changes", async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const b = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], value: 'a' }]), b.txn([{ pk: [2], value: 'b' }])]));
      const page = await replica.changesSince(undefined, a.id);
      expect(page.changeSets.map((s) => s.siteId)).to.deep.equal([b.wire]);
    });

    it('resolves overwritten and deleted entries instead of sending them stale', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], value: 'v1' }, { pk: [2], value: 'gone' }])]));
      await replica.apply(valid([a.txn([{ pk: [1], value: 'v2' }])]));
      await replica.apply(valid([a.txn([{ pk: [2], delete: true }])]));
      const page = await replica.changesSince(undefined, undefined);
      const changes = page.changeSets.flatMap((s) => s.changes);
      expect(changes.map((c) => (c.type === 'column' ? c.value : 'delete'))).to.deep.equal(['v2', 'delete']);
      expect(page.changeSets.every((s) => s.changes.length > 0)).to.equal(true);
    });

    it('pages through 2,500 transactions returning every change exactly once, then an empty page', async () => {
      const { replica } = await fixture.create();
      const sites = [new TestSite(), new TestSite(), new TestSite()];
      const expected = new Set<string>();
      for (let i = 0; i < 2500; i += 50) {
        const batch: ChangeSet[] = [];
        for (let j = i; j < i + 50; j++) {
          const set = sites[j % 3]!.txn([{ pk: [j], value: `v${j}` }, ...(j % 7 === 0 ? [{ pk: [j], column: 'body', value: 'b' }] : [])]);
          set.changes.forEach((c) => expected.add(c.hlc));
          batch.push(set);
        }
        await replica.apply(valid(batch));
      }
      const seen: string[] = [];
      let cursor: Buffer | undefined;
      let pages = 0;
      for (;;) {
        const page = await replica.changesSince(cursor, undefined, 100);
        pages++;
        if (page.changeSets.length === 0) {
          expect(page.hasMore).to.equal(false);
          break;
        }
        for (const set of page.changeSets) {
          expect(cursor === undefined || compareHlc(hlcFromWire(set.hlc), cursor) > 0).to.equal(true);
          cursor = hlcFromWire(set.hlc);
          seen.push(...set.changes.map((c) => c.hlc));
        }
        // Whole transactions: a page reaches the batch size by at most one transaction.
        expect(page.changeCount).to.be.at.most(101);
      }
      expect(seen).to.have.length(expected.size);
      expect(new Set(seen)).to.deep.equal(expected);
      expect(pages).to.be.greaterThan(25);
    });

    it('ends a page at the byte budget, keeping whole transactions and at least one', async () => {
      const { replica } = await fixture.create();
      const a = new TestSite();
      const big = 'x'.repeat(10_000);
      await replica.apply(valid(Array.from({ length: 10 }, (_, i) => a.txn([{ pk: [i], value: big }, { pk: [i], column: 'body', value: big }]))));
      let cursor: Buffer | undefined;
      const sizes: number[] = [];
      for (;;) {
        const page = await replica.changesSince(cursor, undefined, 1000, 30_000);
        sizes.push(page.transactionCount);
        expect(page.changeSets.every((s) => s.changes.length === 2)).to.equal(true);
        if (page.lastHlc) cursor = hlcFromWire(page.lastHlc);
        if (!page.hasMore) break;
      }
      expect(sizes.reduce((x, y) => x + y, 0)).to.equal(10);
      expect(Math.max(...sizes)).to.equal(2);
      expect((await replica.changesSince(undefined, undefined, 1000, 1)).transactionCount).to.equal(1);
    });

    it('refuses a cursor older than swept tombstones with SNAPSHOT_REQUIRED', async () => {
      let now = Date.now();
      const { replica } = await fixture.create({ now: () => now, retentionHorizonMs: 1000 });
      const a = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], value: 'x' }])]));
      const early = hlcFromWire((await replica.changesSince(undefined, undefined)).changeSets[0]!.hlc);
      await replica.apply(valid([a.txn([{ pk: [1], delete: true }])]));
      const afterDelete = await replica.lastStamp();
      now += 5000;
      const swept = await replica.sweep();
      expect(swept.swept).to.equal(1);
      expect((await stateOf(replica)).tombstones).to.deep.equal({});
      await replica.changesSince(early, undefined).then(
        () => expect.fail('should refuse'),
        (err: SyncError) => expect(err.code).to.equal('SNAPSHOT_REQUIRED'));
      // A cursor that already saw the deletion, or none at all, is fine.
      expect((await replica.changesSince(afterDelete, undefined)).changeSets).to.deep.equal([]);
      expect((await replica.changesSince(undefined, undefined)).changeSets).to.deep.equal([]);
    });

    it('keeps young tombstones and unrelated data when sweeping', async () => {
      let now = Date.now();
      const { replica } = await fixture.create({ now: () => now, retentionHorizonMs: 10_000 });
      const a = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], delete: true }])]));
      now += 6000;
      await replica.apply(valid([a.txn([{ pk: [2], delete: true }, { pk: [3], value: 'live' }])]));
      now += 6000;
      expect((await replica.sweep()).swept).to.equal(1);
      const state = await stateOf(replica);
      expect(Object.keys(state.tombstones)).to.deep.equal(['main|notes|[2]']);
      expect(Object.keys(state.cells)).to.deep.equal(['main|notes|[3]|title']);
    });
  });

  describe('#snapshot', () => {
    async function seeded(options = {}): Promise<Replica> {
      const { replica } = await fixture.create({ snapshotChunkSize: 3, ...options });
      const a = new TestSite();
      await replica.apply(valid([a.txn([], [{ table: 'notes' }, { table: 'tags' }])]));
      await replica.apply(valid([a.txn(Array.from({ length: 7 }, (_, i) => ({ pk: [i], value: `n${i}` })))]));
      await replica.apply(valid([a.txn(Array.from({ length: 4 }, (_, i) => ({ table: 'tags', pk: [i], column: 'label', value: `t${i}` })))]));
      await replica.apply(valid([a.txn([{ pk: [100], delete: true, priorRow: [100, 'x'] }, { table: 'tags', pk: [3], delete: true }])]));
      return replica;
    }

    it('streams chunks in the order of §6 with matching counts', async () => {
      const replica = await seeded();
      const chunks = await collectSnapshot(replica);
      const types = chunks.map((c) => c.type);
      expect(types).to.deep.equal([
        'header', 'schema-migration', 'schema-migration',
        'table-start', 'column-versions', 'column-versions', 'column-versions', 'table-end',
        'table-start', 'column-versions', 'table-end',
        'tombstone', 'tombstone', 'footer',
      ]);
      const header = chunks[0] as Extract<SnapshotChunk, { type: 'header' }>;
      const footer = chunks.at(-1) as Extract<SnapshotChunk, { type: 'footer' }>;
      expect(header).to.include({ siteId: siteIdToWire(replica.siteId), snapshotFormat: 1, tableCount: 2, migrationCount: 2 });
      expect(header.hlc).to.equal(hlcToWire((await replica.lastStamp())!));
      expect(footer).to.deep.equal({ type: 'footer', snapshotId: header.snapshotId, totalTables: 2, totalEntries: 10, totalMigrations: 2 });
      const starts = chunks.filter((c) => c.type === 'table-start');
      expect(starts.map((c) => (c as { estimatedEntries: number }).estimatedEntries)).to.deep.equal([7, 3]);
      const ends = chunks.filter((c) => c.type === 'table-end');
      expect(ends.map((c) => (c as { entriesWritten: number }).entriesWritten)).to.deep.equal([7, 3]);
      const tomb = chunks.find((c) => c.type === 'tombstone' && c.table === 'notes') as Extract<SnapshotChunk, { type: 'tombstone' }>;
      expect(tomb.entries[0]).to.include.keys('pk', 'hlc', 'createdAt', 'priorRow');
      expect(tomb.entries[0]!.priorRow).to.deep.equal([100, 'x']);
    });

    it('reflects one consistent view even when writes land mid-stream', async () => {
      const replica = await seeded();
      const a = new TestSite();
      const chunks: SnapshotChunk[] = [];
      let wrote = false;
      for await (const text of replica.snapshot()) {
        chunks.push(JSON.parse(text));
        if (!wrote) {
          wrote = true;
          await replica.apply(valid([a.txn([{ pk: [999], value: 'after' }, { table: 'other', pk: [1], value: 'new table' }])]));
        }
      }
      const footer = chunks.at(-1) as Extract<SnapshotChunk, { type: 'footer' }>;
      expect(footer.totalEntries).to.equal(10);
      expect(footer.totalTables).to.equal((chunks[0] as { tableCount: number }).tableCount);
    });

    it('resumes skipping completed tables, keeping the checkpoint as the cursor', async () => {
      const replica = await seeded();
      const full = await collectSnapshot(replica);
      const header = full[0] as Extract<SnapshotChunk, { type: 'header' }>;
      const checkpoint = {
        snapshotId: header.snapshotId, siteId: header.siteId, hlc: header.hlc, lastTableIndex: 0, lastEntryIndex: 6,
        completedTables: ['main.notes'], entriesProcessed: 7, createdAt: Date.now(),
      };
      const resumed = await collectSnapshot(replica, { checkpoint });
      const tables = resumed.filter((c) => c.type === 'table-start').map((c) => (c as { table: string }).table);
      expect(tables).to.deep.equal(['tags']);
      expect(resumed[0]).to.include({ hlc: header.hlc, snapshotId: header.snapshotId, tableCount: 1 });
      expect(resumed.at(-1)).to.include({ totalTables: 1, totalEntries: 3 });
      expect(resumed.filter((c) => c.type === 'tombstone')).to.have.length(2);
    });

    it('resumes a checkpoint as a real client sends it: its own site id, and a table dropped since', async () => {
      const replica = await seeded();
      const header = (await collectSnapshot(replica))[0] as Extract<SnapshotChunk, { type: 'header' }>;
      const client = new TestSite();
      // As in spec/fixtures/real-client-resume.jsonl seq 165: checkpoint.siteId is the client's own.
      const checkpoint = {
        snapshotId: header.snapshotId, siteId: client.wire, hlc: header.hlc, lastTableIndex: 1, lastEntryIndex: 0,
        completedTables: ['main.notes', 'main.dropped_since'], entriesProcessed: 7, createdAt: Date.now(),
      };
      const resumed = await collectSnapshot(replica, { checkpoint });
      expect(resumed[0]).to.include({ siteId: replica.siteIdWire, hlc: header.hlc, snapshotId: header.snapshotId, tableCount: 1 });
      expect(resumed.filter((c) => c.type === 'table-start').map((c) => (c as { table: string }).table)).to.deep.equal(['tags']);
      expect(resumed.at(-1)).to.include({ type: 'footer', totalTables: 1, totalEntries: 3 });
    });

    it('streams a fresh full snapshot for a checkpoint later than anything this database issued (restored backup)', async () => {
      const replica = await seeded();
      const last = hlcToWire((await replica.lastStamp())!);
      const future = hlcToWire(encodeHlc({ wallTime: Date.now() + 10 ** 9, counter: 0, siteId: replica.siteId, opSeq: 0 }));
      const lines = await capturingReplicaLog(async () => {
        const chunks = await collectSnapshot(replica, { checkpoint: { ...checkpointFor('old-snapshot', future), completedTables: ['main.notes', 'main.tags'] } });
        expectFullSnapshot(chunks, 'old-snapshot', last);
      });
      expect(lines.join('\n')).to.contain('old-snapshot').and.contain('fresh full snapshot');
    });

    it('streams a fresh full snapshot for any checkpoint to a database that has issued nothing', async () => {
      const { replica } = await fixture.create();
      const hlc = hlcToWire(encodeHlc({ wallTime: Date.now() - 1000, counter: 0, siteId: replica.siteId, opSeq: 0 }));
      const chunks = await collectSnapshot(replica, { checkpoint: { ...checkpointFor('gone', hlc), completedTables: ['main.notes'] } });
      expect(chunks[0]).to.include({ type: 'header', hlc: hlcToWire(Buffer.concat([Buffer.alloc(10), replica.siteId, Buffer.alloc(4)])), tableCount: 0 });
      expect(chunks[0]).to.not.include({ snapshotId: 'gone' });
      expect(chunks.map((c) => c.type)).to.deep.equal(['header', 'footer']);
    });

    it('streams a fresh full snapshot for a checkpoint older than the retention floor, with a cursor get_changes accepts', async () => {
      let now = Date.now();
      const { replica } = await fixture.create({ retentionHorizonMs: 1000, now: () => now });
      const a = new TestSite();
      await replica.apply(valid([a.txn([{ pk: [1], value: 'kept' }, { pk: [2], value: 'doomed' }])]));
      const old = (await collectSnapshot(replica))[0] as Extract<SnapshotChunk, { type: 'header' }>;
      await replica.apply(valid([a.txn([{ pk: [2], delete: true }])]));
      now += 10_000;
      expect((await replica.sweep()).swept).to.equal(1);
      const last = hlcToWire((await replica.lastStamp())!);
      const lines = await capturingReplicaLog(async () => {
        const chunks = await collectSnapshot(replica, { checkpoint: { ...checkpointFor(old.snapshotId, old.hlc), completedTables: ['main.notes'] } });
        expectFullSnapshot(chunks, old.snapshotId, last);
        const cells = chunks.filter((c) => c.type === 'column-versions').flatMap((c) => (c as { entries: { pk: unknown[] }[] }).entries.map((e) => e.pk));
        expect(cells).to.deep.equal([[1]]);
      });
      expect(lines.join('\n')).to.contain('retention floor');
      // The new header cursor is above the floor: the client's next get_changes is answered.
      expect((await replica.changesSince(hlcFromWire(last), undefined)).changeSets).to.deep.equal([]);
    });

    it('refuses a malformed checkpoint with INVALID_CHECKPOINT naming the field and value, before streaming anything', async () => {
      const replica = await seeded();
      const header = (await collectSnapshot(replica))[0] as Extract<SnapshotChunk, { type: 'header' }>;
      const good = checkpointFor(header.snapshotId, header.hlc);
      const cases: [string, unknown, string][] = [
        ['wrong type', { ...good, lastEntryIndex: 'x' }, 'checkpoint.lastEntryIndex: expected an integer >= -1, got "x"'],
        ['out of range', { ...good, lastTableIndex: -2 }, 'checkpoint.lastTableIndex: expected an integer >= -1, got -2'],
        ['bad base64 hlc', { ...good, hlc: 'not base64!' }, 'checkpoint.hlc: expected 30 bytes of base64, got "not base64!"'],
        ['empty hlc', { ...good, hlc: '' }, 'checkpoint.hlc: got an empty string'],
        ['null hlc', { ...good, hlc: null }, 'checkpoint.hlc: got null'],
        ['malformed site id', { ...good, siteId: 'abc' }, 'checkpoint.siteId: expected 22 base64url characters, got "abc"'],
        ['table entry without a dot', { ...good, completedTables: ['notes'] }, 'checkpoint.completedTables[0]: expected "schema.table", got "notes"'],
        ['not an object', 'resume!', 'checkpoint: expected an object, got "resume!"'],
      ];
      for (const [label, checkpoint, message] of cases) {
        const got: string[] = [];
        try {
          for await (const text of replica.snapshot({ checkpoint })) got.push(text);
          expect.fail(`${label}: should refuse`);
        } catch (err) {
          expect((err as SyncError).code, label).to.equal('INVALID_CHECKPOINT');
          expect((err as Error).message, label).to.contain(message);
        }
        expect(got, label).to.deep.equal([]);
      }
    });

    it('after a reopen, recognizes stored cells and tombstones (the key filter is rebuilt from the store)', async () => {
      const { replica, dir } = await fixture.create();
      const a = new TestSite();
      const writes = a.txn(Array.from({ length: 200 }, (_, i) => ({ pk: [i], value: `v${i}` })));
      const del = a.txn([{ pk: [500], delete: true }]);
      await replica.apply(valid([writes, del]));
      await replica.close();
      const again = await Replica.open(await openLevelStore(dir));
      try {
        await again.whenFilterReady();
        expect(await again.apply(valid([writes, del]))).to.include({ applied: 0, skipped: 201 });
        expect(await again.apply(valid([a.txn([{ pk: [500], value: 'zombie' }])]))).to.include({ applied: 0, skipped: 1 });
        expect(again.tableStats()).to.deep.equal([{ schema: 'main', table: 'notes', count: 200 }]);
      } finally {
        await again.close();
      }
    });

    it('persists the server site id with the data', async () => {
      const { replica, dir } = await fixture.create();
      const siteId = Buffer.from(replica.siteId);
      await replica.close();
      const again = await Replica.open(await openLevelStore(dir));
      try {
        expect(again.siteId.equals(siteId)).to.equal(true);
      } finally {
        await again.close();
      }
    });
  });
});

/** A well-formed checkpoint of snapshot `snapshotId` at header `hlc`, held by some client. */
function checkpointFor(snapshotId: string, hlc: string): Record<string, unknown> {
  return { snapshotId, siteId: new TestSite().wire, hlc, lastTableIndex: 0, lastEntryIndex: 0, completedTables: [], entriesProcessed: 0, createdAt: Date.now() };
}

/** A complete stream under a new snapshot id whose header carries the current last stamp. */
function expectFullSnapshot(chunks: SnapshotChunk[], oldSnapshotId: string, lastStamp: string): void {
  const header = chunks[0] as Extract<SnapshotChunk, { type: 'header' }>;
  const footer = chunks.at(-1) as Extract<SnapshotChunk, { type: 'footer' }>;
  expect(header).to.include({ type: 'header', hlc: lastStamp });
  expect(header.snapshotId).to.be.a('string').and.not.equal(oldSnapshotId);
  expect(footer).to.include({ type: 'footer', snapshotId: header.snapshotId, totalTables: header.tableCount });
  const started = chunks.filter((c) => c.type === 'table-start').length;
  expect(started).to.equal(header.tableCount);
}

/** Runs `fn` with the sync-coordinator:replica debug namespace captured; returns the lines it logged. */
async function capturingReplicaLog(fn: () => Promise<void>): Promise<string[]> {
  const lines: string[] = [];
  const logger = logs.replica;
  const saved = { enabled: logger.enabled, log: logger.log };
  logger.enabled = true;
  logger.log = (...args: unknown[]) => { lines.push(args.map(String).join(' ')); };
  try {
    await fn();
  } finally {
    logger.enabled = saved.enabled;
    logger.log = saved.log;
  }
  return lines;
}
