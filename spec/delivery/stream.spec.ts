import { expect } from 'chai';
import { DeliveryStream, RECOVERY_PAGE_BYTES, type DeliveryOptions } from '../../lib/delivery/stream.js';
import { Push } from '../../lib/delivery/push.js';
import type { DeliverySink, LogPage, LogReader } from '../../lib/delivery/ports.js';
import { encodeHlc, hlcFromWire, hlcToWire } from '../../lib/protocol/hlc.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import { SyncError, ErrorCode } from '../../lib/errors.js';
import { Random } from '../helpers/random.js';

const SERVER = randomSiteId();
const ME = siteIdToWire(randomSiteId());
const OTHERS = [siteIdToWire(randomSiteId()), siteIdToWire(randomSiteId())];

/** Stamp number n as an HLC (wallTime n), so frames can be read back as numbers. */
function stamp(n: number): Buffer {
  return encodeHlc({ wallTime: n, counter: 0, siteId: SERVER, opSeq: 0 });
}

function numberOf(hlc: string): number {
  return hlcFromWire(hlc).readUInt32BE(4);
}

interface Txn { n: number; site: string }

function changeSet(t: Txn): ChangeSet {
  return { siteId: t.site, transactionId: `${t.n}:0:${t.site}`, hlc: hlcToWire(stamp(t.n)), changes: [], schemaMigrations: [] };
}

/** The push of `sets` stamped `stamps`, with the texts a commit gives (ApplyOutcome.acceptedJson). */
function pushOf(sets: ChangeSet[], stamps: Buffer[]): Push {
  return new Push(stamps, sets.map((set, i) => JSON.stringify({ ...set, hlc: hlcToWire(stamps[i]!) })));
}

/** Yields to the event loop a random number of times, so reads, commits and flushes interleave. */
async function jitter(r: Random, max = 4): Promise<void> {
  for (let i = r.int(max + 1); i > 0; i--) {
    if (r.next() < 0.5) await Promise.resolve();
    else await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * The stored log: transactions in stamp order; reads return pages of a
 * random size after a random delay, from the log as it was when the read
 * began (a consistent view, as LevelDB gives), never the reader's own site.
 */
class FakeLog implements LogReader {
  readonly txns: Txn[] = [];
  failNext = false;
  /** The `maxBytes` of every read, in order. */
  readonly budgets: (number | undefined)[] = [];
  /** The retention floor as a stamp number (0: nothing swept); a test raises it to stand for a sweep. */
  floor: number;
  constructor(private readonly r: Random, private readonly site: string, floor = 0) {
    this.floor = floor;
  }

  async read(cursor: Buffer | undefined, maxBytes?: number, floorSeen?: Buffer | 'any'): Promise<LogPage> {
    this.budgets.push(maxBytes);
    const after = cursor ? numberOf(hlcToWire(cursor)) : 0;
    if (this.failNext) {
      this.failNext = false;
      throw new SyncError(ErrorCode.Internal, 'store failed');
    }
    // As the store's log: a cursor under the floor is refused unless the reader accepted that floor (FloorSeen).
    const accepted = floorSeen === 'any' || (floorSeen !== undefined && this.floor <= numberOf(hlcToWire(floorSeen)));
    if (cursor && after < this.floor && !accepted) throw new SyncError(ErrorCode.SnapshotRequired, 'too old');
    const floor = this.floor > 0 ? { floor: stamp(this.floor) } : {};
    const view = this.txns.filter((t) => t.n > after && t.site !== this.site);
    await jitter(this.r);
    const size = 1 + this.r.int(4);
    const page = view.slice(0, size);
    return {
      json: JSON.stringify(page.map(changeSet)),
      hasMore: view.length > size,
      transactionCount: page.length,
      ...(page.length > 0 ? { lastStamp: stamp(page.at(-1)!.n) } : {}),
      ...floor,
    };
  }
}

/** A socket: frames queue up until the test flushes them; bufferedBytes is what is queued. */
class FakeSink implements DeliverySink {
  open = true;
  readonly frames: { type: string; changeSets?: ChangeSet[]; hasMore?: boolean }[] = [];
  private queued: number[] = [];
  private waiters: (() => void)[] = [];

  send(frame: string | Buffer): void {
    if (!this.open) return;
    this.frames.push(JSON.parse(frame.toString()));
    this.queued.push(frame.length);
  }

  get bufferedBytes(): number {
    return this.queued.reduce((a, b) => a + b, 0);
  }

  flushed(): Promise<void> {
    if (this.queued.length === 0 || !this.open) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** The client read `n` frames (all when undefined). */
  flush(n = Infinity): void {
    this.queued.splice(0, n);
    if (this.queued.length === 0) for (const w of this.waiters.splice(0)) w();
  }
}

function options(extra: Partial<DeliveryOptions> = {}): DeliveryOptions {
  return { pushHighWaterBytes: 400, clientPaging: false, onFailure: () => undefined, ...extra };
}

/** Stamps of the change sets received, in order, from `frames` (changes and push_changes). */
function received(frames: FakeSink['frames']): number[] {
  return frames.flatMap((f) => (f.changeSets ?? []).map((s) => numberOf(s.hlc)));
}

describe('delivery', () => {
  describe('DeliveryStream', () => {
    it('pages a get_changes to the end of the log by itself, hasMore on all but the last', async () => {
      const r = new Random(1);
      const log = new FakeLog(r, ME);
      for (let n = 1; n <= 30; n++) log.txns.push({ n, site: OTHERS[n % 2]! });
      const sink = new FakeSink();
      const stream = new DeliveryStream(sink, log, options(), stamp(30));
      await stream.catchUp(undefined);
      while (stream.catchingUp) {
        sink.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect(received(sink.frames)).to.deep.equal(Array.from({ length: 30 }, (_, i) => i + 1));
      expect(sink.frames.every((f) => f.type === 'changes')).to.equal(true);
      expect(sink.frames.map((f) => f.hasMore)).to.deep.equal([...Array(sink.frames.length - 1).fill(true), false]);
    });

    it('sends each page only once the previous one is flushed', async () => {
      const r = new Random(2);
      const log = new FakeLog(r, ME);
      for (let n = 1; n <= 20; n++) log.txns.push({ n, site: OTHERS[0]! });
      const sink = new FakeSink();
      const stream = new DeliveryStream(sink, log, options(), stamp(20));
      await stream.catchUp(undefined);
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      expect(sink.frames).to.have.length(1);
      sink.flush();
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      expect(sink.frames).to.have.length(2);
    });

    it('gives a client that pages by itself exactly one page per get_changes', async () => {
      const r = new Random(3);
      const log = new FakeLog(r, ME);
      for (let n = 1; n <= 20; n++) log.txns.push({ n, site: OTHERS[0]! });
      const sink = new FakeSink();
      const stream = new DeliveryStream(sink, log, options({ clientPaging: true }), stamp(20));
      await stream.catchUp(undefined);
      sink.flush();
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      expect(sink.frames).to.have.length(1);
      expect(sink.frames[0]!.hasMore).to.equal(true);
    });

    it('rejects a get_changes whose first page cannot be read, sending nothing, and stays live', async () => {
      const r = new Random(4);
      const log = new FakeLog(r, ME, 10);
      const sink = new FakeSink();
      const stream = new DeliveryStream(sink, log, options(), stamp(12));
      let error: unknown;
      await stream.catchUp(stamp(3)).catch((err) => { error = err; });
      expect((error as SyncError).code).to.equal('SNAPSHOT_REQUIRED');
      expect(sink.frames).to.deep.equal([]);
      log.txns.push({ n: 13, site: OTHERS[0]! });
      expect(stream.offer(pushOf([changeSet(log.txns[0]!)], [stamp(13)]))).to.equal(true);
      expect(received(sink.frames)).to.deep.equal([13]);
    });

    it('tells the transport of a cursor older than the retention floor, then sends the log after it all the same', async () => {
      const r = new Random(41);
      const log = new FakeLog(r, ME, 10);
      for (let n = 1; n <= 20; n++) log.txns.push({ n, site: OTHERS[n % 2]! });
      const sink = new FakeSink();
      const expired: unknown[] = [];
      const stream = new DeliveryStream(sink, log, options({ onCursorExpired: (err) => expired.push(err) }), stamp(20));
      await stream.catchUp(stamp(3));
      expect(expired.map((err) => (err as SyncError).code)).to.deep.equal(['SNAPSHOT_REQUIRED']);
      while (stream.catchingUp) {
        sink.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      // Everything the log holds after the cursor, in order, as the answer to get_changes; then live.
      expect(received(sink.frames)).to.deep.equal(Array.from({ length: 17 }, (_, i) => i + 4));
      expect(sink.frames.map((f) => f.hasMore)).to.deep.equal([...Array(sink.frames.length - 1).fill(true), false]);
      sink.flush();
      log.txns.push({ n: 21, site: OTHERS[0]! });
      expect(stream.offer(pushOf([changeSet(log.txns.at(-1)!)], [stamp(21)])), 'live').to.equal(true);
    });

    it('goes on past the retention floor through its own pages of a catch-up from the beginning', async () => {
      const r = new Random(42);
      const log = new FakeLog(r, ME, 15);
      for (let n = 1; n <= 30; n++) log.txns.push({ n, site: OTHERS[n % 2]! });
      const sink = new FakeSink();
      let failure: unknown;
      const expired: unknown[] = [];
      const stream = new DeliveryStream(sink, log, options({ onFailure: (err) => { failure = err; }, onCursorExpired: (err) => expired.push(err) }), stamp(30));
      await stream.catchUp(undefined);
      while (stream.catchingUp && failure === undefined) {
        sink.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect(failure).to.equal(undefined);
      expect(expired, 'no cursor came from the client').to.deep.equal([]);
      expect(received(sink.frames)).to.deep.equal(Array.from({ length: 30 }, (_, i) => i + 1));
    });

    it('asks the transport to close when the floor rises past its position during a catch-up (a deletion it has not sent was swept)', async () => {
      const r = new Random(43);
      const log = new FakeLog(r, ME);
      for (let n = 1; n <= 30; n++) log.txns.push({ n, site: OTHERS[0]! });
      const sink = new FakeSink();
      let failure: unknown;
      const stream = new DeliveryStream(sink, log, options({ onFailure: (err) => { failure = err; }, onCursorExpired: () => undefined }), stamp(30));
      await stream.catchUp(undefined);
      // The first page holds at most 4 transactions: a sweep now passes its position.
      log.floor = 25;
      while (stream.catchingUp && failure === undefined) {
        sink.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect((failure as SyncError).code).to.equal('SNAPSHOT_REQUIRED');
    });

    it('asks the transport to close when a read fails while recovering', async () => {
      const r = new Random(5);
      const log = new FakeLog(r, ME);
      const sink = new FakeSink();
      let failure: unknown;
      const stream = new DeliveryStream(sink, log, options({ onFailure: (err) => { failure = err; } }), undefined);
      const big = { n: 1, site: OTHERS[0]! };
      log.txns.push(big);
      stream.offer(pushOf([changeSet(big)], [stamp(1)]));
      sink.send(JSON.stringify({ type: 'pong', pad: 'x'.repeat(1000) }));
      log.txns.push({ n: 2, site: OTHERS[0]! });
      log.failNext = true;
      expect(stream.offer(pushOf([changeSet(log.txns[1]!)], [stamp(2)]))).to.equal(false);
      sink.flush();
      for (let i = 0; i < 20 && !failure; i++) await new Promise((resolve) => setImmediate(resolve));
      expect((failure as SyncError).message).to.equal('store failed');
    });

    it('reads what a slow socket missed in pages of RECOVERY_PAGE_BYTES, and a get_changes answer in full pages', async () => {
      const r = new Random(7);
      const log = new FakeLog(r, ME);
      for (let n = 1; n <= 12; n++) log.txns.push({ n, site: OTHERS[0]! });
      const sink = new FakeSink();
      const stream = new DeliveryStream(sink, log, options(), stamp(12));
      await stream.catchUp(undefined);
      while (stream.catchingUp) {
        sink.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect(log.budgets.length, 'pages of the get_changes answer').to.be.above(1);
      expect(log.budgets.every((b) => b === undefined), 'a get_changes answer uses the reader\'s own page budget').to.equal(true);
      log.budgets.length = 0;
      // Over pushHighWaterBytes queued: the next commits are read back from the log.
      sink.send(JSON.stringify({ type: 'pong', pad: 'x'.repeat(1000) }));
      for (let n = 13; n <= 24; n++) {
        log.txns.push({ n, site: OTHERS[0]! });
        expect(stream.offer(pushOf([changeSet(log.txns.at(-1)!)], [stamp(n)]))).to.equal(false);
      }
      while (stream.catchingUp) {
        sink.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect(received(sink.frames).slice(-12)).to.deep.equal(Array.from({ length: 12 }, (_, i) => 13 + i));
      expect(log.budgets.length, 'recovery reads').to.be.above(0);
      expect(log.budgets.every((b) => b === RECOVERY_PAGE_BYTES)).to.equal(true);
    });

    it('never repeats a push already sent in a page, and sends only the part after it', () => {
      const sink = new FakeSink();
      const stream = new DeliveryStream(sink, new FakeLog(new Random(6), ME), options(), stamp(5));
      const txns = [6, 7, 8].map((n) => ({ n, site: OTHERS[0]! }));
      expect(stream.offer(pushOf([changeSet(txns[0]!), changeSet(txns[1]!)], [stamp(6), stamp(7)]))).to.equal(true);
      expect(stream.offer(pushOf([changeSet(txns[1]!)], [stamp(7)]))).to.equal(false);
      expect(stream.offer(pushOf([changeSet(txns[1]!), changeSet(txns[2]!)], [stamp(7), stamp(8)]))).to.equal(true);
      expect(received(sink.frames)).to.deep.equal([6, 7, 8]);
      expect(sink.frames.every((f) => f.type === 'push_changes')).to.equal(true);
    });

    describe('property: random commits, reads, flush speeds and a get_changes at a random moment', () => {
      for (let seed = 1; seed <= 150; seed++) {
        it(`delivers every other site's transaction after the cursor once, in stamp order (seed ${seed})`, async () => {
          const r = new Random(seed * 7919);
          const log = new FakeLog(r, ME);
          const existing = r.int(15);
          let n = 0;
          for (; n < existing;) log.txns.push({ n: ++n, site: r.pick([ME, ...OTHERS]) });
          const sink = new FakeSink();
          const highWater = r.pick([50, 300, 2000, 1e9]);
          let failure: unknown;
          const stream = new DeliveryStream(sink, log, options({ pushHighWaterBytes: highWater, onFailure: (err) => { failure = err; } }), n > 0 ? stamp(n) : undefined);
          const cursor = r.int(n + 1);
          const catchUpAt = r.int(30);
          let catchUpDone: Promise<void> | undefined;
          let catchUpFrame = -1;
          const commits = 10 + r.int(60);
          for (let step = 0; step < commits; step++) {
            if (step === catchUpAt) {
              catchUpFrame = sink.frames.length;
              catchUpDone = stream.catchUp(cursor > 0 ? stamp(cursor) : undefined);
            }
            // One commit of 1-3 transactions: stored first, then offered in commit order.
            const group: Txn[] = [];
            for (let k = 1 + r.int(3); k > 0; k--) group.push({ n: ++n, site: r.pick([ME, ...OTHERS, ...OTHERS]) });
            log.txns.push(...group);
            const theirs = group.filter((t) => t.site !== ME);
            if (theirs.length > 0) stream.offer(pushOf(theirs.map(changeSet), theirs.map((t) => stamp(t.n))));
            if (r.next() < 0.5) sink.flush(r.int(3));
            await jitter(r);
          }
          if (catchUpAt >= commits) {
            catchUpFrame = sink.frames.length;
            catchUpDone = stream.catchUp(cursor > 0 ? stamp(cursor) : undefined);
          }
          await catchUpDone;
          for (let i = 0; i < 10_000 && (stream.catchingUp || sink.bufferedBytes > 0); i++) {
            sink.flush();
            await new Promise((resolve) => setImmediate(resolve));
          }
          expect(failure).to.equal(undefined);
          expect(stream.catchingUp, 'the stream went live').to.equal(false);

          const after = received(sink.frames.slice(catchUpFrame));
          const expected = log.txns.filter((t) => t.n > cursor && t.site !== ME).map((t) => t.n);
          expect(after, `seed ${seed}: after get_changes(${cursor})`).to.deep.equal(expected);
          const before = received(sink.frames.slice(0, catchUpFrame));
          for (let i = 1; i < before.length; i++) expect(before[i]!, `seed ${seed}: live pushes in order`).to.be.greaterThan(before[i - 1]!);
          expect(sink.frames[catchUpFrame]!.type, 'the reply is a changes message').to.equal('changes');
        });
      }
    });
  });
});
