import { expect } from 'chai';
import { encodeComponent, decodeComponent, prefixedComponent, tableId, tablePrefix, NS_COLUMN, prefixEnd } from '../../lib/replica/keys.js';
import { Random } from '../helpers/random.js';

/** The component encoder of key format 1 as first shipped: stores on disk hold exactly these bytes. */
function formatOneEncode(text: string): Buffer {
  const parts: number[] = [];
  for (const byte of Buffer.from(text, 'utf8')) {
    parts.push(byte);
    if (byte === 0) parts.push(0xff);
  }
  return Buffer.from([...parts, 0x00, 0x01]);
}

/** Code units that stress the escapes: NUL, the terminator and escape bytes, both surrogate halves, BMP and astral text. */
const UNITS = [0x00, 0x01, 0xfe, 0xff, 0x2e, 0x61, 0xe9, 0xfffd, 0xd800, 0xd83d, 0xdbff, 0xdc00, 0xde00, 0xdfff, 0x4e2d, 0xd801, 0xdc37];

function randomText(rng: Random): string {
  const n = rng.int(12);
  let text = '';
  for (let i = 0; i < n; i++) text += String.fromCharCode(rng.next() < 0.7 ? rng.pick(UNITS) : rng.int(0x10000));
  return text;
}

describe('replica keys', () => {
  describe('#prefixedComponent', () => {
    it('gives the bytes of the prefix followed by encodeComponent, for every kind of text', () => {
      const prefix = Buffer.from([NS_COLUMN, 0x61, 0x00, 0x01]);
      const texts = ['', 'title', '[1,"a"]', 'nul\u0000inside', '\u0000', 'é ü 日本', '😀', 'c\ud83d', '\udc00x', 'a\u0000\ud800'];
      for (const text of texts) {
        const expected = Buffer.concat([prefix, encodeComponent(text)]);
        expect(prefixedComponent(prefix, text).equals(expected), JSON.stringify(text)).to.equal(true);
        expect(prefixedComponent(Buffer.alloc(0), text).equals(encodeComponent(text)), JSON.stringify(text)).to.equal(true);
        expect(decodeComponent(prefixedComponent(prefix, text), prefix.length)[0]).to.equal(text);
      }
    });
  });

  describe('#encodeComponent / #decodeComponent', () => {
    it('round-trips random strings exactly, lone surrogates included (seeded)', () => {
      const rng = new Random(20240611);
      let lone = 0;
      for (let i = 0; i < 20_000; i++) {
        const text = randomText(rng);
        if (!(text as unknown as { isWellFormed(): boolean }).isWellFormed()) lone++;
        const encoded = encodeComponent(text);
        const [back, end] = decodeComponent(encoded, 0);
        expect(back, JSON.stringify(text)).to.equal(text);
        expect(end).to.equal(encoded.length);
      }
      // The property must actually have been exercised on ill-formed strings.
      expect(lone).to.be.greaterThan(5000);
    });

    it('keeps apart strings that differ only by a lone surrogate vs U+FFFD', () => {
      const pairs = [['c\ud83d', 'c\ufffd'], ['\udc00', '\ufffd'], ['a\ud800b', 'a\ufffdb'], ['\ud83d\ud83d', '\ufffd\ufffd'], ['x\udfff', 'x\ufffd']];
      for (const [lone, replacement] of pairs) {
        expect(encodeComponent(lone!).equals(encodeComponent(replacement!)), JSON.stringify(lone)).to.equal(false);
        expect(decodeComponent(encodeComponent(lone!), 0)[0]).to.equal(lone);
      }
    });

    it('is injective and prefix-free: a sequence of components decodes back to itself (seeded)', () => {
      const rng = new Random(7);
      const seen = new Map<string, string>();
      for (let i = 0; i < 5000; i++) {
        const parts = Array.from({ length: 1 + rng.int(4) }, () => randomText(rng));
        const key = Buffer.concat(parts.map(encodeComponent));
        let at = 0;
        const back: string[] = [];
        while (at < key.length) {
          const [text, next] = decodeComponent(key, at);
          back.push(text);
          at = next;
        }
        expect(back).to.deep.equal(parts);
        const hex = key.toString('hex');
        const id = JSON.stringify(parts);
        if (seen.has(hex)) expect(seen.get(hex)).to.equal(id);
        seen.set(hex, id);
      }
    });

    it('does not end a component at a 00 01 inside a surrogate escape', () => {
      // U+D800 is escaped as 00 fe d8 00: followed by U+0001 the bytes read 00 01 mid-component.
      for (const text of ['\ud800\u0001', '\udc00\u0001x', '\ud800\u0000\u0001']) {
        const key = Buffer.concat([encodeComponent(text), encodeComponent('next')]);
        const [first, at] = decodeComponent(key, 0);
        expect(first).to.equal(text);
        expect(decodeComponent(key, at)[0]).to.equal('next');
      }
    });

    it('writes well-formed strings exactly as key format 1 always did, so existing stores read unchanged (seeded)', () => {
      const rng = new Random(11);
      for (let i = 0; i < 5000; i++) {
        let text = randomText(rng);
        if (!(text as unknown as { isWellFormed(): boolean }).isWellFormed()) text = (text as unknown as { toWellFormed(): string }).toWellFormed();
        const old = formatOneEncode(text);
        expect(encodeComponent(text).equals(old), JSON.stringify(text)).to.equal(true);
        expect(decodeComponent(old, 0)[0]).to.equal(text);
      }
    });

    it('keeps a table\'s keys inside its prefix range even when names hold lone surrogates', () => {
      const rng = new Random(5);
      const tables = Array.from({ length: 200 }, () => [randomText(rng) || 's', randomText(rng) || 't'] as const);
      for (const [schema, table] of tables) {
        const prefix = tablePrefix(NS_COLUMN, schema, table);
        const end = prefixEnd(prefix);
        for (const [otherSchema, otherTable] of tables) {
          const key = Buffer.concat([tablePrefix(NS_COLUMN, otherSchema, otherTable), encodeComponent('[1]'), encodeComponent('col')]);
          const inside = key.compare(prefix) >= 0 && key.compare(end) < 0;
          expect(inside, JSON.stringify([schema, table, otherSchema, otherTable])).to.equal(schema === otherSchema && table === otherTable);
        }
      }
    });

    it('refuses an escape it never writes', () => {
      expect(() => decodeComponent(Buffer.from([0x61, 0x00, 0x02, 0x00, 0x01]), 0)).to.throw('corrupt key');
      expect(() => decodeComponent(Buffer.from([0x61, 0x00, 0xfe, 0xd8]), 0)).to.throw('corrupt key');
    });
  });

  describe('#tableId', () => {
    it('keeps dotted and surrogate names apart', () => {
      expect(tableId('main', 'x.y')).to.not.equal(tableId('main.x', 'y'));
      expect(tableId('main', 'n\ud83d')).to.not.equal(tableId('main', 'n\ufffd'));
      expect(tableId('ab', 'c')).to.not.equal(tableId('a', 'bc'));
    });
  });
});
