import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { validateChangeSets, validateCursor, validateCheckpoint } from '../../lib/protocol/validate.js';
import { validateSqlValue, encodeSqlValue, decodeSqlValue, type SqlValue } from '../../lib/protocol/values.js';
import { SyncError } from '../../lib/errors.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/reference-transcript.jsonl', import.meta.url));
const transcript = readFileSync(FIXTURE, 'utf8').trim().split('\n').map((line) => JSON.parse(line));
// The transcript was recorded around this wall time; drift is judged against it.
const RECORDED_AT = 1795619940000;

const SITE = 'PxqcRFELTo2aLmFzDNXuBw';
const HLC = 'AAABmraX6AAAAD8anERRC06Nmi5hcwzV7gcAAAAA';
const NOW = 1764000000000;

function changeSet(overrides: Record<string, unknown> = {}, change: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    siteId: SITE,
    transactionId: `1764000000000:0:${SITE}`,
    hlc: HLC,
    changes: [{ type: 'column', schema: 'main', table: 'notes', pk: [1], column: 'title', value: 'hi', hlc: HLC, ...change }],
    schemaMigrations: [],
    ...overrides,
  };
}

function refusal(value: unknown): SyncError {
  try {
    validateChangeSets(value, { now: NOW });
  } catch (err) {
    expect(err).to.be.instanceOf(SyncError);
    return err as SyncError;
  }
  throw new Error('expected a refusal');
}

describe('values', () => {
  describe('#encodeSqlValue / #decodeSqlValue', () => {
    const cases: [string, SqlValue][] = [
      ['null', null], ['integer', 42], ['float', -1.5], ['true', true], ['false', false],
      ['empty string', ''], ['unicode', 'héllo wörld ✓ 𝄞 日本'], ['empty blob', new Uint8Array()],
      ['blob', new Uint8Array([1, 2, 3, 255])], ['bigint', 9007199254740993n], ['negative bigint', -(2n ** 63n)],
    ];
    for (const [label, value] of cases) {
      it(`round-trips ${label} through JSON`, () => {
        const wire = JSON.parse(JSON.stringify(encodeSqlValue(value)));
        const checked = validateSqlValue(wire, 'v');
        expect(decodeSqlValue(checked)).to.deep.equal(value);
      });
    }
    it('writes blobs as {"__bin"} standard base64', () => {
      expect(encodeSqlValue(new Uint8Array([1, 2, 3, 0xff]))).to.deep.equal({ __bin: 'AQID/w==' });
    });
    it('writes big integers as {"__bigint"} decimal', () => {
      expect(encodeSqlValue(2n ** 62n)).to.deep.equal({ __bigint: '4611686018427387904' });
    });
  });
  describe('#validateSqlValue', () => {
    it('refuses non-finite numbers, arrays, stray keys and non-canonical spellings', () => {
      for (const bad of [NaN, Infinity, [1], { a: 1 }, { __bin: 'AQID/w==', x: 1 }, { __bin: 'AQI' }, { __bin: 'AR==' },
        { __bigint: '007' }, { __bigint: '1e3' }, { __bigint: '99999999999999999999999' }, { __bin: 5 }]) {
        expect(() => validateSqlValue(bad, 'changes[0].value'), JSON.stringify(bad)).to.throw(SyncError, 'changes[0].value');
      }
    });
  });
});

describe('validate', () => {
  describe('#validateChangeSets', () => {
    it('accepts every apply_changes a real client sent in the reference transcript', () => {
      const good = transcript.filter((m) => m.dir === 'c2s' && m.msg.type === 'apply_changes' && !String(m.step).startsWith('error'));
      expect(good.length).to.be.greaterThan(3);
      for (const m of good) {
        const sets = validateChangeSets(m.msg.changes, { now: RECORDED_AT });
        // The canonical form keeps every field the client sent.
        expect(sets.map((s) => s.wire)).to.deep.equal(m.msg.changes.map((cs: Record<string, unknown>) => ({ schemaMigrations: [], ...cs })));
      }
    });

    it('refuses the bad frames of the transcript with a field path', () => {
      const bad = transcript.filter((m) => m.dir === 'c2s' && m.msg.type === 'apply_changes' && String(m.step).startsWith('error'));
      for (const m of bad) {
        expect(() => validateChangeSets(m.msg.changes, { now: RECORDED_AT }), m.step).to.throw(SyncError, /changes/);
      }
    });

    it('names the path and length of a short change hlc', () => {
      const short = Buffer.alloc(29).toString('base64');
      const err = refusal([changeSet({}, { hlc: short })]);
      expect(err.code).to.equal('INVALID_HLC');
      expect(err.message).to.equal('changes[0].changes[0].hlc: expected 30 bytes of base64, got 29');
    });

    it('holds every HLC in the message to the drift bound, not only the change set', () => {
      const future = Buffer.from(HLC, 'base64');
      future.writeUInt32BE(future.readUInt32BE(4) + 3_600_000, 4);
      const far = future.toString('base64');
      expect(refusal([changeSet({}, { hlc: far })]).code).to.equal('CLOCK_DRIFT');
      expect(refusal([changeSet({}, { priorValue: 'x', priorHlc: far })]).message).to.match(/^changes\[0\]\.changes\[0\]\.priorHlc/);
      expect(refusal([changeSet({ hlc: far })]).message).to.match(/^changes\[0\]\.hlc/);
      expect(refusal([changeSet({ schemaMigrations: [{ type: 'create_table', schema: 'main', table: 't', ddl: 'x', hlc: far, schemaVersion: 1 }] })]).code).to.equal('CLOCK_DRIFT');
    });

    it('refuses unknown change and migration types', () => {
      expect(refusal([changeSet({}, { type: 'upsert' })]).message).to.equal('changes[0].changes[0].type: expected "column" or "delete", got "upsert"');
      expect(refusal([changeSet({ schemaMigrations: [{ type: 'truncate', schema: 'main', table: 't', ddl: 'x', hlc: HLC, schemaVersion: 1 }] })]).code).to.equal('INVALID_CHANGESET');
    });

    it('refuses non-strings where names are expected, empty pks and lone prior fields', () => {
      expect(refusal([changeSet({}, { table: 5 })]).message).to.match(/^changes\[0\]\.changes\[0\]\.table/);
      expect(refusal([changeSet({}, { column: { a: 1 } })]).message).to.match(/\.column/);
      expect(refusal([changeSet({}, { pk: [] })]).message).to.match(/\.pk/);
      expect(refusal([changeSet({}, { priorValue: 'x' })]).message).to.match(/priorHlc/);
      expect(refusal([changeSet({}, { value: undefined })]).message).to.match(/\.value/);
      expect(refusal([changeSet({ siteId: 'short' })]).code).to.equal('INVALID_SITE_ID');
      expect(refusal([changeSet({ transactionId: 'x' })]).message).to.match(/transactionId/);
      expect(refusal('nope').code).to.equal('INVALID_MESSAGE');
    });

    it('drops unknown keys and keeps optional keys present-only', () => {
      const [set] = validateChangeSets([changeSet({ extra: 1 }, { extra: 2 })], { now: NOW });
      expect(set!.wire).to.not.have.property('extra');
      expect(set!.wire.changes[0]).to.deep.equal({ type: 'column', schema: 'main', table: 'notes', pk: [1], column: 'title', value: 'hi', hlc: HLC });
    });

    it('treats absent schemaMigrations as []', () => {
      const input = changeSet();
      delete input.schemaMigrations;
      expect(validateChangeSets([input], { now: NOW })[0]!.wire.schemaMigrations).to.deep.equal([]);
    });
  });

  describe('#validateCursor', () => {
    it('treats absence as from the beginning and refuses junk', () => {
      expect(validateCursor(undefined)).to.equal(undefined);
      expect(validateCursor(HLC)!.toString('base64')).to.equal(HLC);
      expect(() => validateCursor('not-an-hlc')).to.throw(SyncError, 'sinceHLC').with.property('code', 'INVALID_HLC');
    });
    it('treats only an absent cursor as from the beginning: "", null and other non-strings are INVALID_HLC', () => {
      for (const value of ['', null, 0, false, [], {}, [HLC]]) {
        expect(() => validateCursor(value), JSON.stringify(value)).to.throw(SyncError, 'sinceHLC').with.property('code', 'INVALID_HLC');
      }
      expect(() => validateCursor('')).to.throw(SyncError, 'leave the field out to read from the beginning');
      expect(() => validateCursor(null)).to.throw(SyncError, 'sinceHLC: got null');
    });
  });

  describe('#validateCheckpoint', () => {
    const good = { snapshotId: 's1', siteId: SITE, hlc: HLC, lastTableIndex: 0, lastEntryIndex: 10, completedTables: ['main.notes'], entriesProcessed: 10, createdAt: NOW };
    it('accepts a well-formed checkpoint', () => {
      expect(validateCheckpoint(good).completedTables).to.deep.equal(['main.notes']);
    });
    it('refuses wrong types and ranges with INVALID_CHECKPOINT', () => {
      for (const [field, value] of [['snapshotId', 5], ['siteId', 'x'], ['hlc', 'AAAA'], ['lastTableIndex', -2], ['lastEntryIndex', 1.5],
        ['hlc', ''], ['hlc', null], ['hlc', undefined], ['siteId', ''],
        ['completedTables', 'main.notes'], ['completedTables', [7]], ['completedTables', ['nodot']], ['entriesProcessed', '3'], ['createdAt', null]] as const) {
        expect(() => validateCheckpoint({ ...good, [field]: value }), field).to.throw(SyncError, `checkpoint.${field}`).with.property('code', 'INVALID_CHECKPOINT');
      }
      expect(() => validateCheckpoint(null)).to.throw(SyncError).with.property('code', 'INVALID_CHECKPOINT');
    });
    it('accepts any well-formed site id: real clients send their own (docs/protocol.md §6, §8)', () => {
      for (const siteId of [SITE, 'PxqcRFELTo2aLmFzDNXuBw', '2d_GdFOwQiq_UTmrMGnUSQ']) {
        expect(validateCheckpoint({ ...good, siteId }).siteId).to.equal(siteId);
      }
    });
  });
});
