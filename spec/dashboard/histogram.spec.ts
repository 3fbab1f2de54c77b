import { expect } from 'chai';
import { BucketCounter, windowPercentiles } from '../../lib/dashboard/histogram.js';

describe('dashboard/histogram', () => {
  const bounds = [1, 2, 5, 10];

  describe('#windowPercentiles', () => {
    it('is undefined when nothing was observed in the window', () => {
      expect(windowPercentiles(bounds, [0, 0, 0, 0, 0])).to.equal(undefined);
      expect(windowPercentiles(bounds, [3, 4, 4, 4, 4], [3, 4, 4, 4, 4])).to.equal(undefined);
    });

    it('interpolates inside the bucket the rank falls in, as histogram_quantile does', () => {
      // 10 observations: 4 at or below 1, 4 more in (1, 2], 2 in (2, 5].
      const p = windowPercentiles(bounds, [4, 8, 10, 10, 10])!;
      expect(p.count).to.equal(10);
      expect(p.p50).to.equal(1.25); // rank 5: the first of the 4 in (1, 2]
      expect(p.p90).to.equal(3.5); // rank 9: half-way through (2, 5]
      expect(p.p99).to.equal(4.85);
    });

    it('reads only what happened between two snapshots', () => {
      const earlier = [100, 100, 100, 100, 100];
      const later = [100, 100, 100, 110, 110];
      const p = windowPercentiles(bounds, later, earlier)!;
      expect(p.count).to.equal(10);
      expect(p.p50).to.be.within(5, 10);
    });

    it('reports a rank above every bound as the largest bound', () => {
      expect(windowPercentiles(bounds, [0, 0, 0, 0, 5])).to.deep.include({ p50: 10, p99: 10, count: 5 });
    });
  });

  describe('BucketCounter', () => {
    it('counts cumulatively, with a weight', () => {
      const counter = new BucketCounter(bounds);
      counter.observe(0);
      counter.observe(3, 2);
      counter.observe(50);
      expect(counter.snapshot()).to.deep.equal([1, 1, 3, 3, 4]);
      expect(windowPercentiles(bounds, counter.snapshot())!.count).to.equal(4);
    });
  });
});
