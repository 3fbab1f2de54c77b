import { SyncError, ErrorCode, describeValue } from '../errors.js';

/** Size of an HLC in its binary form (docs/protocol.md §1). */
export const HLC_BYTES = 30;
/** Size of a site id in bytes. */
export const SITE_ID_BYTES = 16;
/** Default bound on how far a remote wall clock may run ahead of ours. */
export const DEFAULT_MAX_DRIFT_MS = 60_000;

const MAX_COUNTER = 0xffff;
const MAX_OP_SEQ = 0xffffffff;
const TWO_32 = 0x1_0000_0000;
const HLC_WIRE = /^[A-Za-z0-9+/]{40}$/;

/** The four fields of a hybrid logical clock timestamp. */
export interface HlcFields {
  /** Milliseconds since the epoch. */
  wallTime: number;
  /** Logical counter, 0..65535. */
  counter: number;
  /** 16 bytes. */
  siteId: Uint8Array;
  /** Position of a fact inside its transaction, 0..2^32-1. */
  opSeq: number;
}

/**
 * Binary form, big-endian, so that comparing two encodings bytewise gives the
 * total order of §1 (wallTime, counter, siteId, opSeq).
 */
export function encodeHlc(fields: HlcFields): Buffer {
  const { wallTime, counter, siteId, opSeq } = fields;
  if (!Number.isSafeInteger(wallTime) || wallTime < 0) throw new TypeError(`wallTime must be a non-negative safe integer, got ${wallTime}`);
  if (!Number.isInteger(counter) || counter < 0 || counter > MAX_COUNTER) throw new TypeError(`counter must be an integer in 0..65535, got ${counter}`);
  if (!(siteId instanceof Uint8Array) || siteId.length !== SITE_ID_BYTES) throw new TypeError('siteId must be 16 bytes');
  if (!Number.isInteger(opSeq) || opSeq < 0 || opSeq > MAX_OP_SEQ) throw new TypeError(`opSeq must be an integer in 0..2^32-1, got ${opSeq}`);
  const buf = Buffer.allocUnsafe(HLC_BYTES);
  buf.writeUInt32BE(Math.floor(wallTime / TWO_32), 0);
  buf.writeUInt32BE(wallTime % TWO_32, 4);
  buf.writeUInt16BE(counter, 8);
  buf.set(siteId, 10);
  buf.writeUInt32BE(opSeq, 26);
  return buf;
}

/** Splits a 30-byte HLC into its fields. wallTime above 2^53 loses precision. */
export function decodeHlc(buf: Uint8Array): HlcFields {
  if (buf.length !== HLC_BYTES) {
    throw new SyncError(ErrorCode.InvalidHlc, `hlc: expected ${HLC_BYTES} bytes, got ${buf.length}`);
  }
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  return {
    wallTime: hlcWallTime(b),
    counter: b.readUInt16BE(8),
    siteId: Buffer.from(b.subarray(10, 26)),
    opSeq: b.readUInt32BE(26),
  };
}

/** wallTime of a binary HLC, as a number (exact up to 2^53). */
export function hlcWallTime(buf: Buffer): number {
  return buf.readUInt32BE(0) * TWO_32 + buf.readUInt32BE(4);
}

/** The 16 site-id bytes of a binary HLC (a view, not a copy). */
export function hlcSiteId(buf: Buffer): Buffer {
  return buf.subarray(10, 26);
}

/** True when a binary HLC was stamped by `siteId` (16 bytes); compares in place. */
export function hlcFromSite(buf: Buffer, siteId: Buffer): boolean {
  return buf.compare(siteId, 0, SITE_ID_BYTES, 10, 10 + SITE_ID_BYTES) === 0;
}

/** Total order of §1. */
export function compareHlc(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

/** Standard base64 (40 characters) of a binary HLC. */
export function hlcToWire(buf: Buffer): string {
  return buf.toString('base64');
}

/**
 * Parses a wire HLC. Throws INVALID_HLC naming `field` unless the value is
 * standard base64 of exactly 30 bytes.
 */
export function hlcFromWire(value: unknown, field = 'hlc'): Buffer {
  if (typeof value !== 'string') {
    throw new SyncError(ErrorCode.InvalidHlc, `${field}: expected a base64 string of 30 bytes, got ${describeValue(value)}`);
  }
  if (!HLC_WIRE.test(value)) {
    const got = /^[A-Za-z0-9+/]*={0,2}$/.test(value) ? `${Buffer.from(value, 'base64').length}` : describeValue(value);
    throw new SyncError(ErrorCode.InvalidHlc, `${field}: expected 30 bytes of base64, got ${got}`);
  }
  return Buffer.from(value, 'base64');
}

/** Transaction id of §1: "<wallTime>:<counter>:<siteId base64url>". */
export function transactionIdOf(buf: Buffer): string {
  return `${hlcWallTime(buf)}:${buf.readUInt16BE(8)}:${hlcSiteId(buf).toString('base64url')}`;
}

/**
 * Refuses a timestamp more than `maxDriftMs` ahead of `now` with CLOCK_DRIFT.
 * A far-future cell would otherwise win every later write forever.
 */
export function checkDrift(buf: Buffer, now: number, maxDriftMs: number, field = 'hlc'): void {
  const ahead = hlcWallTime(buf) - now;
  if (ahead > maxDriftMs) {
    throw new SyncError(ErrorCode.ClockDrift, `${field}: clock ${ahead} ms ahead of the coordinator (max ${maxDriftMs} ms)`);
  }
}

/** Options of an HlcClock. */
export interface HlcClockOptions {
  /** Source of wall time in ms. @default Date.now */
  now?: () => number;
  /** @default 60000 */
  maxDriftMs?: number;
  /** Resume after this timestamp (e.g. the last one persisted). */
  after?: Buffer;
}

/**
 * A hybrid logical clock for one replica. `tick()` gives strictly increasing
 * timestamps that follow the wall clock; `receive()` merges a remote
 * timestamp, refusing one that runs too far ahead.
 */
export class HlcClock {
  readonly siteId: Buffer;
  private readonly now: () => number;
  private readonly maxDriftMs: number;
  private wallTime = 0;
  private counter = 0;

  constructor(siteId: Uint8Array, options: HlcClockOptions = {}) {
    if (siteId.length !== SITE_ID_BYTES) throw new TypeError('HlcClock needs a 16-byte site id');
    this.siteId = Buffer.from(siteId);
    this.now = options.now ?? Date.now;
    this.maxDriftMs = options.maxDriftMs ?? DEFAULT_MAX_DRIFT_MS;
    if (options.after) {
      this.wallTime = hlcWallTime(options.after);
      this.counter = options.after.readUInt16BE(8);
    }
  }

  /** The last timestamp issued or observed (opSeq 0). */
  get last(): Buffer {
    return encodeHlc({ wallTime: this.wallTime, counter: this.counter, siteId: this.siteId, opSeq: 0 });
  }

  /** A new timestamp greater than every earlier one from this clock. */
  tick(): Buffer {
    const now = this.now();
    if (now > this.wallTime) {
      this.wallTime = now;
      this.counter = 0;
    } else if (this.counter < MAX_COUNTER) {
      this.counter++;
    } else {
      // Counter exhausted within one millisecond: borrow the next one.
      this.wallTime++;
      this.counter = 0;
    }
    return encodeHlc({ wallTime: this.wallTime, counter: this.counter, siteId: this.siteId, opSeq: 0 });
  }

  /** Advances past a remote timestamp; CLOCK_DRIFT if it is too far ahead. */
  receive(remote: Buffer, field = 'hlc'): Buffer {
    const now = this.now();
    checkDrift(remote, now, this.maxDriftMs, field);
    const remoteWall = hlcWallTime(remote);
    const remoteCounter = remote.readUInt16BE(8);
    const wall = Math.max(now, this.wallTime, remoteWall);
    let counter: number;
    if (wall === this.wallTime && wall === remoteWall) counter = Math.max(this.counter, remoteCounter) + 1;
    else if (wall === this.wallTime) counter = this.counter + 1;
    else if (wall === remoteWall) counter = remoteCounter + 1;
    else counter = 0;
    if (counter > MAX_COUNTER) {
      this.wallTime = wall + 1;
      this.counter = 0;
    } else {
      this.wallTime = wall;
      this.counter = counter;
    }
    return this.last;
  }
}
