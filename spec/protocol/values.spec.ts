import { expect } from 'chai';
import { jsonString, sqlValuesJson } from '../../lib/protocol/values.js';
import { Random } from '../helpers/random.js';

describe('protocol values: JSON text', () => {
  it('writes exactly the text JSON.stringify writes for every kind of primary key (row keys on disk hold it)', () => {
    const numbers = [0, -0, 1, -1, 0.1 + 0.2, 1e21, 1e-7, 5e-324, -1.7976931348623157e308, Number.MAX_SAFE_INTEGER, 2 ** 53 + 2, 123456789.125];
    const others = [null, true, false, '', 'plain', 'quote " and \\ backslash', '\u2028\u0000\ud800 lone', '😀', { __bin: 'AAEC' }, { __bigint: '9223372036854775807' }];
    const rng = new Random(20261201);
    for (let i = 0; i < 2000; i++) {
      // Validated values only: a number is finite (validation refuses the others).
      const number = (): number => { const n = rng.pick(numbers) * (rng.next() < 0.5 ? 1 : rng.int(1000)); return Number.isFinite(n) ? n : -0; };
      const pk = Array.from({ length: 1 + rng.int(4) }, () => (rng.next() < 0.6 ? number() : rng.pick(others)));
      expect(sqlValuesJson(pk as never), JSON.stringify(pk)).to.equal(JSON.stringify(pk));
    }
  });

  it('quotes every string exactly as JSON.stringify does: quotes, backslashes, controls, paired and lone surrogates, U+2028', () => {
    const pieces = ['a', 'Z', ' ', '"', '\\', '/', '\n', '\u0000', '\u001f', '\u007f', '\u2028', '\u2029', 'é', '😀', '\ud83d', '\ude00', '\uffff'];
    const rng = new Random(20261202);
    for (let i = 0; i < 5000; i++) {
      const text = Array.from({ length: rng.int(8) }, () => rng.pick(pieces)).join('');
      expect(jsonString(text), JSON.stringify(text)).to.equal(JSON.stringify(text));
    }
  });
});
