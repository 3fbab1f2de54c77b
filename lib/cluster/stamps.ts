/**
 * Stamps from Redis Stream entry ids: the deterministic mapping that lets
 * every node of a cluster give each change set of the shared log the same
 * stamp (docs/protocol.md §5), so a cursor or snapshot checkpoint from one
 * node is valid on every node.
 *
 * The mapping. A stamp's (wallTime, counter) pair is read as one number
 * `T = wallTime * 65536 + counter`, and so is an entry id `"<ms>-<seq>"`
 * (`T = ms * 65536 + seq`). An entry that holds `count` change sets owns the
 * `count` consecutive values of T that END at its id: change set `index` gets
 * `T = id - (count - 1) + index`, with the database's server site id and
 * opSeq 0, as every coordinator stamp has (§5). RedisLog.append makes Redis
 * assign ids that way (a Lua script picks the id `max(now, previous id + 1) +
 * count - 1` atomically), so the ranges of two entries never overlap and:
 *
 * - entry ids in stream order give strictly increasing stamps, and within an
 *   entry the stamps increase with the index;
 * - the mapping is injective, and its inverse needs no state: the entry that
 *   holds stamp `s` is the first entry whose id is at least `entryIdOf(s)`,
 *   and the entries holding a stamp above `s` are exactly those whose id is
 *   at least `entryIdAfter(s)` (catch-up reads from there; trimming below it
 *   drops only what `s` covers);
 * - wallTime is Redis's clock (TIME) in ms, so stamps track one clock, as a
 *   single node's do; it runs ahead of that clock only while more than 65,536
 *   change sets per millisecond arrive, like HlcClock borrowing the next ms.
 *
 * Why ids are assigned rather than taken from `XADD *`: Redis's own ids keep
 * the last ms while its clock stands still or steps back, so one ms can carry
 * any seq up to 2^64-1. No stateless order-preserving map can fit that into a
 * stamp while keeping wallTime equal to the id's ms: all 2^64 ids of one ms
 * would have to fit between the stamps of two consecutive ms, which have only
 * 2^16 counters (and opSeq, 2^32 more, must stay 0) between them. So the
 * appender keeps seq within the 16-bit counter instead, and this module
 * refuses (RangeError) any id whose seq exceeds 65,535: such an id was not
 * written by RedisLog.append.
 *
 * Limits: ms at most 2^53 - 1 (the HLC's wallTime is a safe integer); at most
 * 65,536 stamps per millisecond before wallTime borrows the next one.
 */
import { encodeHlc, hlcWallTime, HLC_BYTES, SITE_ID_BYTES } from '../protocol/hlc.js';

/** Counter values per millisecond: the 16-bit counter of an HLC (docs/protocol.md §1). */
export const COUNTER_SPAN = 65_536;
/** Largest seq of an entry id that maps to a stamp; RedisLog.append never assigns more. */
export const MAX_ENTRY_SEQ = COUNTER_SPAN - 1;

const SPAN = BigInt(COUNTER_SPAN);
const MAX_U64 = (1n << 64n) - 1n;
const MAX_WALL = BigInt(Number.MAX_SAFE_INTEGER);
const ENTRY_ID = /^(\d{1,20})-(\d{1,20})$/;

/** The two numbers of a stream entry id `"<ms>-<seq>"`, each 0..2^64-1. */
export interface EntryIdParts {
  ms: bigint;
  seq: bigint;
}

/**
 * Parses a Redis Stream entry id `"<ms>-<seq>"` (decimal, each part
 * 0..2^64-1). Throws TypeError for anything else (`"*"`, `"$"`, a bare `"5"`).
 */
export function parseEntryId(id: string): EntryIdParts {
  const match = typeof id === 'string' ? ENTRY_ID.exec(id) : null;
  if (match === null) throw new TypeError(`expected a stream entry id "<ms>-<seq>", got ${JSON.stringify(id)}`);
  const ms = BigInt(match[1]!);
  const seq = BigInt(match[2]!);
  if (ms > MAX_U64 || seq > MAX_U64) throw new TypeError(`stream entry id ${JSON.stringify(id)}: each part must be at most 2^64-1`);
  return { ms, seq };
}

/** Orders two entry ids as Redis does (ms, then seq): negative, 0 or positive. */
export function compareEntryIds(a: string, b: string): number {
  const x = parseEntryId(a);
  const y = parseEntryId(b);
  if (x.ms !== y.ms) return x.ms < y.ms ? -1 : 1;
  if (x.seq !== y.seq) return x.seq < y.seq ? -1 : 1;
  return 0;
}

/** T of an entry id, or a RangeError when its seq does not fit the counter. */
function positionOf(entryId: string): bigint {
  const { ms, seq } = parseEntryId(entryId);
  if (seq > BigInt(MAX_ENTRY_SEQ)) {
    throw new RangeError(`stream entry id ${entryId}: seq ${seq} does not fit the 16-bit HLC counter (at most ${MAX_ENTRY_SEQ}); only ids assigned by RedisLog.append map to stamps`);
  }
  return ms * SPAN + seq;
}

function checkSiteId(siteId: Uint8Array): void {
  if (!(siteId instanceof Uint8Array) || siteId.length !== SITE_ID_BYTES) throw new TypeError('siteId must be the 16-byte server site id of the database');
}

function stampAt(position: bigint, siteId: Uint8Array, entryId: string): Buffer {
  const wall = position / SPAN;
  if (wall > MAX_WALL) throw new RangeError(`stream entry id ${entryId}: ms above 2^53-1 cannot be an HLC wallTime`);
  return encodeHlc({ wallTime: Number(wall), counter: Number(position % SPAN), siteId, opSeq: 0 });
}

/**
 * The stamp of change set `index` (0-based) of an entry that holds `count`
 * change sets: 30 bytes, the database's `siteId` (16 bytes), opSeq 0.
 * Throws TypeError for a malformed id, a bad index/count or site id;
 * RangeError for an id not assigned by RedisLog.append (seq above 65,535),
 * or one whose range would start before `0-0` or whose ms exceeds 2^53-1.
 */
export function stampOf(entryId: string, index: number, count: number, siteId: Uint8Array): Buffer {
  if (!Number.isSafeInteger(count) || count < 1) throw new TypeError(`count must be a positive integer (change sets in the entry), got ${count}`);
  if (!Number.isSafeInteger(index) || index < 0 || index >= count) throw new TypeError(`index must be an integer in 0..${count - 1}, got ${index}`);
  checkSiteId(siteId);
  const position = positionOf(entryId) - BigInt(count - 1 - index);
  if (position < 0n) throw new RangeError(`stream entry id ${entryId} cannot hold ${count} change sets: its range would start before 0-0`);
  return stampAt(position, siteId, entryId);
}

/** The stamps of all `count` change sets of an entry, in order (see {@link stampOf}). */
export function stampsOf(entryId: string, count: number, siteId: Uint8Array): Buffer[] {
  if (!Number.isSafeInteger(count) || count < 1) throw new TypeError(`count must be a positive integer (change sets in the entry), got ${count}`);
  checkSiteId(siteId);
  const first = positionOf(entryId) - BigInt(count - 1);
  if (first < 0n) throw new RangeError(`stream entry id ${entryId} cannot hold ${count} change sets: its range would start before 0-0`);
  const out: Buffer[] = new Array(count);
  out[0] = stampAt(first, siteId, entryId);
  // The last stamp passed the wallTime check, so plain numbers suffice from here.
  stampAt(first + BigInt(count - 1), siteId, entryId);
  let wallTime = Number(first / SPAN);
  let counter = Number(first % SPAN);
  for (let i = 1; i < count; i++) {
    if (++counter === COUNTER_SPAN) {
      counter = 0;
      wallTime++;
    }
    out[i] = encodeHlc({ wallTime, counter, siteId, opSeq: 0 });
  }
  return out;
}

function checkStamp(stamp: Uint8Array): Buffer {
  if (!(stamp instanceof Uint8Array) || stamp.length !== HLC_BYTES) throw new TypeError(`stamp must be a ${HLC_BYTES}-byte HLC`);
  return Buffer.from(stamp.buffer, stamp.byteOffset, stamp.length);
}

/**
 * The id RedisLog.append gives an entry of `count` change sets (its Lua
 * script does the same arithmetic inside Redis, atomically): the range
 * starts at the later of `nowMs-0` and the value after `previous` (the
 * stream's last id, if any) and after `floor` (an id the entry must exceed,
 * if any), and the id is the range's last value. Throws like
 * {@link stampOf} for malformed input.
 */
export function assignEntryId(nowMs: number, count: number, previous?: string, floor?: string): string {
  if (!Number.isSafeInteger(nowMs) || nowMs < 0) throw new TypeError(`nowMs must be a non-negative safe integer, got ${nowMs}`);
  if (!Number.isSafeInteger(count) || count < 1) throw new TypeError(`count must be a positive integer (change sets in the entry), got ${count}`);
  let start = BigInt(nowMs) * SPAN;
  for (const bound of [previous, floor]) {
    if (bound === undefined) continue;
    const { ms, seq } = parseEntryId(bound);
    // A seq past the counter (an id not made here) is treated as the end of its ms.
    const after = seq >= BigInt(MAX_ENTRY_SEQ) ? (ms + 1n) * SPAN : ms * SPAN + seq + 1n;
    if (after > start) start = after;
  }
  const last = start + BigInt(count - 1);
  return `${last / SPAN}-${last % SPAN}`;
}

/**
 * The entry id at a stamp's (wallTime, counter): `"<wallTime>-<counter>"`.
 * For the last stamp of an entry it is that entry's id; in general the entry
 * holding the stamp is the first one whose id is at least this. siteId and
 * opSeq are ignored: all stamps of a database share them.
 */
export function entryIdOf(stamp: Uint8Array): string {
  const buf = checkStamp(stamp);
  return `${hlcWallTime(buf)}-${buf.readUInt16BE(8)}`;
}

/**
 * The smallest entry id after a stamp: the entries whose id is at least this
 * are exactly those holding a stamp above `stamp`. Catch-up after an applied
 * stamp reads from here (XRANGE, inclusive), and trimming everything that a
 * stamp covers is `XTRIM MINID <this>`. An opSeq above 0 changes nothing:
 * every stamp of the log has opSeq 0, so the next one is the next counter.
 */
export function entryIdAfter(stamp: Uint8Array): string {
  const buf = checkStamp(stamp);
  const wall = hlcWallTime(buf);
  const counter = buf.readUInt16BE(8);
  return counter < MAX_ENTRY_SEQ ? `${wall}-${counter + 1}` : `${wall + 1}-0`;
}
