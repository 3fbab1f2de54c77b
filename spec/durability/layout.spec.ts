import { expect } from 'chai';
import { compareArchiveKeys, archiveKeyProblem } from '../../lib/durability/archive.js';
import {
  batchKey, databaseIdOfKey, databaseKey, manifestKey, parseBatchKey, parseSnapshotKey, snapshotKey,
} from '../../lib/durability/layout.js';
import { HLC_BYTES } from '../../lib/protocol/hlc.js';
import { Random } from '../helpers/random.js';

/** Ids that a careless encoding would merge or nest: differing only in ".", ":", "_" or case, and long ones split into segments. */
const IDS = [
  'acme:notes-1', 'acme.notes-1', 'acme_notes-1', 'ACME:notes-1', 'acme_3anotes-1', 'a', 'a-', 'A', 'a_', 'a.b', 'a_2eb',
  'x'.repeat(63), 'x'.repeat(64), 'x'.repeat(65), `${'x'.repeat(64)}y`, 'x'.repeat(128), `${'x'.repeat(127)}.`,
];

/** `n` distinct random stamps in ascending byte order. */
function stamps(rng: Random, n: number): Buffer[] {
  const out = new Map<string, Buffer>();
  while (out.size < n) {
    const stamp = rng.bytes(HLC_BYTES);
    out.set(stamp.toString('hex'), stamp);
  }
  return [...out.values()].sort(Buffer.compare);
}

function shuffled<T>(rng: Random, items: T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe('durability/layout', () => {
  describe('#databaseKey', () => {
    it('gives every database a prefix of its own: distinct, none the start of another, each a valid archive key', () => {
      const keys = IDS.map((id) => databaseKey(id));
      expect(new Set(keys).size).to.equal(IDS.length);
      for (const [i, a] of keys.entries()) {
        expect(archiveKeyProblem(a.slice(0, -1)), a).to.equal(undefined);
        for (const [j, b] of keys.entries()) {
          if (i !== j) expect(a.startsWith(b), `${JSON.stringify(IDS[i])} lists under ${JSON.stringify(IDS[j])}`).to.equal(false);
        }
      }
    });

    it('reads the database id back from any of its keys', () => {
      const rng = new Random(7);
      const [after, last] = stamps(rng, 2);
      for (const id of IDS) {
        for (const key of [manifestKey(id), batchKey(id, after, last!), snapshotKey(id, last, 'id-1')]) {
          expect(databaseIdOfKey(key), key).to.equal(id);
        }
      }
      expect(databaseIdOfKey('databases/acme_3Anotes/manifest.json'), 'a non-canonical escape').to.equal(undefined);
      expect(databaseIdOfKey('elsewhere/acme/manifest.json')).to.equal(undefined);
    });
  });

  describe('batch and snapshot keys', () => {
    it('sort in the order of their stamps, so a listing comes in stamp order, and parse back', () => {
      const rng = new Random(0x1a7);
      for (const id of ['acme:notes-1', 'x'.repeat(128)]) {
        const chain = stamps(rng, 40);
        // Consecutive batches: the first follows nothing, each next one the last stamp of the one before.
        const batches = chain.map((last, i) => ({ key: batchKey(id, i === 0 ? undefined : chain[i - 1], last), after: i === 0 ? Buffer.alloc(HLC_BYTES) : chain[i - 1]!, last }));
        const listed = shuffled(rng, batches.map((b) => b.key)).sort(compareArchiveKeys);
        expect(listed).to.deep.equal(batches.map((b) => b.key));
        for (const b of batches) {
          expect(parseBatchKey(id, b.key)).to.deep.equal({ after: b.after, last: b.last });
          expect(archiveKeyProblem(b.key)).to.equal(undefined);
        }
        const snaps = chain.map((stamp) => ({ key: snapshotKey(id, stamp, '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'), stamp }));
        expect(shuffled(rng, snaps.map((s) => s.key)).sort(compareArchiveKeys)).to.deep.equal(snaps.map((s) => s.key));
        for (const s of snaps) expect(parseSnapshotKey(id, s.key)).to.deep.equal({ stamp: s.stamp });
      }
    });

    it('does not take another database\'s keys, or foreign names, for its own', () => {
      const rng = new Random(3);
      const [after, last] = stamps(rng, 2);
      expect(parseBatchKey('acme.notes-1', batchKey('acme:notes-1', after, last!))).to.equal(undefined);
      expect(parseSnapshotKey('a', snapshotKey('a-', last, 'id'))).to.equal(undefined);
      expect(parseBatchKey('a', `${databaseKey('a')}batches/${'0'.repeat(59)}-${'1'.repeat(60)}.json.gz`), 'a short stamp').to.equal(undefined);
      expect(parseBatchKey('a', `${databaseKey('a')}batches/notes.txt`)).to.equal(undefined);
    });
  });
});
