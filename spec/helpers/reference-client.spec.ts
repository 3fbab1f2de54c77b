import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { hlcToWire, encodeHlc } from '../../lib/protocol/hlc.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import { TestSite } from './changes.js';
import { FakeServer, type FakeConnection } from './fake-server.js';
import { ReferenceClient, readServerState, settle, type RowWrite } from './reference-client.js';
import { startTestServer, type TestServer } from './server.js';

// ---- the fixtures --------------------------------------------------------

interface Line { seq: number; conn: string; dir: string; msg: Record<string, unknown> }

function load(name: string): Line[] {
  const file = fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
  return readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line);
}

const REAL = load('real-client-transcript.jsonl');
const RESUME = load('real-client-resume.jsonl');

/** The client frames of one recorded connection, in order. */
function realSent(lines: Line[], conn: string): Record<string, unknown>[] {
  return lines.filter((l) => l.conn === conn && l.dir === 'c2s').map((l) => l.msg);
}

function realFrame(lines: Line[], seq: number): Record<string, unknown> {
  return lines.find((l) => l.seq === seq)!.msg;
}

const SHORTENED = /^…\(\d+ (items|chars)\)$/;

/**
 * The shape of a JSON value: object keys in order with their shapes, arrays
 * by their first element (the fixtures shorten long arrays to a few items
 * and a "…(N items)" marker), scalars by type.
 */
function shape(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) {
    const items = value.filter((v) => !(typeof v === 'string' && SHORTENED.test(v)));
    return items.length === 0 ? '[]' : `[${shape(items[0])}]`;
  }
  if (typeof value === 'object') return `{${Object.entries(value as Record<string, unknown>).map(([k, v]) => `${k}:${shape(v)}`).join(',')}}`;
  return typeof value;
}

/** Message types in order. */
const types = (frames: Record<string, unknown>[]): unknown[] => frames.map((f) => f.type);

/** The real client's typed row of seq 19 (columns id, s, i, r, n, b). */
function typedRow(id: number, s = `row-${id}`): RowWrite {
  return { pk: [id], values: { id, s, i: id * 10, r: id + 0.25, n: null, b: { __bin: Buffer.from([id & 255]).toString('base64') } } };
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

// ---- against the coordinator ---------------------------------------------

describe('reference client', function () {
  this.timeout(60_000);

  describe('against the coordinator, in the fixture\'s situations', () => {
    let server: TestServer;
    const clients: ReferenceClient[] = [];
    let dbCount = 0;
    const nextDb = () => `ref:${++dbCount}`;
    function client(databaseId: string, extra: Partial<ConstructorParameters<typeof ReferenceClient>[0]> = {}): ReferenceClient {
      const c = new ReferenceClient({ url: server.wsUrl, databaseId, record: true, reconnectDelayMs: 10, ...extra });
      clients.push(c);
      return c;
    }
    before(async () => { server = await startTestServer(); });
    afterEach(async () => { await Promise.all(clients.splice(0).map((c) => c.stop())); });
    after(() => server.close());

    it('bootstraps an empty database as c1 does: handshake, get_snapshot, then get_changes from the header hlc', async () => {
      const a = client(nextDb());
      a.start();
      await a.whenReady();
      await settle([a], () => false, { quietMs: 100, maxMs: 5000 });
      const mine = a.sent(1);
      const real = realSent(REAL, 'c1').slice(0, 3);
      expect(types(mine)).to.deep.equal(types(real));
      expect(mine.map(shape)).to.deep.equal(real.map(shape));
      const header = a.frames.find((f) => f.dir === 's2c' && f.msg.type === 'snapshot_chunk')!.msg.chunk as { hlc: string };
      expect(mine[2]!.sinceHLC).to.equal(header.hlc);
      // get_changes goes out only after snapshot_complete (seq 7 → 8).
      const order = a.frames.filter((f) => f.dir === 'c2s' || f.msg.type === 'snapshot_complete').map((f) => f.msg.type);
      expect(order).to.deep.equal(['handshake', 'get_snapshot', 'snapshot_complete', 'get_changes']);
    });

    it('pushes a typed write as seq 19 does, a delete as seq 47 does, and the peer receives both', async () => {
      const db = nextDb();
      const a = client(db);
      const b = client(db);
      a.start();
      b.start();
      await Promise.all([a.whenReady(), b.whenReady()]);
      a.write([{ pk: [1], values: { id: 1, s: 'héllo wörld ✓', i: 42, r: 3.25, n: null, b: { __bin: 'AQ==' } } }, typedRow(2), typedRow(3)]);
      await a.whenPushed();
      const push = a.sent().find((m) => m.type === 'apply_changes')!;
      expect(shape(push)).to.equal(shape(realFrame(REAL, 19)));
      expect(push.requestId).to.equal('apply-1');
      expect((push.changes as ChangeSet[])[0]!.changes).to.have.length(18);
      // The change set's hlc is its last fact's (opSeq 17 = 0x11, as seq 19's "…AAAAR").
      expect(Buffer.from((push.changes as ChangeSet[])[0]!.hlc, 'base64').readUInt32BE(26)).to.equal(17);

      a.delete({ pk: [1] });
      await a.whenPushed();
      const del = a.sent().filter((m) => m.type === 'apply_changes')[1]!;
      expect(shape(del)).to.equal(shape(realFrame(REAL, 47)));
      expect(del.requestId).to.equal('apply-2');

      expect(await settle([a, b], () => b.model.sameAs(a.model), { quietMs: 200 })).to.equal(true);
      expect(b.model.isDeleted('main', 'items', [1])).to.equal(true);
      expect(b.model.cell('main', 'items', [2], 's')!.value).to.equal('row-2');
      // b only listened: after its bootstrap it sent nothing.
      expect(types(b.sent())).to.deep.equal(['handshake', 'get_snapshot', 'get_changes']);
      const server_ = await readServerState(server.baseUrl, db);
      expect(server_.model.sameAs(a.model)).to.equal(true);
    });

    it('sends updates with priorValue and priorHlc as seq 121 does', async () => {
      const a = client(nextDb());
      a.start();
      await a.whenReady();
      a.write(typedRow(10));
      a.write({ pk: [10], values: { s: 'updated', r: 0.001 } });
      await a.whenPushed();
      const pushes = a.sent().filter((m) => m.type === 'apply_changes');
      const last = (pushes.at(-1)!.changes as ChangeSet[]).at(-1)!;
      const realUpdate = (realFrame(REAL, 121).changes as ChangeSet[])[2]!;
      expect(shape(last)).to.equal(shape(realUpdate));
      expect(last.changes[0]).to.include({ column: 's', value: 'updated', priorValue: 'row-10' });
    });

    it('comes back as c8 does: handshake, get_changes from its watermark, then a push of what it holds', async () => {
      const db = nextDb();
      const a = client(db);
      const b = client(db);
      a.start();
      b.start();
      await Promise.all([a.whenReady(), b.whenReady()]);
      const header = (b.frames.find((f) => f.msg.type === 'snapshot_chunk')!.msg.chunk as { hlc: string }).hlc;
      a.write(typedRow(1));
      await a.whenPushed();
      await waitFor(() => b.model.rows.size === 1, 'the push to b');
      b.goOffline();
      await waitFor(() => b.closeCodes.length === 1, 'b to close');
      a.write(typedRow(3));
      a.write({ pk: [1], values: { s: 'after' } });
      a.delete({ pk: [3] });
      await a.whenPushed();
      b.goOnline();
      await b.whenReady();
      expect(await settle([a, b], () => b.model.sameAs(a.model), { quietMs: 200 })).to.equal(true);

      const mine = b.sent(2);
      const real = realSent(REAL, 'c8');
      expect(types(mine)).to.deep.equal(types(real));
      expect(mine.map(shape)).to.deep.equal(real.map(shape));
      // Pushes never moved the watermark: it is still the snapshot header's hlc.
      expect(mine[1]!.sinceHLC).to.equal(header);
      // It relays the change set it holds (a's first), as c8 relays c5's.
      expect((mine[2]!.changes as ChangeSet[]).map((s) => s.siteId)).to.deep.equal([a.siteIdWire]);
    });

    it('bootstraps a non-empty database as c11 does and pushes the snapshot content back', async () => {
      const db = nextDb();
      const a = client(db);
      a.start();
      await a.whenReady();
      a.write(typedRow(1));
      a.write(Array.from({ length: 20 }, (_, k) => typedRow(10 + k)));
      a.write([{ pk: [10], values: { s: 'updated' } }, { pk: [11], values: { s: 'updated' } }]);
      a.delete([{ pk: [20] }, { pk: [21] }]);
      await a.whenPushed();
      const c = client(db);
      c.start();
      await c.whenReady();
      expect(await settle([a, c], () => c.model.sameAs(a.model), { quietMs: 200 })).to.equal(true);
      await waitFor(() => c.sent().length === 4, 'c11\'s four frames');
      const mine = c.sent(1);
      const real = realSent(REAL, 'c11');
      expect(types(mine)).to.deep.equal(types(real));
      expect(mine.slice(0, 3).map(shape)).to.deep.equal(real.slice(0, 3).map(shape));
      const sets = mine[3]!.changes as ChangeSet[];
      // Updates come back without prior images, deletes with priorRow (seq 136).
      const update = sets.find((s) => s.changes.some((ch) => ch.type === 'column' && ch.value === 'updated'))!;
      expect(update.changes[0]).to.not.have.any.keys('priorValue', 'priorHlc');
      expect(shape(update.changes[0])).to.equal(shape((realFrame(REAL, 136).changes as ChangeSet[])[2]!.changes[0]));
      const deletion = sets.find((s) => s.changes.some((ch) => ch.type === 'delete'))!;
      expect(shape(deletion)).to.equal(shape((realFrame(REAL, 136).changes as ChangeSet[])[3]));
      const { model } = await readServerState(server.baseUrl, db);
      const facts = sets.reduce((n, s) => n + s.changes.length, 0);
      expect(facts).to.equal(model.digest().cells + model.digest().tombstones);
    });

    it('connects with 2,500 offline rows as c13 does: get_changes without sinceHLC, then one batch of two 600-change transactions', async () => {
      const db = nextDb();
      const a = client(db, { offline: true });
      a.start();
      for (let t = 0; t < 25; t++) {
        a.write(Array.from({ length: 100 }, (_, k) => {
          const id = 1000 + t * 100 + k;
          return { pk: [id], values: { id, s: `offline-${id}`, i: id, r: id + 0.5, n: null, b: { __bin: 'AQ==' } } };
        }));
      }
      a.goOnline();
      await a.whenReady();
      await waitFor(() => a.sent().some((m) => m.type === 'apply_changes'), 'the first push');
      const mine = a.sent(1);
      const real = realSent(REAL, 'c13');
      expect(types(mine.slice(0, 3))).to.deep.equal(types(real));
      expect(mine.slice(0, 3).map(shape)).to.deep.equal(real.map(shape));
      expect(mine[1]).to.deep.equal({ type: 'get_changes' });
      const batch = mine[2]!.changes as ChangeSet[];
      expect(batch.map((s) => s.changes.length)).to.deep.equal([600, 600]);
    });

    it('resumes a cut bootstrap as c3/c4 of the resume fixture do: resume_snapshot with its own site id', async () => {
      const db = nextDb();
      const a = client(db);
      a.start();
      await a.whenReady();
      for (let t = 0; t < 15; t++) {
        // One 600-change transaction per push: a second one in the same push would be the last (§8).
        a.write(Array.from({ length: 100 }, (_, k) => typedRow(t * 100 + k + 1, `snap-${t * 100 + k + 1}`)));
        await a.whenPushed();
      }
      const c = client(db, { cutSnapshotAfterChunks: 6 });
      c.start();
      await waitFor(() => c.sent(2).length >= 2, 'the resume');
      const header = c.frames.find((f) => f.msg.type === 'snapshot_chunk')!.msg.chunk as { hlc: string; snapshotId: string };
      const mine = c.sent(2).slice(0, 2);
      const real = realSent(RESUME, 'c4');
      expect(types(mine)).to.deep.equal(types(real));
      expect(mine.map(shape)).to.deep.equal(real.map(shape));
      const checkpoint = mine[1]!.checkpoint as Record<string, unknown>;
      expect(checkpoint).to.include({ snapshotId: header.snapshotId, hlc: header.hlc, siteId: c.siteIdWire });
      // Cut inside the first table: nothing completed, counters as the fixture's.
      expect(checkpoint).to.deep.include({ completedTables: [], lastTableIndex: 0, lastEntryIndex: 0, entriesProcessed: 0 });
      // Before the cut it sent nothing but handshake and get_snapshot.
      expect(types(c.sent(1))).to.deep.equal(['handshake', 'get_snapshot']);
    });
  });

  // ---- against a scripted server ------------------------------------------

  describe('against a scripted server', () => {
    let fake: FakeServer;
    const clients: ReferenceClient[] = [];
    const serverSite = randomSiteId();
    const serverSiteWire = siteIdToWire(serverSite);
    const headerHlc = hlcToWire(encodeHlc({ wallTime: Date.now() - 10_000, counter: 0, siteId: serverSite, opSeq: 0 }));
    function stamp(offsetMs: number): string {
      return hlcToWire(encodeHlc({ wallTime: Date.now() - 5_000 + offsetMs, counter: 0, siteId: serverSite, opSeq: 0 }));
    }
    function client(extra: Partial<ConstructorParameters<typeof ReferenceClient>[0]> = {}): ReferenceClient {
      const c = new ReferenceClient({ url: fake.url, databaseId: 'db', record: true, reconnectDelayMs: 10, ...extra });
      clients.push(c);
      return c;
    }
    /** Plays the server's part of a handshake and an empty bootstrap; returns after get_changes. */
    async function accept(conn: FakeConnection, options: { snapshot?: boolean; ackVersion?: number } = {}): Promise<Record<string, unknown>[]> {
      const seen = [await conn.next()];
      conn.send({ type: 'handshake_ack', databaseId: 'db', serverSiteId: serverSiteWire, connectionId: 'x', protocolVersion: options.ackVersion ?? 1 });
      if (options.snapshot ?? true) {
        seen.push(await conn.next());
        conn.send({ type: 'snapshot_chunk', chunk: { type: 'header', siteId: serverSiteWire, hlc: headerHlc, snapshotFormat: 1, tableCount: 0, migrationCount: 0, snapshotId: 's1' } });
        conn.send({ type: 'snapshot_chunk', chunk: { type: 'footer', snapshotId: 's1', totalTables: 0, totalEntries: 0, totalMigrations: 0 } });
        conn.send({ type: 'snapshot_complete' });
      }
      seen.push(await conn.next());
      conn.send({ type: 'changes', changeSets: [], hasMore: false });
      return seen;
    }
    beforeEach(async () => { fake = await FakeServer.start(); });
    afterEach(async () => {
      await Promise.all(clients.splice(0).map((c) => c.stop()));
      await fake.close();
    });

    it('repeats unacknowledged change sets in the next push, and only newer ones after the apply_result', async () => {
      const a = client();
      a.start();
      const conn = await fake.connection(0);
      await accept(conn);
      const t1 = a.write(typedRow(1))!;
      const p1 = await conn.next();
      expect(p1).to.include({ type: 'apply_changes', requestId: 'apply-1' });
      expect((p1.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal([t1.transactionId]);
      const t2 = a.write(typedRow(2))!;
      const p2 = await conn.next();
      expect(p2.requestId).to.equal('apply-2');
      expect((p2.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal([t1.transactionId, t2.transactionId]);
      conn.send({ type: 'apply_result', requestId: 'apply-2', applied: 12, skipped: 0, conflicts: 0, transactions: 2 });
      const t3 = a.write(typedRow(3))!;
      const p3 = await conn.next();
      expect((p3.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal([t3.transactionId]);
      // A late ack of the superseded push changes nothing.
      conn.send({ type: 'apply_result', requestId: 'apply-1', applied: 0, skipped: 6, conflicts: 0, transactions: 1 });
      conn.send({ type: 'apply_result', requestId: 'apply-3', applied: 6, skipped: 0, conflicts: 0, transactions: 1 });
      await waitFor(() => a.allOwnAcked, 'the acks');
    });

    it('adds whole transactions to a push until it reaches 1,000 changes, and pushes no more until the next commit', async () => {
      const a = client({ offline: true });
      a.start();
      const sets = Array.from({ length: 5 }, (_, t) => a.write(Array.from({ length: 60 }, (_, k) => typedRow(t * 100 + k)))!);
      a.goOnline();
      const conn = await fake.connection(0);
      const seen = await accept(conn, { snapshot: false });
      expect(types(seen)).to.deep.equal(['handshake', 'get_changes']);
      const p1 = await conn.next();
      // 360 changes each: 360, 720, 1080 → three transactions.
      expect((p1.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal(sets.slice(0, 3).map((s) => s.transactionId));
      conn.send({ type: 'apply_result', requestId: p1.requestId, applied: 1080, skipped: 0, conflicts: 0, transactions: 3 });
      // Nothing more until a commit; the commit's push starts after the acked batch.
      const t6 = a.write(typedRow(9999))!;
      const p2 = await conn.next();
      expect((p2.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal([sets[3]!.transactionId, sets[4]!.transactionId, t6.transactionId]);
    });

    it('answers request_changes with one apply_changes without requestId, excluding the named site, after sinceHLC, bounded', async () => {
      const a = client();
      a.start();
      const conn = await fake.connection(0);
      await accept(conn);
      const other = new TestSite(randomSiteId(), Date.now() - 1000);
      const foreign = other.txn([{ table: 'items', pk: [500], column: 's', value: 'from-other' }]);
      conn.send({ type: 'push_changes', changeSets: [{ ...foreign, hlc: stamp(1) }] });
      await waitFor(() => a.model.rows.size === 1, 'the push');
      const own = [a.write(typedRow(1))!, a.write(typedRow(2))!];
      const p1 = await conn.next();
      conn.send({ type: 'apply_result', requestId: p1.requestId, applied: 1, skipped: 0, conflicts: 0, transactions: 1 });
      // Nothing to send: no frame for this one; the next request's answer is the next frame.
      conn.send({ type: 'request_changes', siteId: serverSiteWire, sinceHLC: own[1]!.hlc });
      conn.send({ type: 'request_changes', siteId: other.wire });
      const r1 = await conn.next();
      expect(r1).to.not.have.property('requestId');
      expect(r1.type).to.equal('apply_changes');
      expect((r1.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal(own.map((s) => s.transactionId));
      conn.send({ type: 'request_changes', siteId: serverSiteWire, sinceHLC: own[0]!.hlc });
      const r2 = await conn.next();
      expect((r2.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal([own[1]!.transactionId]);
      // Bounded like a push: 5 × 360 changes → the first three.
      const big = Array.from({ length: 5 }, (_, t) => a.write(Array.from({ length: 60 }, (_, k) => typedRow(1000 + t * 100 + k)))!);
      const p2 = await conn.next();
      expect(p2.type).to.equal('apply_changes');
      conn.send({ type: 'request_changes', siteId: serverSiteWire, sinceHLC: own[1]!.hlc });
      const r3 = await conn.next();
      expect((r3.changes as ChangeSet[]).map((s) => s.transactionId)).to.deep.equal(big.slice(0, 3).map((s) => s.transactionId));
    });

    /** Three one-row change sets of another site, stamped 1, 2 and 3. */
    function threeSets() {
      const other = new TestSite(randomSiteId(), Date.now() - 1000);
      return (['one', 'two', 'three'] as const).map((value, i) => ({ ...other.txn([{ table: 'items', pk: [i + 1], column: 's', value }]), hlc: stamp(i + 1) }));
    }

    it('applies every changes message, asked for or not, and moves the watermark only on those', async () => {
      // In arrival order here; the next test lets them land out of order.
      const a = client({ applyDelayMs: 0 });
      a.start();
      const conn = await fake.connection(0);
      await accept(conn);
      const [s1, s2, s3] = threeSets();
      conn.send({ type: 'changes', changeSets: [s1], hasMore: true });
      conn.send({ type: 'changes', changeSets: [s2] });
      conn.send({ type: 'push_changes', changeSets: [s3] });
      await waitFor(() => a.model.rows.size === 3, 'all three applied');
      await conn.close();
      const again = await fake.connection(1);
      const seen = await accept(again, { snapshot: false });
      expect(seen[1]).to.deep.equal({ type: 'get_changes', sinceHLC: s2.hlc });
      // hasMore never made it ask again on the first connection.
      expect(a.sent(1).filter((m) => m.type === 'get_changes')).to.have.length(1);
    });

    it('applies messages concurrently: a later one may land first, and the last changes to land sets the watermark', async () => {
      // Per message received, in order: the empty answer of accept(), then s1 waits 90% of applyDelayMs, s2 and s3 not at all.
      const delays = [0, 0.9, 0, 0];
      const a = client({ applyDelayMs: 200, random: () => delays.shift() ?? 0 });
      a.start();
      const conn = await fake.connection(0);
      await accept(conn);
      const [s1, s2, s3] = threeSets();
      conn.send({ type: 'changes', changeSets: [s1], hasMore: true });
      conn.send({ type: 'changes', changeSets: [s2], hasMore: true });
      conn.send({ type: 'push_changes', changeSets: [s3] });
      await waitFor(() => a.model.rows.size === 2, 'the second and third applied');
      expect(a.model.row('main', 'items', [1]), 'the first is still being applied').to.equal(undefined);
      expect(a.watermark).to.equal(s2.hlc);
      expect(a.idle(0), 'not idle while a message is being applied').to.equal(false);
      await waitFor(() => a.model.rows.size === 3, 'the first applied');
      // The real client stores the watermark of the message that finished last, older or not.
      expect(a.watermark).to.equal(s1.hlc);
      await conn.close();
      const again = await fake.connection(1);
      const seen = await accept(again, { snapshot: false });
      expect(seen[1]).to.deep.equal({ type: 'get_changes', sinceHLC: s1.hlc });
    });

    it('drops changes and push_changes while a snapshot lands, then asks from the header hlc', async () => {
      const a = client();
      a.start();
      const conn = await fake.connection(0);
      await conn.next();
      conn.send({ type: 'handshake_ack', databaseId: 'db', serverSiteId: serverSiteWire, connectionId: 'x', protocolVersion: 1 });
      expect((await conn.next()).type).to.equal('get_snapshot');
      const other = new TestSite(randomSiteId(), Date.now() - 1000);
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'header', siteId: serverSiteWire, hlc: headerHlc, snapshotFormat: 1, tableCount: 1, migrationCount: 0, snapshotId: 's1' } });
      conn.send({ type: 'push_changes', changeSets: [{ ...other.txn([{ table: 'items', pk: [7], column: 's', value: 'pushed' }]), hlc: stamp(1) }] });
      conn.send({ type: 'changes', changeSets: [{ ...other.txn([{ table: 'items', pk: [8], column: 's', value: 'paged' }]), hlc: stamp(2) }] });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'table-start', schema: 'main', table: 'items', estimatedEntries: 1 } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'column-versions', schema: 'main', table: 'items', entries: [{ column: 's', hlc: other.hlc(Date.now() - 2000, 0, 0), value: 'snap', pk: [1] }] } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'table-end', schema: 'main', table: 'items', entriesWritten: 1 } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'footer', snapshotId: 's1', totalTables: 1, totalEntries: 1, totalMigrations: 0 } });
      conn.send({ type: 'snapshot_complete' });
      expect(await conn.next()).to.deep.equal({ type: 'get_changes', sinceHLC: headerHlc });
      expect(a.droppedWhileLanding).to.equal(2);
      expect([...a.model.rows.keys()]).to.deep.equal([JSON.stringify(['main', 'items', [1]])]);
    });

    it('closes on SNAPSHOT_ERROR mid-transfer and resumes from its checkpoint with its own site id', async () => {
      const a = client();
      a.start();
      const conn = await fake.connection(0);
      await conn.next();
      conn.send({ type: 'handshake_ack', databaseId: 'db', serverSiteId: serverSiteWire, connectionId: 'x', protocolVersion: 1 });
      await conn.next();
      const other = new TestSite(randomSiteId(), Date.now() - 1000);
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'header', siteId: serverSiteWire, hlc: headerHlc, snapshotFormat: 1, tableCount: 2, migrationCount: 0, snapshotId: 's9' } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'table-start', schema: 'main', table: 'a', estimatedEntries: 1 } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'column-versions', schema: 'main', table: 'a', entries: [{ column: 's', hlc: other.hlc(Date.now() - 2000, 0, 0), value: 'x', pk: [1] }] } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'table-end', schema: 'main', table: 'a', entriesWritten: 1 } });
      conn.send({ type: 'snapshot_chunk', chunk: { type: 'table-start', schema: 'main', table: 'b', estimatedEntries: 5 } });
      conn.send({ type: 'error', code: 'SNAPSHOT_ERROR', message: 'disk on fire', fatal: false });
      expect(await conn.closed).to.equal(1000);
      const again = await fake.connection(1);
      expect((await again.next()).type).to.equal('handshake');
      again.send({ type: 'handshake_ack', databaseId: 'db', serverSiteId: serverSiteWire, connectionId: 'y', protocolVersion: 1 });
      const resume = await again.next();
      expect(resume.type).to.equal('resume_snapshot');
      const checkpoint = resume.checkpoint as Record<string, unknown>;
      expect(Object.keys(checkpoint)).to.deep.equal(Object.keys(realFrame(RESUME, 165).checkpoint as object));
      expect(checkpoint).to.deep.include({ snapshotId: 's9', siteId: a.siteIdWire, hlc: headerHlc, completedTables: ['main.a'], lastTableIndex: 1, entriesProcessed: 1 });
    });

    it('records non-fatal errors, new codes included, and does nothing about them', async () => {
      const a = client();
      a.start();
      const conn = await fake.connection(0);
      await accept(conn);
      for (const code of ['LAGGING', 'SNAPSHOT_REQUIRED', 'INVALID_CHECKPOINT', 'SOMETHING_NEW', 'GET_CHANGES_ERROR']) {
        conn.send({ type: 'error', code, message: 'x', fatal: false });
      }
      conn.send({ type: 'error', code: 'NO_FLAG_AT_ALL', message: 'x' });
      // Its next frame is the answer to this, so it sent nothing for the errors.
      conn.send({ type: 'request_changes', siteId: serverSiteWire });
      a.write(typedRow(1));
      const next = await conn.next();
      expect(next.type).to.equal('apply_changes');
      expect(a.errors.map((e) => e.code)).to.deep.equal(['LAGGING', 'SNAPSHOT_REQUIRED', 'INVALID_CHECKPOINT', 'SOMETHING_NEW', 'GET_CHANGES_ERROR', 'NO_FLAG_AT_ALL']);
      // A non-fatal close is followed by a reconnect.
      await conn.close(1013);
      await fake.connection(1);
    });

    for (const [name, error] of [
      ['fatal: true', { code: 'WHATEVER', fatal: true }],
      ['AUTH_FAILED without the flag', { code: 'AUTH_FAILED' }],
      ['ALREADY_AUTHENTICATED without the flag', { code: 'ALREADY_AUTHENTICATED' }],
    ] as const) {
      it(`stops reconnecting for good after ${name}`, async () => {
        const a = client();
        a.start();
        const conn = await fake.connection(0);
        await conn.next();
        conn.send({ type: 'error', message: 'no', ...error });
        await conn.close(4001);
        await waitFor(() => a.closeCodes.length === 1, 'the close');
        expect(a.stoppedByServer).to.equal(true);
        expect(a.reconnectScheduled).to.equal(false);
        expect(a.reconnectDelays).to.deep.equal([]);
      });
    }

    it('refuses a handshake_ack whose protocolVersion is not 1', async () => {
      const a = client();
      a.start();
      const conn = await fake.connection(0);
      await conn.next();
      conn.send({ type: 'handshake_ack', databaseId: 'db', serverSiteId: serverSiteWire, connectionId: 'x', protocolVersion: 2 });
      expect((await conn.next()).type).to.equal('#closed');
      expect(a.reconnectScheduled).to.equal(false);
    });

    it('sends its token in the handshake and as ?token= in the URL', async () => {
      const a = client({ token: 's3cret/+' });
      a.start();
      const conn = await fake.connection(0);
      const handshake = await conn.next();
      expect(conn.url).to.equal(`/sync/ws?token=${encodeURIComponent('s3cret/+')}`);
      expect(handshake).to.deep.equal({ type: 'handshake', databaseId: 'db', siteId: a.siteIdWire, token: 's3cret/+', protocolVersion: 1 });
    });
  });

  describe('reconnect backoff', () => {
    it('doubles from the base delay up to the cap while nothing answers', async () => {
      const probe = createServer();
      await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
      const { port } = probe.address() as AddressInfo;
      await new Promise<void>((resolve) => probe.close(() => resolve()));
      const a = new ReferenceClient({ url: `ws://127.0.0.1:${port}/sync/ws`, databaseId: 'db', reconnectDelayMs: 2, maxReconnectDelayMs: 16 });
      a.start();
      try {
        await waitFor(() => a.reconnectDelays.length >= 7, 'seven attempts');
        expect(a.reconnectDelays.slice(0, 7)).to.deep.equal([2, 4, 8, 16, 16, 16, 16]);
        expect(a.connections).to.equal(0);
      } finally {
        await a.stop();
      }
    });

    it('defaults to 1 s doubling to 60 s', () => {
      const a = new ReferenceClient({ url: 'ws://127.0.0.1:1/sync/ws', databaseId: 'db', offline: true });
      a.start();
      a.goOffline();
      expect(a.reconnectDelays).to.deep.equal([1000]);
      return a.stop();
    });
  });
});
