import { expect } from 'chai';
import { STATUS_CODES } from 'node:http';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERROR_DISPOSITIONS, ErrorCode, SyncError, dispositionOf, httpStatusOf, messageOf } from '../lib/errors.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

/** Every .ts file below `dir`, with its path relative to the repo. */
function sources(dir: string): { path: string; text: string }[] {
  return readdirSync(join(ROOT, dir)).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(join(ROOT, path)).isDirectory()) return sources(path);
    return name.endsWith('.ts') ? [{ path: relative(ROOT, join(ROOT, path)), text: readFileSync(join(ROOT, path), 'utf8') }] : [];
  });
}

describe('errors', () => {
  describe('#messageOf', () => {
    it('gives the message of an Error or SyncError, and the text of anything else', () => {
      expect(messageOf(new Error('disk full'))).to.equal('disk full');
      expect(messageOf(new SyncError(ErrorCode.InvalidHlc, 'sinceHLC: expected 30 bytes'))).to.equal('sinceHLC: expected 30 bytes');
      expect(messageOf('plain text')).to.equal('plain text');
      expect(messageOf(42)).to.equal('42');
      expect(messageOf(undefined)).to.equal('undefined');
    });
  });

  describe('#dispositionOf', () => {
    it('treats a code it does not know as INTERNAL_ERROR (500, close 1011), never as a fatal refusal', () => {
      expect(dispositionOf('NO_SUCH_CODE')).to.equal(ERROR_DISPOSITIONS.INTERNAL_ERROR);
      expect(httpStatusOf('NO_SUCH_CODE')).to.equal(500);
      expect(dispositionOf('NO_SUCH_CODE')).to.include({ fatal: false, close: 1011 });
    });
  });

  describe('lib/errors.ts as the one place', () => {
    const files = [...sources('lib'), ...sources('cli')].filter((file) => file.path !== join('lib', 'errors.ts'));

    it('is where error messages are rendered: no module renders one by hand', () => {
      const byHand = files.filter((file) => /instanceof Error \? \(?\w+(?: as Error\)?)?\.message : String\(|function messageOf\b/.test(file.text)).map((file) => file.path);
      expect(byHand, 'use messageOf from lib/errors.ts').to.deep.equal([]);
    });

    it('is where codes get their HTTP status: no other table of codes to statuses, and no hand-written status for a code', () => {
      const codes = Object.values(ErrorCode).join('|');
      const entry = new RegExp(`(?:\\b(?:${codes})['"]?|\\[ErrorCode\\.\\w+\\])\\s*:\\s*\\{?\\s*(?:status:\\s*)?[1-5]\\d\\d\\b`);
      const tables = files.filter((file) => entry.test(file.text)).map((file) => file.path);
      expect(tables, 'codes mapped to statuses outside ERROR_DISPOSITIONS').to.deep.equal([]);
      // res.status(404).json({ ..., error: { code: ErrorCode.NotFound ... } }): the status belongs to httpStatusOf.
      const literal = files.flatMap((file) => [...file.text.matchAll(/\.status\(\d{3}\)\.json\(\{ ok: false, error: \{ code: ErrorCode\.(\w+)/g)].map((m) => `${file.path}: ${m[1]}`));
      expect(literal, 'use httpStatusOf(code)').to.deep.equal([]);
    });

    it('leaves reason phrases to http.STATUS_CODES: no module writes its own', () => {
      const phrases = new Set(Object.values(STATUS_CODES).filter((phrase): phrase is string => phrase !== undefined && phrase.includes(' ')));
      const own = files.flatMap((file) => [...file.text.matchAll(/['"`]([A-Z][A-Za-z' -]+)['"`]/g)].filter((m) => phrases.has(m[1]!)).map((m) => `${file.path}: ${m[1]}`));
      expect(own).to.deep.equal([]);
    });
  });
});
