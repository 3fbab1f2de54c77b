import { expect } from 'chai';
import {
  encodeHlc, decodeHlc, hlcToWire, hlcFromWire, compareHlc, transactionIdOf, checkDrift, HlcClock,
} from '../../lib/protocol/hlc.js';
import { siteIdFromWire, siteIdToWire, randomSiteId, isSiteId } from '../../lib/protocol/site-id.js';
import { SyncError } from '../../lib/errors.js';

const SITE = 'PxqcRFELTo2aLmFzDNXuBw';
const SITE_HEX = '3f1a9c44510b4e8d9a2e61730cd5ee07';

describe('hlc', () => {
  describe('test vectors of docs/protocol.md §1', () => {
    const vectors: [number, number, number, string][] = [
      [1764000000000, 0, 0, 'AAABmraX6AAAAD8anERRC06Nmi5hcwzV7gcAAAAA'],
      [1764000000000, 0, 1, 'AAABmraX6AAAAD8anERRC06Nmi5hcwzV7gcAAAAB'],
      [1764000000123, 7, 2, 'AAABmraX6HsABz8anERRC06Nmi5hcwzV7gcAAAAC'],
    ];
    it('decodes the site id of the vectors', () => {
      expect(siteIdFromWire(SITE).toString('hex')).to.equal(SITE_HEX);
    });
    for (const [wallTime, counter, opSeq, wire] of vectors) {
      it(`encodes ${wallTime}/${counter}/${opSeq} as ${wire}`, () => {
        const buf = encodeHlc({ wallTime, counter, opSeq, siteId: Buffer.from(SITE_HEX, 'hex') });
        expect(hlcToWire(buf)).to.equal(wire);
        const back = decodeHlc(hlcFromWire(wire));
        expect(back.wallTime).to.equal(wallTime);
        expect(back.counter).to.equal(counter);
        expect(back.opSeq).to.equal(opSeq);
        expect(siteIdToWire(back.siteId)).to.equal(SITE);
      });
    }
    it('orders the vectors as listed', () => {
      const bufs = vectors.map((v) => hlcFromWire(v[3]));
      expect(compareHlc(bufs[0]!, bufs[1]!)).to.be.lessThan(0);
      expect(compareHlc(bufs[1]!, bufs[2]!)).to.be.lessThan(0);
      expect(compareHlc(bufs[2]!, bufs[2]!)).to.equal(0);
    });
    it('gives the transaction id of §1', () => {
      expect(transactionIdOf(hlcFromWire(vectors[0]![3]))).to.equal(`1764000000000:0:${SITE}`);
    });
  });

  describe('#compareHlc', () => {
    it('compares wallTime, then counter, then siteId, then opSeq', () => {
      const a = Buffer.alloc(16, 1);
      const b = Buffer.alloc(16, 2);
      const mk = (wallTime: number, counter: number, siteId: Buffer, opSeq: number) => encodeHlc({ wallTime, counter, siteId, opSeq });
      expect(compareHlc(mk(2, 0, a, 0), mk(1, 9, b, 9))).to.be.greaterThan(0);
      expect(compareHlc(mk(1, 2, a, 0), mk(1, 1, b, 9))).to.be.greaterThan(0);
      expect(compareHlc(mk(1, 1, b, 0), mk(1, 1, a, 9))).to.be.greaterThan(0);
      expect(compareHlc(mk(1, 1, a, 2), mk(1, 1, a, 1))).to.be.greaterThan(0);
      // wallTime above 2^32 must still order numerically.
      expect(compareHlc(mk(2 ** 40, 0, a, 0), mk(2 ** 32 - 1, 0, a, 0))).to.be.greaterThan(0);
    });
  });

  describe('#hlcFromWire', () => {
    it('rejects a 29-byte value, naming the field and the length', () => {
      const short = Buffer.alloc(29).toString('base64');
      expect(() => hlcFromWire(short, 'changes[3].hlc')).to.throw(SyncError, 'changes[3].hlc: expected 30 bytes of base64, got 29')
        .with.property('code', 'INVALID_HLC');
    });
    it('rejects non-strings, base64url and junk', () => {
      for (const bad of [42, null, undefined, {}, 'AAAA', 'not-an-hlc', 'AAABmraX6AAAAD8anERRC06Nmi5hcwzV7gcAAAA_', `${'A'.repeat(40)}==`]) {
        expect(() => hlcFromWire(bad), String(bad)).to.throw(SyncError).with.property('code', 'INVALID_HLC');
      }
    });
  });

  describe('#checkDrift', () => {
    it('accepts 60 s ahead and refuses 60.001 s ahead', () => {
      const site = randomSiteId();
      const now = 1_800_000_000_000;
      expect(() => checkDrift(encodeHlc({ wallTime: now + 60_000, counter: 0, siteId: site, opSeq: 0 }), now, 60_000)).not.to.throw();
      expect(() => checkDrift(encodeHlc({ wallTime: now + 60_001, counter: 0, siteId: site, opSeq: 0 }), now, 60_000, 'x.hlc'))
        .to.throw(SyncError, 'x.hlc').with.property('code', 'CLOCK_DRIFT');
    });
    it('refuses the largest possible HLC', () => {
      const max = Buffer.alloc(30, 0xff);
      expect(() => checkDrift(max, Date.now(), 60_000)).to.throw(SyncError).with.property('code', 'CLOCK_DRIFT');
    });
  });

  describe('HlcClock', () => {
    it('ticks strictly upward even when the wall clock stands still or steps back', () => {
      let now = 1000;
      const clock = new HlcClock(randomSiteId(), { now: () => now });
      const seen: Buffer[] = [];
      for (let i = 0; i < 5; i++) seen.push(clock.tick());
      now = 500;
      for (let i = 0; i < 5; i++) seen.push(clock.tick());
      for (let i = 1; i < seen.length; i++) expect(compareHlc(seen[i]!, seen[i - 1]!)).to.be.greaterThan(0);
    });
    it('rolls into the next millisecond when the counter is exhausted', () => {
      const clock = new HlcClock(randomSiteId(), { now: () => 1000 });
      let prev = clock.tick();
      for (let i = 0; i < 70_000; i++) {
        const next = clock.tick();
        if (compareHlc(next, prev) <= 0) throw new Error(`not increasing at ${i}`);
        prev = next;
      }
      expect(decodeHlc(prev).wallTime).to.equal(1001);
    });
    it('resumes after a persisted timestamp', () => {
      const site = randomSiteId();
      const after = encodeHlc({ wallTime: 5000, counter: 3, siteId: site, opSeq: 0 });
      const clock = new HlcClock(site, { now: () => 1000, after });
      expect(compareHlc(clock.tick(), after)).to.be.greaterThan(0);
    });
    it('receive merges a remote clock and refuses one too far ahead', () => {
      const now = 10_000_000;
      const clock = new HlcClock(randomSiteId(), { now: () => now });
      const remote = encodeHlc({ wallTime: now + 30_000, counter: 4, siteId: randomSiteId(), opSeq: 0 });
      const merged = clock.receive(remote);
      expect(decodeHlc(merged).wallTime).to.equal(now + 30_000);
      expect(decodeHlc(merged).counter).to.equal(5);
      expect(compareHlc(clock.tick(), merged)).to.be.greaterThan(0);
      const far = encodeHlc({ wallTime: now + 61_000, counter: 0, siteId: randomSiteId(), opSeq: 0 });
      expect(() => clock.receive(far)).to.throw(SyncError).with.property('code', 'CLOCK_DRIFT');
    });
  });
});

describe('site-id', () => {
  describe('#siteIdFromWire', () => {
    it('round-trips random site ids', () => {
      for (let i = 0; i < 100; i++) {
        const id = randomSiteId();
        const wire = siteIdToWire(id);
        expect(wire).to.have.length(22);
        expect(isSiteId(wire)).to.equal(true);
        expect(siteIdFromWire(wire).equals(id)).to.equal(true);
      }
    });
    it('refuses other lengths, standard base64 and non-canonical spellings', () => {
      for (const bad of ['short', `${SITE}A`, 'PxqcRFELTo2aLmFzDNXuB+', 'PxqcRFELTo2aLmFzDNXuBx', 7, null]) {
        expect(() => siteIdFromWire(bad), String(bad)).to.throw(SyncError).with.property('code', 'INVALID_SITE_ID');
      }
    });
  });
});
