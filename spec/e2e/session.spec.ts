import { expect } from 'chai';
import type { IncomingMessage } from 'node:http';
import v8 from 'node:v8';
import vm from 'node:vm';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { SyncClient, SyncClientError } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import type { ChangeSet, ErrorMessage, SnapshotChunk } from '../../lib/protocol/messages.js';

const DB = 'acme:notes-42';

// One test checks what an idle socket keeps alive; mocha runs without --expose-gc.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function siteOf(client: SyncClient): TestSite {
  return new TestSite(Buffer.from(client.options.siteId, 'base64url'));
}

/** Applies the change sets a client received, to a plain map (a minimal client-side replica). */
function rowsFrom(changeSets: ChangeSet[]): Map<string, unknown> {
  const rows = new Map<string, unknown>();
  for (const set of changeSets) {
    for (const c of set.changes) {
      const row = JSON.stringify([c.table, c.pk]);
      if (c.type === 'delete') {
        for (const key of [...rows.keys()]) if (key.startsWith(row.slice(0, -1))) rows.delete(key);
      } else rows.set(JSON.stringify([c.table, c.pk, c.column]).replace(/]$/, ''), c.value);
    }
  }
  return rows;
}

function nextPush(client: SyncClient): Promise<ChangeSet[]> {
  return new Promise((resolve) => client.once('push', resolve));
}

describe('ws session', () => {
  let server: TestServer;
  beforeEach(async () => { server = await startTestServer({ batchSize: 50 }); });
  afterEach(() => server.close());

  describe('handshake', () => {
    it('acknowledges with the database, server site id, connection id and version', async () => {
      const client = await server.connect(DB);
      expect(client.serverSiteId).to.match(/^[A-Za-z0-9_-]{22}$/);
      expect(client.connectionId).to.be.a('string').and.not.equal('');
      const other = await server.connect(DB);
      expect(other.serverSiteId).to.equal(client.serverSiteId);
    });

    async function refused(overrides: Record<string, unknown>): Promise<{ error: ErrorMessage; code: number }> {
      const client = await SyncClient.open({ url: server.wsUrl, databaseId: DB, siteId: siteIdToWire(randomSiteId()) });
      const error = client.expect('error');
      client.send({ type: 'handshake', databaseId: DB, siteId: client.options.siteId, protocolVersion: 1, ...overrides });
      return { error: (await error) as ErrorMessage, code: await client.closed() };
    }

    it('checks the version first: v2 and a missing version close with 4003', async () => {
      const v2 = await refused({ protocolVersion: 2, databaseId: undefined });
      expect(v2.error).to.include({ code: 'PROTOCOL_VERSION_MISMATCH', fatal: true });
      expect(v2.error.message).to.contain('client speaks v2');
      expect(v2.code).to.equal(4003);
      const none = await refused({ protocolVersion: undefined });
      expect(none.error.message).to.contain('client sent none');
      expect(none.code).to.equal(4003);
    });

    it('refuses a version that is not a number with 4003, naming what was sent', async () => {
      const text = await refused({ protocolVersion: '1' });
      expect(text.error).to.include({ code: 'PROTOCOL_VERSION_MISMATCH', fatal: true });
      expect(text.error.message).to.contain('client sent protocolVersion "1"');
      expect(text.code).to.equal(4003);
      // An object whose toString is not a function cannot be turned into text by String().
      const object = await refused({ protocolVersion: { toString: 1 } });
      expect(object.error).to.include({ code: 'PROTOCOL_VERSION_MISMATCH', fatal: true });
      expect(object.error.message).to.contain('client sent protocolVersion object');
      expect(object.code).to.equal(4003);
    });

    it('closes with 4002 without a databaseId and 4001 for a bad database or site id', async () => {
      const missing = await refused({ databaseId: undefined });
      expect(missing.error).to.include({ code: 'MISSING_DATABASE_ID', fatal: true });
      expect(missing.code).to.equal(4002);
      const badDb = await refused({ databaseId: 'bad id/with spaces' });
      expect(badDb.error).to.include({ code: 'AUTH_FAILED', fatal: true });
      expect(badDb.error.message).to.contain('bad id/with spaces');
      expect(badDb.code).to.equal(4001);
      const badSite = await refused({ siteId: 'abc' });
      expect(badSite.error.code).to.equal('AUTH_FAILED');
      expect(badSite.error.message).to.contain('siteId');
      expect(badSite.code).to.equal(4001);
    });

    it('answers messages before the handshake with NOT_AUTHENTICATED and keeps the socket', async () => {
      const client = await SyncClient.open({ url: server.wsUrl, databaseId: DB, siteId: siteIdToWire(randomSiteId()) });
      const err = await client.request('error', { type: 'get_changes' }) as ErrorMessage;
      expect(err).to.deep.equal({ type: 'error', code: 'NOT_AUTHENTICATED', message: 'Must handshake first', fatal: false });
      await client.handshake();
      expect((await client.getChanges()).changeSets).to.deep.equal([]);
      await client.close();
    });

    it('keeps nothing of the upgrade request (headers included) once the socket is open: an idle socket costs only its session', async () => {
      // Weak references only: the test itself must not keep the request alive.
      const refs: WeakRef<object>[] = [];
      server.server.on('upgrade', (req: IncomingMessage) => { refs.push(new WeakRef(req), new WeakRef(req.headers)); });
      const client = await server.connect(DB);
      expect(refs).to.have.length(2);
      for (let i = 0; i < 3; i++) {
        await new Promise((resolve) => setImmediate(resolve));
        gc();
      }
      expect(refs.map((ref) => ref.deref() === undefined)).to.deep.equal([true, true]);
      // The session itself is alive and well.
      await client.ping();
    });

    it('refuses a second handshake as ALREADY_AUTHENTICATED (fatal)', async () => {
      const client = await server.connect(DB);
      const err = await client.request('error', { type: 'handshake', databaseId: DB, siteId: client.options.siteId, protocolVersion: 1 }) as ErrorMessage;
      expect(err).to.include({ code: 'ALREADY_AUTHENTICATED', fatal: true });
    });
  });

  describe('bad messages', () => {
    it('keeps the session through junk, unknown types and invalid batches, storing nothing of them', async () => {
      const client = await server.connect(DB);
      const site = siteOf(client);
      client.send('{"type": "get_changes", oops');
      expect(await client.expect('error')).to.include({ code: 'MESSAGE_ERROR', fatal: false });
      expect(await client.request('error', { type: 'frobnicate' })).to.deep.include({ code: 'UNKNOWN_MESSAGE', message: 'Unknown message type: frobnicate' });
      expect(await client.request('error', { hello: 'world' })).to.deep.include({ code: 'UNKNOWN_MESSAGE', message: 'Unknown message type: undefined' });
      expect(await client.request('error', { type: { toString: 1 } })).to.deep.include({ code: 'UNKNOWN_MESSAGE', message: 'Unknown message type: object', fatal: false });
      expect(await client.request('error', { type: 'get_changes', sinceHLC: 'not-an-hlc' })).to.include({ code: 'INVALID_HLC', fatal: false });
      const good = site.txn([{ pk: [1], value: 'ok' }]);
      const bad = site.txn([{ pk: [2], value: 'x' }]);
      (bad.changes[0] as { hlc: string }).hlc = 'AAAA';
      const err = await client.request('error', { type: 'apply_changes', requestId: 'b', changes: [good, bad] }) as ErrorMessage;
      expect(err.code).to.equal('INVALID_HLC');
      expect(err.message).to.match(/^changes\[1\]\.changes\[0\]\.hlc/);
      expect(await client.request('error', { type: 'apply_changes', changes: 'nope' })).to.include({ code: 'INVALID_MESSAGE' });
      expect(await client.request('error', { type: 'apply_changes', requestId: 5, changes: [] })).to.include({ code: 'INVALID_MESSAGE' });
      await client.ping();
      // Nothing of the refused batch, including its valid first change set, was stored.
      expect((await client.getChanges()).changeSets).to.deep.equal([]);
      const reader = await server.connect(DB);
      expect((await reader.getChanges()).changeSets).to.deep.equal([]);
    });

    it('refuses a far-future HLC anywhere in the message with CLOCK_DRIFT', async () => {
      const client = await server.connect(DB);
      const site = siteOf(client);
      const set = site.txn([{ pk: [1], value: 'future' }], [], { wall: Date.now() + 3_600_000 });
      set.hlc = site.txn([], [], { wall: Date.now() }).hlc;
      const err = await client.request('error', { type: 'apply_changes', changes: [set] }) as ErrorMessage;
      expect(err).to.include({ code: 'CLOCK_DRIFT', fatal: false });
      expect(err.message).to.contain('changes[0].changes[0].hlc');
    });
  });

  describe('sync', () => {
    it('makes two sites converge: column writes, deletes, migrations, blobs and bigints', async () => {
      const a = await server.connect(DB);
      const b = await server.connect(DB);
      const sa = siteOf(a);
      const sb = siteOf(b);
      const pushedToB = nextPush(b);
      const r1 = await a.apply([sa.txn([
        { pk: [1], column: 'title', value: 'hello' },
        { pk: [1], column: 'body', value: { __bin: 'AQID/w==' } },
        { pk: [2], column: 'title', value: { __bigint: '9223372036854775807' } },
      ], [{ table: 'notes', ddl: 'create table notes (id integer primary key, title, body)' }])], 'req-1');
      expect(r1).to.deep.equal({ type: 'apply_result', requestId: 'req-1', applied: 4, skipped: 0, conflicts: 0, transactions: 1 });
      expect((await pushedToB)[0]!.changes).to.have.length(3);
      const pushedToA = nextPush(a);
      await b.apply([sb.txn([{ pk: [1], column: 'title', value: 'edited' }, { pk: [2], delete: true }], [], { wall: Date.now() })]);
      await pushedToA;
      const fromA = await a.catchUp();
      const fromB = await b.catchUp();
      // Each side receives exactly the other's changes, never its own.
      expect(fromA.changeSets.every((s) => s.siteId === sb.wire)).to.equal(true);
      expect(fromB.changeSets.every((s) => s.siteId === sa.wire)).to.equal(true);
      const state = rowsFrom([...fromB.changeSets, ...fromA.changeSets].sort((x, y) => (x.hlc < y.hlc ? -1 : 1)));
      expect([...state.values()]).to.have.deep.members(['edited', { __bin: 'AQID/w==' }]);
      const schema = fromB.changeSets.flatMap((s) => s.schemaMigrations);
      expect(schema.map((m) => m.table)).to.deep.equal(['notes']);
    });

    it('lets a late third site join by snapshot and by paged get_changes', async () => {
      const a = await server.connect(DB);
      const sa = siteOf(a);
      for (let i = 0; i < 6; i++) {
        await a.apply([sa.txn(Array.from({ length: 20 }, (_, j) => ({ pk: [i * 20 + j], value: `v${i * 20 + j}` })))]);
      }
      await a.apply([sa.txn([{ pk: [0], delete: true }])]);
      const late = await server.connect(DB);
      const chunks = await late.snapshot();
      const header = chunks[0] as Extract<SnapshotChunk, { type: 'header' }>;
      expect(header.siteId).to.equal(late.serverSiteId);
      const entries = chunks.flatMap((c) => (c.type === 'column-versions' ? c.entries : []));
      expect(entries).to.have.length(119);
      expect(chunks.at(-1)).to.include({ type: 'footer', totalEntries: 119 });
      // Nothing after the snapshot's stamp yet.
      expect((await late.getChanges(header.hlc)).changeSets).to.deep.equal([]);
      const paged = await late.catchUp();
      const values = paged.changeSets.flatMap((s) => s.changes).filter((c) => c.type === 'column');
      expect(values).to.have.length(119);
      let pages = 0;
      let cursor: string | undefined;
      for (;;) {
        const page = await late.getChanges(cursor);
        pages++;
        if (!page.hasMore) break;
        cursor = page.changeSets.at(-1)!.hlc;
      }
      expect(pages).to.be.greaterThan(1);
    });

    it('keeps names and pks that differ only by a lone surrogate vs U+FFFD apart: push, get_changes and snapshot', async () => {
      const a = await server.connect(DB);
      const b = await server.connect(DB);
      const sa = siteOf(a);
      const cells = [
        { schema: 's\ud83d', table: 't\ud83d', pk: [1], column: 'c\ud83d', value: 'lone' },
        { schema: 's\ufffd', table: 't\ufffd', pk: [1], column: 'c\ufffd', value: 'replacement' },
        { pk: [1], column: 'c\udc00', value: 'lone low' },
        { pk: [1], column: 'c\ufffd', value: 'replacement column' },
        { pk: ['p\ud83d'], column: 'c', value: 'lone pk' },
        { pk: ['p\ufffd'], column: 'c', value: 'replacement pk' },
      ];
      const expected = cells.map((c) => [c.schema ?? 'main', c.table ?? 'notes', c.pk, c.column, c.value]);
      const pushed = nextPush(b);
      expect(await a.apply([sa.txn(cells)])).to.include({ applied: cells.length, skipped: 0 });
      const got = (sets: ChangeSet[]) => sets.flatMap((s) => s.changes).map((c) => c.type === 'column' && [c.schema, c.table, c.pk, c.column, c.value]);
      expect(got(await pushed)).to.have.deep.members(expected);
      expect(got((await b.catchUp()).changeSets)).to.have.deep.members(expected);
      const chunks = await b.snapshot();
      const snapped = chunks.flatMap((c) => (c.type === 'column-versions' ? c.entries.map((e) => [c.schema, c.table, e.pk, e.column, e.value]) : []));
      expect(snapped).to.have.deep.members(expected);
    });

    it('resumes a snapshot whose completedTables entry reads as two tables without skipping either', async () => {
      const a = await server.connect(DB);
      const sa = siteOf(a);
      await a.apply([sa.txn([
        { schema: 'main', table: 'x.y', pk: [1], column: 'c', value: 'in main / x.y' },
        { schema: 'main.x', table: 'y', pk: [1], column: 'c', value: 'in main.x / y' },
        { schema: 'main', table: 'done', pk: [1], column: 'c', value: 'done' },
      ])]);
      const b = await server.connect(DB);
      const header = (await b.snapshot())[0] as Extract<SnapshotChunk, { type: 'header' }>;
      const resumed = await b.snapshot({
        snapshotId: header.snapshotId, siteId: b.options.siteId, hlc: header.hlc, lastTableIndex: 2, lastEntryIndex: 0,
        completedTables: ['main.x.y', 'main.done'], entriesProcessed: 2, createdAt: Date.now(),
      });
      const values = resumed.flatMap((c) => (c.type === 'column-versions' ? c.entries.map((e) => e.value) : []));
      expect(values).to.have.members(['in main / x.y', 'in main.x / y']);
    });

    it("never pushes to the writer's site and never to other databases", async () => {
      const a = await server.connect(DB);
      const sameSite = await server.connect(DB, { siteId: a.options.siteId });
      const other = await server.connect(DB);
      const elsewhere = await server.connect('another-db');
      const got: Record<string, number> = { a: 0, same: 0, other: 0, elsewhere: 0 };
      a.on('push', () => got.a!++);
      sameSite.on('push', () => got.same!++);
      elsewhere.on('push', () => got.elsewhere!++);
      const pushed = nextPush(other);
      await a.apply([siteOf(a).txn([{ pk: [1], value: 'x' }])]);
      await pushed;
      // A round trip on each socket: any push sent before it has arrived.
      await Promise.all([a.ping(), sameSite.ping(), elsewhere.ping()]);
      expect(got).to.deep.equal({ a: 0, same: 0, other: 0, elsewhere: 0 });
      expect((await elsewhere.getChanges()).changeSets).to.deep.equal([]);
    });

    it('answers pipelined applies in order, and a read after them sees them all', async () => {
      const a = await server.connect(DB);
      const site = siteOf(a);
      const results: string[] = [];
      a.on('message', (m: { type: string; requestId?: string }) => { if (m.type === 'apply_result') results.push(m.requestId!); });
      const sets = Array.from({ length: 40 }, (_, i) => site.txn([{ pk: [i % 7], value: `v${i}` }, { pk: [100 + i], value: 'x' }]));
      // One duplicate in the middle, and one invalid message that must not disturb the order.
      const frames = sets.map((set, i) => ({ type: 'apply_changes', requestId: `p${i}`, changes: [set] }));
      frames.splice(20, 0, { type: 'apply_changes', requestId: 'dup', changes: [sets[3]!] }, { type: 'apply_changes', requestId: 'bad', changes: 'nope' as never });
      const error = a.expect('error');
      for (const frame of frames) a.send(frame);
      const page = await a.request('changes', { type: 'get_changes' });
      expect((await error as { code: string }).code).to.equal('INVALID_MESSAGE');
      expect(results).to.deep.equal(frames.filter((f) => f.requestId !== 'bad').map((f) => f.requestId));
      expect((page as { changeSets: unknown[] }).changeSets).to.deep.equal([]);
      const reader = await server.connect(DB);
      const all = await reader.catchUp();
      const values = new Map<string, unknown>();
      for (const set of all.changeSets) for (const c of set.changes) if (c.type === 'column') values.set(JSON.stringify(c.pk), c.value);
      // Each cell holds the last write sent to it, as if the messages had been applied one by one.
      for (let k = 0; k < 7; k++) {
        const last = Math.max(...Array.from({ length: 40 }, (_, i) => i).filter((i) => i % 7 === k));
        expect(values.get(JSON.stringify([k]))).to.equal(`v${last}`);
      }
      expect([...values.keys()]).to.have.length(47);
    });

    it('pushes only what changed state, and nothing for a duplicate', async () => {
      const a = await server.connect(DB);
      const b = await server.connect(DB);
      const set = siteOf(a).txn([{ pk: [1], value: 'x' }]);
      const first = nextPush(b);
      await a.apply([set]);
      await first;
      let pushes = 0;
      b.on('push', () => pushes++);
      expect(await a.apply([set])).to.include({ applied: 0, skipped: 1 });
      await b.ping();
      expect(pushes).to.equal(0);
    });

    it('answers resume_snapshot with the checkpoint a real client sends, and refuses a malformed one without ending the session', async () => {
      const writer = await server.connect(DB);
      await writer.apply([siteOf(writer).txn([{ pk: [1], value: 'x' }, { table: 'tags', pk: [1], value: 't' }])]);
      const a = await server.connect(DB);
      const header = (await a.snapshot())[0] as Extract<SnapshotChunk, { type: 'header' }>;
      // As in spec/fixtures/real-client-resume.jsonl seq 165: the client's own site id, and here a table dropped since.
      const resumed = await a.snapshot({
        snapshotId: header.snapshotId, siteId: a.options.siteId, hlc: header.hlc, lastTableIndex: 0, lastEntryIndex: 0,
        completedTables: ['main.notes', 'main.missing'], entriesProcessed: 1, createdAt: Date.now(),
      });
      expect(resumed[0]).to.include({ type: 'header', snapshotId: header.snapshotId, hlc: header.hlc });
      expect(resumed.filter((c) => c.type === 'table-start').map((c) => (c as { table: string }).table)).to.deep.equal(['tags']);
      await a.snapshot({ ...(header as unknown as Record<string, unknown>), siteId: a.options.siteId, completedTables: 'main.notes', lastTableIndex: 0, lastEntryIndex: 0, entriesProcessed: 0, createdAt: 1 } as never)
        .then(() => expect.fail('should refuse'), (err: SyncClientError) => {
          expect(err.code).to.equal('INVALID_CHECKPOINT');
          expect(err.message).to.contain('checkpoint.completedTables');
        });
      await a.ping();
    });

    it('bootstraps a client resuming from a checkpoint of a restored database with a fresh full snapshot, then serves its get_changes', async () => {
      const writer = await server.connect(DB);
      await writer.apply([siteOf(writer).txn([{ pk: [1], value: 'x' }, { table: 'tags', pk: [1], value: 't' }])]);
      const a = await server.connect(DB);
      // A checkpoint from a stream this database never issued: its hlc is ahead of every stamp here.
      const future = new TestSite().hlc(Date.now() + 86_400_000, 0, 0);
      const chunks = await a.snapshot({
        snapshotId: 'from-before-the-restore', siteId: a.options.siteId, hlc: future, lastTableIndex: 1, lastEntryIndex: 0,
        completedTables: ['main.notes', 'main.tags'], entriesProcessed: 2, createdAt: Date.now(),
      });
      const header = chunks[0] as Extract<SnapshotChunk, { type: 'header' }>;
      expect(header.snapshotId).to.not.equal('from-before-the-restore');
      expect(header.hlc).to.not.equal(future);
      expect(chunks.filter((c) => c.type === 'table-start').map((c) => (c as { table: string }).table)).to.have.members(['notes', 'tags']);
      // The header cursor is valid: nothing is missing and nothing is refused after it.
      const after = await a.getChanges(header.hlc);
      expect(after.changeSets).to.deep.equal([]);
      await writer.apply([siteOf(writer).txn([{ pk: [2], value: 'later' }])]);
      expect(rowsFrom((await a.catchUp(header.hlc)).changeSets)).to.deep.equal(new Map([['["notes",[2],"title"', 'later']]));
    });
  });
});
