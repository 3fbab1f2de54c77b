import { createHash } from 'node:crypto';
import { Readable, pipeline } from 'node:stream';
import { createGunzip, createGzip } from 'node:zlib';

/**
 * The archive's snapshot of one database: every key and value of its store,
 * read from one consistent view, gzipped. Layout before gzip:
 *
 *   "SYNCKV01"  u32 n  header JSON (n bytes)
 *   per entry:  u32 keyLength  key  u32 valueLength  value
 *   trailer:    u32 0xffffffff  u64 entries  sha256 of every byte before the trailer
 *
 * Restoring one writes the entries back verbatim, so the restored replica
 * keeps its server site id, its stamps and its change log. The trailer
 * makes a truncated or altered object fail as a whole instead of restoring
 * part of a database.
 */
export const SNAPSHOT_MAGIC = Buffer.from('SYNCKV01', 'latin1');
const END = 0xffffffff;
/** Bytes gathered before they are handed to gzip: fewer, larger writes. */
const CHUNK_BYTES = 256 * 1024;

/** What a snapshot says about itself. */
export interface SnapshotInfo {
  format: 1;
  databaseId: string;
  /** Server site id (base64url). */
  siteId: string;
  /** The store's last stamp (hex), or null for a database that never took a write. */
  stamp: string | null;
  createdAt: number;
}

/** A snapshot that is truncated, altered or of an unknown format. */
export class SnapshotCorruptError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotCorruptError';
  }
}

/** The gzipped snapshot stream of `entries`, produced as it is read (backpressure from the consumer). */
export function encodeSnapshot(info: SnapshotInfo, entries: AsyncIterable<[Buffer, Buffer]>): Readable {
  async function* bytes(): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let count = 0;
    let parts: Buffer[] = [];
    let size = 0;
    const push = (buf: Buffer): void => {
      parts.push(buf);
      size += buf.length;
    };
    const flush = (): Buffer => {
      const out = Buffer.concat(parts, size);
      hash.update(out);
      parts = [];
      size = 0;
      return out;
    };
    const header = Buffer.from(JSON.stringify(info), 'utf8');
    push(SNAPSHOT_MAGIC);
    push(u32(header.length));
    push(header);
    for await (const [key, value] of entries) {
      // Copies: the iterator may reuse its buffers.
      push(u32(key.length));
      push(Buffer.from(key));
      push(u32(value.length));
      push(Buffer.from(value));
      count++;
      if (size >= CHUNK_BYTES) yield flush();
    }
    yield flush();
    const trailer = Buffer.alloc(12);
    trailer.writeUInt32BE(END, 0);
    trailer.writeBigUInt64BE(BigInt(count), 4);
    yield Buffer.concat([trailer, hash.digest()]);
  }
  const gzip = createGzip();
  pipeline(Readable.from(bytes()), gzip, () => undefined);
  return gzip;
}

/**
 * Reads a gzipped snapshot: calls `onInfo` with its header, then yields its
 * entries. Throws SnapshotCorruptError (or zlib's error) when the stream is
 * truncated, altered or not a snapshot, after which nothing it yielded may
 * be kept.
 */
export async function* decodeSnapshot(compressed: Readable, onInfo: (info: SnapshotInfo) => void): AsyncGenerator<[Buffer, Buffer], void, undefined> {
  const gunzip = createGunzip();
  pipeline(compressed, gunzip, () => undefined);
  const hash = createHash('sha256');
  const reader = new ByteReader(gunzip[Symbol.asyncIterator]() as AsyncIterator<Buffer>, hash);
  const magic = await reader.take(SNAPSHOT_MAGIC.length);
  if (!magic?.equals(SNAPSHOT_MAGIC)) throw new SnapshotCorruptError('not a snapshot of this format (bad magic)');
  const headerLength = await reader.u32();
  const headerBytes = headerLength === undefined || headerLength > 1 << 20 ? undefined : await reader.take(headerLength);
  let info: SnapshotInfo;
  try {
    info = JSON.parse(headerBytes!.toString('utf8')) as SnapshotInfo;
  } catch {
    throw new SnapshotCorruptError('unreadable snapshot header');
  }
  if (info?.format !== 1 || typeof info.siteId !== 'string') throw new SnapshotCorruptError(`unknown snapshot format ${JSON.stringify(info?.format)}`);
  onInfo(info);
  let count = 0n;
  for (;;) {
    const keyLength = await reader.u32();
    if (keyLength === undefined) throw new SnapshotCorruptError('snapshot truncated (no trailer)');
    if (keyLength === END) break;
    const key = await reader.take(keyLength);
    const valueLength = await reader.u32();
    const value = valueLength === undefined ? undefined : await reader.take(valueLength);
    if (!key || !value) throw new SnapshotCorruptError('snapshot truncated inside an entry');
    count++;
    yield [key, value];
  }
  const digest = hash.copy().digest();
  const trailer = await reader.takeUnhashed(8 + 32);
  if (!trailer) throw new SnapshotCorruptError('snapshot truncated in its trailer');
  if (trailer.readBigUInt64BE(0) !== count) throw new SnapshotCorruptError(`snapshot holds ${count} entries, its trailer says ${trailer.readBigUInt64BE(0)}`);
  if (!trailer.subarray(8).equals(digest)) throw new SnapshotCorruptError('snapshot checksum mismatch');
  if ((await reader.takeUnhashed(1)) !== undefined) throw new SnapshotCorruptError('bytes after the snapshot trailer');
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** Exact-length reads over a stream of chunks, hashing what it hands out. */
class ByteReader {
  private pending: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(private readonly chunks: AsyncIterator<Buffer>, private readonly hash: ReturnType<typeof createHash>) {}

  private async fill(n: number): Promise<boolean> {
    while (this.pending.length < n && !this.done) {
      const next = await this.chunks.next();
      if (next.done) this.done = true;
      else this.pending = this.pending.length === 0 ? next.value : Buffer.concat([this.pending, next.value]);
    }
    return this.pending.length >= n;
  }

  async takeUnhashed(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(n))) return undefined;
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    return out;
  }

  async take(n: number): Promise<Buffer | undefined> {
    const out = await this.takeUnhashed(n);
    if (out) this.hash.update(out);
    return out;
  }

  /** A u32, hashed unless it is the trailer's end mark (the hash covers everything before the trailer). */
  async u32(): Promise<number | undefined> {
    if (!(await this.fill(4))) return undefined;
    const n = this.pending.readUInt32BE(0);
    const out = this.pending.subarray(0, 4);
    this.pending = this.pending.subarray(4);
    if (n !== END) this.hash.update(out);
    return n;
  }
}
