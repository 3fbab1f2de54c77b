import { expect } from 'chai';
import { isAbsolute, join, relative, sep } from 'node:path';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import { databaseDirectory, databaseIdFromDirectory, validateDatabaseId } from '../../lib/storage/database-id.js';

const DATA_DIR = join(sep, 'srv', 'sync', 'data');
const ALLOWED = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:.-';

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

/** Small seeded PRNG so a failure reproduces. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomId(random: () => number): string {
  // Bias towards short ids and a few lengths around the 64-char segment
  // boundary, where nesting mistakes would show.
  const pick = random();
  const length = pick < 0.5 ? 1 + Math.floor(random() * 6)
    : pick < 0.8 ? 60 + Math.floor(random() * 10)
      : 1 + Math.floor(random() * 128);
  // A small alphabet makes near-collisions (same text, different case or punctuation) likely.
  const alphabet = random() < 0.5 ? 'aA._:-0' : ALLOWED;
  let id = '';
  while (id.length < length) {
    const ch = alphabet[Math.floor(random() * alphabet.length)]!;
    if (id.length === 0 && ch === '.') continue;
    id += ch;
  }
  return id;
}

describe('database-id', () => {
  describe('#validateDatabaseId', () => {
    it('accepts ids of 1-128 allowed characters', () => {
      for (const id of ['a', 'Z', '0', '_', ':', '-', 'a.b', 'tenant:db_1.v2-x', 'x'.repeat(128), `-${ALLOWED}`]) {
        expect(validateDatabaseId(id)).to.equal(id);
      }
    });

    it('refuses bad ids with INVALID_DATABASE_ID naming the field and the value', () => {
      const bad: unknown[] = [
        '', 'x'.repeat(129), '.hidden', '.', '..', 'bad id/with spaces', 'a b', 'a/b', 'a\\b', '../x',
        'é', '日本', 'a\u0000b', 'emoji😀', 'tab\t', 42, null, undefined, {}, ['a'],
      ];
      for (const value of bad) {
        const err = thrown(() => validateDatabaseId(value));
        expect(isSyncError(err), `accepted ${JSON.stringify(value)}`).to.equal(true);
        expect((err as { code: string }).code).to.equal(ErrorCode.InvalidDatabaseId);
        expect((err as Error).message).to.match(/^databaseId: /);
      }
      expect((thrown(() => validateDatabaseId('bad id/with spaces')) as Error).message).to.equal(
        'databaseId: expected 1-128 characters of [A-Za-z0-9_:.-] not starting with ".", got "bad id/with spaces"',
      );
      expect((thrown(() => validateDatabaseId(7, 'params.db')) as Error).message).to.match(/^params\.db: .*got 7$/);
    });

    it('accepts a dot anywhere but first', () => {
      expect(validateDatabaseId('a.')).to.equal('a.');
      expect(validateDatabaseId('a..b')).to.equal('a..b');
    });
  });

  describe('#databaseDirectory', () => {
    it('keeps lowercase letters, digits and dashes as they are', () => {
      expect(databaseDirectory(DATA_DIR, 'abc-123')).to.equal(join(DATA_DIR, 'abc-123'));
    });

    it('escapes every other character as _ and two hex digits', () => {
      expect(databaseDirectory(DATA_DIR, 'A.b:c_d')).to.equal(join(DATA_DIR, '_41_2eb_3ac_5fd'));
    });

    it('refuses an invalid id with INVALID_DATABASE_ID', () => {
      for (const id of ['', '..', '../etc', 'a/b', 'x'.repeat(129)]) {
        const err = thrown(() => databaseDirectory(DATA_DIR, id));
        expect((err as { code?: string }).code, id).to.equal(ErrorCode.InvalidDatabaseId);
      }
    });

    it('gives ids differing only in punctuation or case different directories', () => {
      const groups = [
        ['a.b', 'a:b', 'a_b', 'a-b', 'ab'],
        ['Abc', 'aBc', 'abC', 'abc', 'ABC'],
        ['x_2e', 'x.', 'x_', 'x__2e'],
      ];
      for (const group of groups) {
        const dirs = group.map((id) => databaseDirectory(DATA_DIR, id));
        expect(new Set(dirs).size, group.join(' ')).to.equal(group.length);
        // Also distinct on a case-insensitive filesystem.
        expect(new Set(dirs.map((d) => d.toLowerCase())).size, group.join(' ')).to.equal(group.length);
      }
    });

    it('keeps every path component of a 128-character id within 255 bytes', () => {
      for (const id of ['A'.repeat(128), '_'.repeat(128), ':'.repeat(64) + 'a'.repeat(64), 'a'.repeat(65)]) {
        const rel = relative(DATA_DIR, databaseDirectory(DATA_DIR, id));
        for (const part of rel.split(sep)) expect(Buffer.byteLength(part)).to.be.at.most(255);
      }
      expect(relative(DATA_DIR, databaseDirectory(DATA_DIR, 'A'.repeat(128))).split(sep)).to.have.length(2);
    });

    it('does not put a short id\'s directory above a longer one\'s', () => {
      const short = 'a'.repeat(64);
      const long = 'a'.repeat(65);
      const shortDir = databaseDirectory(DATA_DIR, short);
      const longDir = databaseDirectory(DATA_DIR, long);
      expect(longDir.startsWith(shortDir + sep)).to.equal(false);
      expect(longDir).to.equal(join(DATA_DIR, `${short}+`, 'a'));
    });

    it('always stays inside the data directory', () => {
      for (const id of ['..', '.', '-', 'a..', ':..:', '_..', 'a'.repeat(128)]) {
        let dir: string;
        try {
          dir = databaseDirectory(DATA_DIR, id);
        } catch {
          continue;
        }
        const rel = relative(DATA_DIR, dir);
        expect(rel, id).to.not.equal('');
        expect(isAbsolute(rel), id).to.equal(false);
        expect(rel.split(sep), id).to.not.include('..');
        expect(rel.split(sep).some((p) => p.startsWith('.')), id).to.equal(false);
      }
    });

    it('works with a relative data directory', () => {
      expect(databaseDirectory('data', 'Db')).to.equal(join('data', '_44b'));
    });
  });

  describe('#databaseIdFromDirectory', () => {
    it('inverts databaseDirectory', () => {
      for (const id of ['a', 'A.b:c_d', '-', 'x'.repeat(64), 'x'.repeat(65), 'Q'.repeat(128), ALLOWED]) {
        expect(databaseIdFromDirectory(relative(DATA_DIR, databaseDirectory(DATA_DIR, id)))).to.equal(id);
      }
    });

    it('accepts / as separator', () => {
      expect(databaseIdFromDirectory(`${'a'.repeat(64)}+/b`)).to.equal(`${'a'.repeat(64)}b`);
    });

    it('returns undefined for anything databaseDirectory would not produce', () => {
      const notEncodings = [
        '', '.', '..', '.hidden', '_2ehidden', 'ABC', 'a.b', 'a_4', 'a_4G', 'a_4A', '_61', '_2f', '_00', '_c3',
        'a+', 'a+/b', `${'a'.repeat(64)}+`, `${'a'.repeat(64)}/b`, `${'a'.repeat(64)}+/`, `${'a'.repeat(63)}+/b`,
        `${'a'.repeat(65)}`, `${'a'.repeat(64)}+/${'a'.repeat(65)}`, 'a//b', '/a', 'a b', 'lost+found',
        `${'a'.repeat(64)}+/${'a'.repeat(64)}+/a`,
      ];
      for (const rel of notEncodings) expect(databaseIdFromDirectory(rel), rel).to.equal(undefined);
    });
  });

  describe('directory mapping (property)', () => {
    it('maps 5,000 random valid ids to distinct, non-nested, reversible directories', () => {
      const random = mulberry32(0x5eed);
      const byDir = new Map<string, string>();
      for (let i = 0; i < 5000; i++) {
        const id = randomId(random);
        const dir = databaseDirectory(DATA_DIR, id);
        const key = dir.toLowerCase();
        const previous = byDir.get(key);
        if (previous !== undefined) expect(previous, `${id} collides with ${previous}`).to.equal(id);
        byDir.set(key, id);
        expect(databaseIdFromDirectory(relative(DATA_DIR, dir))).to.equal(id);
      }
      // No directory may be an ancestor of another: check every proper prefix path.
      for (const [dir, id] of byDir) {
        const parts = dir.split(sep);
        for (let n = DATA_DIR.split(sep).length + 1; n < parts.length; n++) {
          const ancestor = byDir.get(parts.slice(0, n).join(sep));
          expect(ancestor, `${ancestor} is nested above ${id}`).to.equal(undefined);
        }
      }
      expect(byDir.size).to.be.greaterThan(3000);
    });
  });
});
