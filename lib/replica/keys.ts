/**
 * Every key and record layout of a replica's store, in one place, versioned
 * by KEY_FORMAT so that a later layout can migrate an older store.
 *
 * Layout, format 1 (all integers big-endian; `s(x)` is an escaped string):
 *
 *   10 01                              format version        u32
 *   10 02                              server site id        16 bytes
 *   10 03                              last stamp issued     HLC (30)
 *   10 04                              retention floor       HLC (30): cursors below it need a snapshot
 *   10 05                              archived up to        HLC (30): the last stamp a durable archive holds
 *   11 s(schema) s(table)              live column versions  u64 count
 *   20 s(schema) kind s(name) ver:u32  schema migration      stamp(30) idx(4) json
 *   30 s(schema) s(table) s(pk) s(col) column version        hlc(30) stamp(30) idx(4) entry-json
 *   40 s(schema) s(table) s(pk)        tombstone             hlc(30) stamp(30) idx(4) createdAt(8) entry-json
 *   50 stamp(30) idx:u32               change log entry      site(16) txlen(1) txid kind(1) change-json
 *   60 createdAt:u64 <40 key>          tombstone age index   (empty)
 *
 * A snapshot reads 10..4f through one iterator, so meta, counts and data come
 * from a single consistent view. The change log (50) holds exactly one entry
 * per live fact (column version, tombstone, migration): replacing a fact
 * deletes its old entry in the same batch, so reading "changes since a
 * cursor" is one range scan that can never return a stale value.
 *
 * s(x): UTF-8 bytes with 00 escaped as 00 ff, terminated by 00 01; a lone
 * UTF-16 surrogate (which UTF-8 cannot hold) is escaped as 00 fe hi lo, its
 * code unit big-endian. Stores written before that escape existed hold no
 * 00 fe (every 00 was followed by ff or 01), so they read unchanged. The
 * encoding is injective and prefix-free and keeps components of one table
 * contiguous.
 * Primary keys are encoded as the JSON text of their canonical wire values.
 */

import { HLC_BYTES } from '../protocol/hlc.js';

/** Version of this layout, stored at META_FORMAT. */
export const KEY_FORMAT = 1;

export const NS_META = 0x10;
export const NS_TABLE_STATS = 0x11;
export const NS_MIGRATION = 0x20;
export const NS_COLUMN = 0x30;
export const NS_TOMBSTONE = 0x40;
export const NS_LOG = 0x50;
export const NS_TOMBSTONE_AGE = 0x60;

export const META_FORMAT = Buffer.from([NS_META, 0x01]);
export const META_SITE_ID = Buffer.from([NS_META, 0x02]);
export const META_LAST_STAMP = Buffer.from([NS_META, 0x03]);
export const META_FLOOR = Buffer.from([NS_META, 0x04]);
export const META_ARCHIVED = Buffer.from([NS_META, 0x05]);

/** Log entry kinds. */
export const LOG_CHANGE = 0x43; // 'C'
export const LOG_MIGRATION = 0x4d; // 'M'

const TERMINATOR = Buffer.from([0x00, 0x01]);
/** Second byte of the escape of one lone UTF-16 surrogate: 00 fe hi lo. */
const SURROGATE_ESCAPE = 0xfe;
/** Second byte of an escaped 00 data byte: 00 ff. */
const ZERO_ESCAPE = 0xff;

const NO_PREFIX = Buffer.alloc(0);

/**
 * Escaped, terminated bytes of one string component (see s(x) above).
 * Injective over every JS string, including ones with lone surrogates, and
 * prefix-free, so distinct names or pks never share a key and one table's
 * keys stay contiguous. A well-formed string gets exactly the bytes key
 * format 1 always wrote.
 */
export function encodeComponent(text: string): Buffer {
  return prefixedComponent(NO_PREFIX, text);
}

/**
 * `prefix` followed by s(text), in one allocation for the common case (a
 * well-formed text with no 00 byte): the hot path builds a few such keys per
 * applied change.
 */
export function prefixedComponent(prefix: Buffer, text: string): Buffer {
  if (!(text as unknown as WellFormedCheck).isWellFormed()) return Buffer.concat([prefix, encodeWithSurrogates(text)]);
  const len = Buffer.byteLength(text, 'utf8');
  const out = Buffer.allocUnsafe(prefix.length + len + 2);
  prefix.copy(out, 0);
  out.write(text, prefix.length, 'utf8');
  const end = prefix.length + len;
  const zero = out.indexOf(0, prefix.length);
  if (zero === -1 || zero >= end) {
    out[end] = 0x00;
    out[end + 1] = 0x01;
    return out;
  }
  return Buffer.concat([out.subarray(0, prefix.length), escapeZeros(out.subarray(prefix.length, end)), TERMINATOR]);
}

/** String.prototype.isWellFormed (Node 20+; not in the ES2022 typings). */
interface WellFormedCheck { isWellFormed(): boolean }

/** UTF-8 bytes with every 00 written 00 ff. */
function escapeZeros(raw: Buffer): Buffer {
  if (raw.indexOf(0) === -1) return raw;
  const parts: number[] = [];
  for (const byte of raw) {
    parts.push(byte);
    if (byte === 0) parts.push(ZERO_ESCAPE);
  }
  return Buffer.from(parts);
}

/**
 * UTF-8 cannot hold a lone surrogate (Buffer turns it into U+FFFD, which
 * would merge "c\ud83d" with "c\ufffd"), so each one is written as the code
 * unit itself behind 00 fe. The well-formed runs between them are UTF-8.
 */
function encodeWithSurrogates(text: string): Buffer {
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0xd800 || unit > 0xdfff) continue;
    if (unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) { i++; continue; }
    }
    if (i > start) parts.push(escapeZeros(Buffer.from(text.slice(start, i), 'utf8')));
    parts.push(Buffer.of(0x00, SURROGATE_ESCAPE, unit >> 8, unit & 0xff));
    start = i + 1;
  }
  if (start < text.length) parts.push(escapeZeros(Buffer.from(text.slice(start), 'utf8')));
  parts.push(TERMINATOR);
  return Buffer.concat(parts);
}

/**
 * Reads one component at `offset`; returns the text and the offset after it.
 * Exact inverse of encodeComponent. Throws on bytes it never writes.
 */
export function decodeComponent(buf: Buffer, offset: number): [string, number] {
  let end = offset;
  let escaped = false;
  for (;;) {
    end = buf.indexOf(0, end);
    if (end === -1 || end + 1 >= buf.length) throw new Error('corrupt key: unterminated component');
    const marker = buf[end + 1];
    if (marker === 0x01) break;
    escaped = true;
    if (marker === ZERO_ESCAPE) end += 2;
    // The code unit's bytes may be 00: step over them, never scan them.
    else if (marker === SURROGATE_ESCAPE) {
      if (end + 3 >= buf.length) throw new Error('corrupt key: truncated surrogate escape');
      end += 4;
    } else throw new Error(`corrupt key: unknown escape 00 ${marker!.toString(16).padStart(2, '0')}`);
  }
  if (!escaped) return [buf.toString('utf8', offset, end), end + 2];
  let text = '';
  let run: number[] = [];
  for (let i = offset; i < end; i++) {
    const byte = buf[i]!;
    if (byte !== 0) { run.push(byte); continue; }
    if (buf[i + 1] === ZERO_ESCAPE) {
      run.push(0);
      i++;
      continue;
    }
    text += Buffer.from(run).toString('utf8') + String.fromCharCode((buf[i + 2]! << 8) | buf[i + 3]!);
    run = [];
    i += 3;
  }
  return [text + Buffer.from(run).toString('utf8'), end + 2];
}

/**
 * Injective in-memory id of (schema, table), for maps keyed by table. Names
 * are length-prefixed (in UTF-16 code units, so lone surrogates count), never
 * joined with a separator that a name could contain: ("main", "x.y") and
 * ("main.x", "y") stay apart.
 */
export function tableId(schema: string, table: string): string {
  return `${schema.length}:${table.length}:${schema}${table}`;
}

/** Key prefix shared by one table's facts in namespace `ns`. */
export function tablePrefix(ns: number, schema: string, table: string): Buffer {
  return Buffer.concat([Buffer.of(ns), encodeComponent(schema), encodeComponent(table)]);
}

/** The key prefixes of one table in each namespace that holds its facts. */
export interface TablePrefixes {
  /** 11 s(schema) s(table): the live column-version counter. */
  statsKey: Buffer;
  /** 30 s(schema) s(table): its column versions. */
  colBase: Buffer;
  /** 40 s(schema) s(table): its tombstones. */
  tombBase: Buffer;
}

export function tablePrefixes(schema: string, table: string): TablePrefixes {
  return {
    statsKey: tablePrefix(NS_TABLE_STATS, schema, table),
    colBase: tablePrefix(NS_COLUMN, schema, table),
    tombBase: tablePrefix(NS_TOMBSTONE, schema, table),
  };
}

/** Key of one column version, under its row's prefix. */
export function columnKey(rowPrefix: Buffer, column: string): Buffer {
  return prefixedComponent(rowPrefix, column);
}

/** Key of a schema migration: (schema, kind, name, schemaVersion). */
export function migrationKey(schema: string, kind: 'table' | 'index', name: string, version: number): Buffer {
  const ver = Buffer.allocUnsafe(4);
  ver.writeUInt32BE(version, 0);
  return Buffer.concat([Buffer.of(NS_MIGRATION), encodeComponent(schema), Buffer.of(kind === 'table' ? 0x74 : 0x69), encodeComponent(name), ver]);
}

/** Key of a change log entry. */
export function logKey(stamp: Buffer, idx: number): Buffer {
  const key = Buffer.allocUnsafe(1 + HLC_BYTES + 4);
  key[0] = NS_LOG;
  stamp.copy(key, 1);
  key.writeUInt32BE(idx, 1 + HLC_BYTES);
  return key;
}

/** The stamp of a change log key (a view). */
export function logKeyStamp(key: Buffer): Buffer {
  return key.subarray(1, 1 + HLC_BYTES);
}

/** Whether a change log key belongs to `stamp`; compares in place. */
export function logKeyHasStamp(key: Buffer, stamp: Buffer): boolean {
  return key.compare(stamp, 0, HLC_BYTES, 1, 1 + HLC_BYTES) === 0;
}

/** First log key strictly after every entry of `stamp`. */
export function logKeyAfter(stamp: Buffer): Buffer {
  return logKey(stamp, 0xffffffff);
}

/** Key of a tombstone's entry in the age index. */
export function tombstoneAgeKey(createdAt: number, tombKey: Buffer): Buffer {
  const key = Buffer.allocUnsafe(9 + tombKey.length);
  key[0] = NS_TOMBSTONE_AGE;
  writeU64(key, createdAt, 1);
  tombKey.copy(key, 9);
  return key;
}

/** The parts of a tombstone age key: when the tombstone was written, and its key. */
export function parseTombstoneAgeKey(ageKey: Buffer): { createdAt: number; tombKey: Buffer } {
  return { createdAt: readU64(ageKey, 1), tombKey: ageKey.subarray(9) };
}

/** Smallest key greater than every key that starts with `prefix`. */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.of(0xff, 0xff, 0xff, 0xff);
}

/** Unsigned 64-bit write of a safe integer. */
export function writeU64(buf: Buffer, value: number, offset: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x1_0000_0000), offset);
  buf.writeUInt32BE(value % 0x1_0000_0000, offset + 4);
}

/** Unsigned 64-bit read as a number. */
export function readU64(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * 0x1_0000_0000 + buf.readUInt32BE(offset + 4);
}

// ---- records ----

export const FACT_HEADER = HLC_BYTES * 2 + 4;
export const TOMBSTONE_HEADER = FACT_HEADER + 8;

/** Column version / migration record: hlc, stamp, idx, then JSON text. */
export function encodeFact(hlc: Buffer, stamp: Buffer, idx: number, json: string, extra?: number): Buffer {
  const header = extra === undefined ? FACT_HEADER : TOMBSTONE_HEADER;
  const len = Buffer.byteLength(json, 'utf8');
  const buf = Buffer.allocUnsafe(header + len);
  hlc.copy(buf, 0);
  stamp.copy(buf, HLC_BYTES);
  buf.writeUInt32BE(idx, HLC_BYTES * 2);
  if (extra !== undefined) writeU64(buf, extra, FACT_HEADER);
  buf.write(json, header, 'utf8');
  return buf;
}

/** The HLC of the fact a record holds (a view into the record). */
export function factHlc(record: Buffer): Buffer {
  return record.subarray(0, HLC_BYTES);
}

/** The stamp under which the record's fact sits in the change log (a view). */
export function factStamp(record: Buffer): Buffer {
  return record.subarray(HLC_BYTES, HLC_BYTES * 2);
}

/** Key of the change log entry of the fact a record holds. */
export function factLogKey(record: Buffer): Buffer {
  return logKey(factStamp(record), record.readUInt32BE(HLC_BYTES * 2));
}

/** When a tombstone record was written (ms). */
export function tombstoneCreatedAt(record: Buffer): number {
  return readU64(record, FACT_HEADER);
}

/** The JSON text a fact record carries (a snapshot entry, or the migration). */
export function factJson(record: Buffer): string {
  return record.toString('utf8', FACT_HEADER);
}

/** The snapshot entry JSON a tombstone record carries. */
export function tombstoneJson(record: Buffer): string {
  return record.toString('utf8', TOMBSTONE_HEADER);
}

/** Change log entry value: site(16) txlen(1) txid kind(1) change-json. */
export function encodeLogEntry(siteId: Buffer, transactionId: string, kind: number, json: string): Buffer {
  const txLen = Buffer.byteLength(transactionId, 'latin1');
  const jsonLen = Buffer.byteLength(json, 'utf8');
  const buf = Buffer.allocUnsafe(16 + 1 + txLen + 1 + jsonLen);
  siteId.copy(buf, 0);
  buf[16] = txLen;
  buf.write(transactionId, 17, 'latin1');
  buf[17 + txLen] = kind;
  buf.write(json, 18 + txLen, 'utf8');
  return buf;
}

/** True when a change log entry came from `siteId` (16 bytes). */
export function logEntryFrom(entry: Buffer, siteId: Buffer): boolean {
  return entry.compare(siteId, 0, 16, 0, 16) === 0;
}

/** Whose transaction a change log entry belongs to (read once per transaction). */
export function logEntryOrigin(entry: Buffer): { siteId: Buffer; transactionId: string } {
  return { siteId: entry.subarray(0, 16), transactionId: entry.toString('latin1', 17, 17 + entry[16]!) };
}

/** What a change log entry holds: its kind (LOG_CHANGE, LOG_MIGRATION) and the fact's wire JSON. */
export function logEntryPayload(entry: Buffer): { kind: number; json: string } {
  const at = 17 + entry[16]!;
  return { kind: entry[at]!, json: entry.toString('utf8', at + 1) };
}
