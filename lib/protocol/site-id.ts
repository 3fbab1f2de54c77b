import { randomBytes } from 'node:crypto';
import { SyncError, ErrorCode, describeValue } from '../errors.js';
import { SITE_ID_BYTES } from './hlc.js';

const SITE_ID_WIRE = /^[A-Za-z0-9_-]{22}$/;

/** A fresh random site id (16 bytes, UUID v4 layout). */
export function randomSiteId(): Buffer {
  const bytes = randomBytes(SITE_ID_BYTES);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return bytes;
}

/** base64url without padding, 22 characters. */
export function siteIdToWire(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64url');
}

/**
 * Parses a wire site id: exactly 22 base64url characters in canonical form
 * (so that one site has one spelling and own-change filtering cannot be
 * dodged). Throws INVALID_SITE_ID naming `field`.
 */
export function siteIdFromWire(value: unknown, field = 'siteId'): Buffer {
  if (typeof value !== 'string') {
    throw new SyncError(ErrorCode.InvalidSiteId, `${field}: expected a 22-character base64url string, got ${describeValue(value)}`);
  }
  if (!SITE_ID_WIRE.test(value)) {
    throw new SyncError(ErrorCode.InvalidSiteId, `${field}: expected 22 base64url characters, got ${describeValue(value)} (${value.length} characters)`);
  }
  const bytes = Buffer.from(value, 'base64url');
  if (bytes.toString('base64url') !== value) {
    throw new SyncError(ErrorCode.InvalidSiteId, `${field}: not the canonical base64url of 16 bytes: ${describeValue(value)}`);
  }
  return bytes;
}

/** True when `value` is a valid wire site id. */
export function isSiteId(value: unknown): value is string {
  if (typeof value !== 'string' || !SITE_ID_WIRE.test(value)) return false;
  return Buffer.from(value, 'base64url').toString('base64url') === value;
}
