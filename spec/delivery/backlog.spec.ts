import { expect } from 'chai';
import { smallestFactHlc } from '../../lib/delivery/backlog.js';
import { validateChangeSets } from '../../lib/protocol/validate.js';
import { hlcFromWire } from '../../lib/protocol/hlc.js';
import { TestSite } from '../helpers/changes.js';

describe('delivery/backlog', () => {
  it('smallestFactHlc is the smallest HLC of any change set, change or migration, which a change set\'s own hlc is not', () => {
    const site = new TestSite();
    const one = site.txn([{ pk: [1], column: 'a', value: 'A' }, { pk: [1], column: 'b', value: 'B' }]);
    const two = site.txn([{ pk: [2], column: 'a', value: 'x' }]);
    const sets = validateChangeSets([two, one], { now: Date.now() });
    const smallest = smallestFactHlc(sets)!;
    const all = [one, two].flatMap((set) => [set.hlc, ...set.changes.map((c) => c.hlc)]).map((wire) => hlcFromWire(wire));
    for (const hlc of all) expect(Buffer.compare(smallest, hlc), 'not above any').to.be.at.most(0);
    expect(smallest.equals(hlcFromWire(one.changes[0]!.hlc))).to.equal(true);
    expect(smallestFactHlc([])).to.equal(undefined);
  });
});
