import { expect } from 'chai';
import {
  assignEntryId, compareEntryIds, COUNTER_SPAN, entryIdAfter, entryIdOf, MAX_ENTRY_SEQ, parseEntryId, stampOf, stampsOf,
} from '../../lib/cluster/stamps.js';
import { compareHlc, decodeHlc, encodeHlc, hlcFromSite } from '../../lib/protocol/hlc.js';
import { randomSiteId } from '../../lib/protocol/site-id.js';
import { Random } from '../helpers/random.js';

const SITE = randomSiteId();

interface Entry { id: string; count: number }

/** A stream as RedisLog.append builds it: ids from assignEntryId, with a clock that stalls, steps back and bursts. */
function randomStream(rnd: Random, length: number): Entry[] {
  const entries: Entry[] = [];
  let now = 1_764_000_000_000 + rnd.int(1_000_000);
  let previous: string | undefined;
  for (let i = 0; i < length; i++) {
    const move = rnd.int(10);
    if (move < 4) now += rnd.int(3);
    else if (move === 4) now -= rnd.int(50); // the clock stepped back
    const count = rnd.pick([1, 1, 1, 2, 3, 17, 1000, 70_000]);
    const floor = rnd.int(20) === 0 ? `${now + rnd.int(5)}-${rnd.int(COUNTER_SPAN)}` : undefined;
    const id = assignEntryId(now, count, previous, floor);
    entries.push({ id, count });
    previous = id;
  }
  return entries;
}

function lowerBound(entries: Entry[], id: string): number {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareEntryIds(entries[mid]!.id, id) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

describe('cluster/stamps', () => {
  describe('#stampOf', () => {
    it('maps the last change set of an entry to (ms, seq) with the site id and opSeq 0', () => {
      const stamp = stampOf('1764000000123-7', 2, 3, SITE);
      const fields = decodeHlc(stamp);
      expect(fields.wallTime).to.equal(1764000000123);
      expect(fields.counter).to.equal(7);
      expect(fields.opSeq).to.equal(0);
      expect(hlcFromSite(stamp, SITE)).to.equal(true);
      expect(decodeHlc(stampOf('1764000000123-7', 0, 3, SITE)).counter).to.equal(5);
    });

    it('maps seq 0 and seq 65535, and orders 65535 below the next ms', () => {
      const zero = stampOf('1000-0', 0, 1, SITE);
      const top = stampOf(`1000-${MAX_ENTRY_SEQ}`, 0, 1, SITE);
      const next = stampOf('1001-0', 0, 1, SITE);
      expect(decodeHlc(zero)).to.include({ wallTime: 1000, counter: 0 });
      expect(decodeHlc(top)).to.include({ wallTime: 1000, counter: 65535 });
      expect(compareHlc(zero, top)).to.be.lessThan(0);
      expect(compareHlc(top, next)).to.be.lessThan(0);
    });

    it('refuses seq 65536 and a huge seq, which RedisLog.append never assigns', () => {
      expect(() => stampOf('1000-65536', 0, 1, SITE)).to.throw(RangeError, 'seq 65536 does not fit the 16-bit HLC counter');
      expect(() => stampOf('1000-18446744073709551615', 0, 1, SITE)).to.throw(RangeError, 'seq 18446744073709551615');
      expect(() => stampsOf('1000-65536', 1, SITE)).to.throw(RangeError);
    });

    it('gives an entry that spans a millisecond boundary the counters of both', () => {
      const stamps = stampsOf('1001-1', 4, SITE);
      expect(stamps.map((s) => `${decodeHlc(s).wallTime}:${decodeHlc(s).counter}`)).to.deep.equal(['1000:65534', '1000:65535', '1001:0', '1001:1']);
    });

    it('refuses malformed ids, indexes and site ids', () => {
      expect(() => stampOf('*', 0, 1, SITE)).to.throw(TypeError, 'expected a stream entry id "<ms>-<seq>", got "*"');
      expect(() => stampOf('12', 0, 1, SITE)).to.throw(TypeError);
      expect(() => stampOf('1-1', 1, 1, SITE)).to.throw(TypeError, 'index must be an integer in 0..0, got 1');
      expect(() => stampOf('1-1', 0, 0, SITE)).to.throw(TypeError, 'count must be a positive integer');
      expect(() => stampOf('1-1', 0, 1, Buffer.alloc(15))).to.throw(TypeError, 'siteId must be the 16-byte');
      expect(() => stampOf('0-1', 0, 3, SITE)).to.throw(RangeError, 'before 0-0');
      expect(() => stampOf('18446744073709551615-0', 0, 1, SITE)).to.throw(RangeError, 'ms above 2^53-1');
      expect(() => parseEntryId('18446744073709551616-0')).to.throw(TypeError, 'at most 2^64-1');
    });
  });

  describe('#assignEntryId', () => {
    it('starts at now, after the previous id, and after a floor', () => {
      expect(assignEntryId(1000, 1)).to.equal('1000-0');
      expect(assignEntryId(1000, 3)).to.equal('1000-2');
      expect(assignEntryId(1000, 1, '1000-2')).to.equal('1000-3');
      expect(assignEntryId(999, 1, '1000-2')).to.equal('1000-3'); // the clock stepped back
      expect(assignEntryId(1000, 2, `1000-${MAX_ENTRY_SEQ}`)).to.equal('1001-1');
      expect(assignEntryId(1000, 1, '1000-18446744073709551615')).to.equal('1001-0');
      expect(assignEntryId(1000, 1, '900-5', '2000-7')).to.equal('2000-8');
      expect(assignEntryId(1000, 70_000)).to.equal(`1001-${70_000 - 1 - COUNTER_SPAN}`);
    });
  });

  describe('properties over random streams', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      it(`seed ${seed}: stamps strictly increase in stream order and map back to their entry`, () => {
        const rnd = new Random(seed);
        const entries = randomStream(rnd, 400);
        let previous: Buffer | undefined;
        for (let e = 0; e < entries.length; e++) {
          const { id, count } = entries[e]!;
          if (e > 0) expect(compareEntryIds(entries[e - 1]!.id, id), 'ids increase').to.be.lessThan(0);
          // Every stamp of a small entry; a sample (in index order) of a big one.
          const indexes = count <= 50 ? [...Array(count).keys()] : [...new Set([0, 1, rnd.int(count), rnd.int(count), count - 2, count - 1])].sort((a, b) => a - b);
          const all = count <= 50 ? stampsOf(id, count, SITE) : undefined;
          if (all) expect(all).to.have.length(count);
          for (const i of indexes) {
            const stamp = stampOf(id, i, count, SITE);
            if (all) expect(stamp.equals(all[i]!)).to.equal(true);
            if (previous) expect(compareHlc(previous, stamp), 'strictly increasing').to.be.lessThan(0);
            previous = stamp;
            // Inverse: the first entry at or after entryIdOf(stamp) holds it...
            expect(lowerBound(entries, entryIdOf(stamp))).to.equal(e);
            // ...and the entries at or after entryIdAfter(stamp) are exactly those holding a later stamp.
            expect(lowerBound(entries, entryIdAfter(stamp))).to.equal(i === count - 1 ? e + 1 : e);
          }
          expect(entryIdOf(stampOf(id, count - 1, count, SITE))).to.equal(id);
        }
      });
    }

    it('orders single-set entries exactly as Redis orders their ids, and round-trips them', () => {
      const rnd = new Random(99);
      const randomId = () => `${rnd.pick([0, 1, 65535, 65536, 2 ** 32, 1_764_000_000_000, Number.MAX_SAFE_INTEGER - 2]) + rnd.int(3)}-${rnd.pick([0, 1, 65534, 65535, rnd.int(COUNTER_SPAN)])}`;
      for (let i = 0; i < 2000; i++) {
        const a = randomId();
        const b = randomId();
        const sa = stampOf(a, 0, 1, SITE);
        expect(Math.sign(compareHlc(sa, stampOf(b, 0, 1, SITE))), `${a} vs ${b}`).to.equal(Math.sign(compareEntryIds(a, b)));
        expect(entryIdOf(sa)).to.equal(a);
      }
    });

    it('treats opSeq as below the next counter', () => {
      const stamp = encodeHlc({ wallTime: 5000, counter: 9, siteId: SITE, opSeq: 12 });
      expect(entryIdOf(stamp)).to.equal('5000-9');
      expect(entryIdAfter(stamp)).to.equal('5000-10');
      expect(entryIdAfter(encodeHlc({ wallTime: 5000, counter: MAX_ENTRY_SEQ, siteId: SITE, opSeq: 0 }))).to.equal('5001-0');
    });
  });

  describe('#compareEntryIds', () => {
    it('orders numerically, not as text', () => {
      expect(compareEntryIds('9-0', '10-0')).to.be.lessThan(0);
      expect(compareEntryIds('10-10', '10-9')).to.be.greaterThan(0);
      expect(compareEntryIds('18446744073709551615-1', '18446744073709551615-1')).to.equal(0);
    });
  });
});
