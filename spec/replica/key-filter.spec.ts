import { expect } from 'chai';
import { KeyFilter } from '../../lib/replica/key-filter.js';
import { Random } from '../helpers/random.js';

describe('key-filter', () => {
  describe('#mightContain', () => {
    it('never forgets a key, across layer growth', () => {
      const filter = new KeyFilter(1000);
      const rng = new Random(3);
      const keys = Array.from({ length: 50_000 }, () => rng.bytes(20 + rng.int(40)));
      keys.forEach((k) => filter.add(k));
      expect(filter.size).to.equal(50_000);
      expect(keys.every((k) => filter.mightContain(k))).to.equal(true);
    });

    it('says "absent" for most keys never added', () => {
      const filter = new KeyFilter(1000);
      const rng = new Random(4);
      for (let i = 0; i < 20_000; i++) filter.add(Buffer.from(`present-${i}-${rng.int(1e9)}`));
      let falsePositives = 0;
      for (let i = 0; i < 20_000; i++) if (filter.mightContain(Buffer.from(`absent-${i}`))) falsePositives++;
      // About 1% per layer by design; the bound is loose so the test is not flaky.
      expect(falsePositives / 20_000).to.be.lessThan(0.08);
    });
  });
});
