import { SyncError, ErrorCode, describeValue } from '../errors.js';

/** A blob on the wire: standard base64 with padding. */
export interface WireBlob { __bin: string }
/** A 64-bit integer too large for a double, as decimal text. */
export interface WireBigint { __bigint: string }
/** A cell or primary-key value as it travels in JSON (docs/protocol.md §1). */
export type WireSqlValue = null | number | string | boolean | WireBlob | WireBigint;
/** The same value in memory. */
export type SqlValue = null | number | string | boolean | Uint8Array | bigint;

const BASE64_STD = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const DECIMAL = /^-?(?:0|[1-9][0-9]{0,19})$/;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/** In-memory value → wire form. */
export function encodeSqlValue(value: SqlValue): WireSqlValue {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError(`cannot encode non-finite number ${value}`);
    return value;
  }
  if (typeof value === 'bigint') {
    // Small bigints travel as plain numbers, as Quereus does.
    return Number.isSafeInteger(Number(value)) && BigInt(Number(value)) === value ? Number(value) : { __bigint: value.toString() };
  }
  if (value instanceof Uint8Array) return { __bin: Buffer.from(value.buffer, value.byteOffset, value.length).toString('base64') };
  throw new TypeError(`cannot encode ${typeof value} as an SQL value`);
}

/** Wire form → in-memory value (assumes a validated value). */
export function decodeSqlValue(value: WireSqlValue): SqlValue {
  if (value === null || typeof value !== 'object') return value;
  if ('__bin' in value) return new Uint8Array(Buffer.from(value.__bin, 'base64'));
  return BigInt(value.__bigint);
}

/**
 * Checks an untrusted wire value and returns it in canonical form (a fresh
 * object for blobs and bigints, so stray keys never reach storage). Blob and
 * bigint spellings must be canonical: equal values must have equal text, or
 * two spellings of one primary key would address two rows.
 */
export function validateSqlValue(value: unknown, field: string): WireSqlValue {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (!Number.isFinite(value)) throw invalid(field, 'a finite number', value);
      return Object.is(value, -0) ? 0 : value;
    case 'object': {
      if (value === null) return null;
      if (Array.isArray(value)) throw invalid(field, 'an SQL value', value);
      const keys = Object.keys(value);
      if (keys.length === 1 && keys[0] === '__bin') {
        const text = (value as { __bin: unknown }).__bin;
        if (typeof text !== 'string' || !BASE64_STD.test(text) || !canonicalBase64(text)) {
          throw invalid(`${field}.__bin`, 'canonical standard base64', text);
        }
        return { __bin: text };
      }
      if (keys.length === 1 && keys[0] === '__bigint') {
        const text = (value as { __bigint: unknown }).__bigint;
        if (typeof text !== 'string' || !DECIMAL.test(text)) throw invalid(`${field}.__bigint`, 'a decimal integer', text);
        const n = BigInt(text);
        if (n < INT64_MIN || n > UINT64_MAX) throw invalid(`${field}.__bigint`, 'a 64-bit integer', text);
        return { __bigint: text };
      }
      throw new SyncError(ErrorCode.InvalidChangeSet, `${field}: expected an SQL value (null, number, string, boolean, {"__bin"} or {"__bigint"}), got object with keys ${describeValue(keys.join(','))}`);
    }
    default:
      throw invalid(field, 'an SQL value', value);
  }
}

function canonicalBase64(text: string): boolean {
  // The last character may carry bits that decoding drops; refuse those spellings.
  return text.length === 0 || Buffer.from(text, 'base64').toString('base64') === text;
}

function invalid(field: string, expected: string, value: unknown): SyncError {
  return new SyncError(ErrorCode.InvalidChangeSet, `${field}: expected ${expected}, got ${describeValue(value)}`);
}

/** What JSON.stringify escapes in a string: the quote, the backslash, control characters and surrogates (lone ones). */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/**
 * `JSON.stringify(text)`, the same text. A string with nothing to escape
 * (nearly every name and value) is quoted as is: the serializer's setup
 * costs more than its work on a short string. Any surrogate, paired or
 * not, takes the serializer's path.
 */
export function jsonString(text: string): string {
  return NEEDS_ESCAPE.test(text) ? JSON.stringify(text) : `"${text}"`;
}

/**
 * `JSON.stringify(value)` for a validated SQL value, the same text (for a
 * finite number, JSON.stringify writes its ToString). Stored keys and
 * records hold this text (lib/replica), so it must never differ.
 */
export function sqlValueJson(value: WireSqlValue): string {
  switch (typeof value) {
    case 'number':
    case 'boolean':
      return String(value);
    case 'string':
      return jsonString(value);
    default:
      return JSON.stringify(value);
  }
}

/**
 * The JSON text of one change set, from the texts of its parts: `changes`
 * and `migrations` hold each change's and migration's JSON, `hlc` is a
 * stamp's wire text (base64, nothing to escape). Keys come in the order of
 * the ChangeSet interface, so the text is what JSON.stringify writes for
 * such an object. Pushes (ApplyOutcome.acceptedJson) and change pages
 * (lib/replica/change-log.ts) both build it here: a client gets the same
 * text whichever way a change set reaches it.
 */
export function changeSetJson(siteId: string, transactionId: string, hlc: string, changes: readonly string[], migrations: readonly string[]): string {
  return `{"siteId":${jsonString(siteId)},"transactionId":${jsonString(transactionId)},"hlc":"${hlc}","changes":[${changes.join(',')}],"schemaMigrations":[${migrations.join(',')}]}`;
}

/** `JSON.stringify(values)` for validated SQL values, the same text (see sqlValueJson). */
export function sqlValuesJson(values: readonly WireSqlValue[]): string {
  let out = '[';
  for (let i = 0; i < values.length; i++) {
    if (i > 0) out += ',';
    out += sqlValueJson(values[i]!);
  }
  return out + ']';
}
