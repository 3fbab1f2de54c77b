/**
 * Archive in a local directory, e.g. a mounted volume.
 *
 * Layout: key `a/b/c` is the file `a%/b%/c` under the directory. Each segment
 * is stored as its own name with everything but `[a-z0-9._~+,=@-]` written
 * as `%` and two lower-case hex digits per UTF-8 byte, so names are ASCII and
 * distinct even on a case-folding or Unicode-normalizing filesystem (`A` is
 * `%41`). A directory's name ends in `%`, which no escaped segment does, so
 * `a` and `a/b` can both exist, as on S3. A segment may be at most 254 bytes
 * once escaped (a file name's limit is 255); a longer one is refused with a
 * TypeError. Names that are not exactly what this encoding produces (strays,
 * `lost+found`) are ignored.
 *
 * Two names at the top are reserved, and never produced by the encoding:
 * - `%%archive` marks the directory as an archive. Opening creates it; from
 *   then on a missing marker means the volume is gone or not mounted, and
 *   every call rejects with STORAGE_UNAVAILABLE rather than writing into an
 *   empty mount point.
 * - `%%tmp/` holds files being written. A put writes a temp file, fsyncs it,
 *   renames it into place (atomic) and fsyncs the directories it changed;
 *   opening removes temp files left by a crash.
 */
import { randomUUID } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { mkdir, open, readdir, rename, rm, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { describeValue, ErrorCode, isSyncError, messageOf, SyncError } from '../errors.js';
import { logs } from '../log.js';
import { archiveKeyProblem, checkArchiveKey, type Archive, type ArchiveObject, type ArchivePutOptions } from './archive.js';
import { ArchiveLifecycle } from './lifecycle.js';

const log = logs.storage.extend('archive');

const MARKER = '%%archive';
const MARKER_TEXT = 'sync-coordinator archive, layout 1\n';
const TMP = '%%tmp';
const DIR_SUFFIX = '%';
/** A file name's limit on common filesystems is 255 bytes; one is left for DIR_SUFFIX. */
const MAX_NAME_BYTES = 254;
const PLAIN = /^[a-z0-9._~+,=@-]$/;
const ENCODED = /^(?:[a-z0-9._~+,=@-]|%[0-9a-f]{2})+$/;
/** Bytes gathered from a stream before one write call. */
const WRITE_BYTES = 256 * 1024;

/** Errors a retry may cure: the volume failing, full, or gone (NFS, a detached disk). */
const TRANSIENT_CODES = new Set(['EIO', 'ENOSPC', 'EDQUOT', 'ESTALE', 'EAGAIN', 'EBUSY', 'ETIMEDOUT', 'EMFILE', 'ENFILE', 'ENOTCONN', 'EHOSTDOWN', 'ENODEV', 'ENXIO']);

/** Options of {@link openFsArchive}. */
export interface FsArchiveOptions {
  /** fsync each file and the directories a put or delete changed before it resolves (survives power loss, not only a crash). @default true */
  sync?: boolean;
  /** Temp files older than this, in milliseconds, are removed when the archive opens (younger ones may belong to another process's put in progress). @default 1 hour */
  staleTempMs?: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function encodeSegment(segment: string): string | undefined {
  let out = '';
  for (const byte of Buffer.from(segment, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += byte < 0x80 && PLAIN.test(ch) ? ch : `%${byte.toString(16).padStart(2, '0')}`;
  }
  return Buffer.byteLength(out) <= MAX_NAME_BYTES ? out : undefined;
}

/** The segment a directory entry's name stands for, or undefined when the name is not exactly what the encoding produces. */
function decodeName(name: string): { segment: string; dir: boolean } | undefined {
  const dir = name.endsWith(DIR_SUFFIX);
  const body = dir ? name.slice(0, -1) : name;
  if (!ENCODED.test(body)) return undefined;
  let segment: string;
  try {
    segment = utf8.decode(Buffer.from(body.replace(/%([0-9a-f]{2})|(.)/gs, (_, hex: string | undefined, ch: string | undefined) => (hex !== undefined ? String.fromCharCode(parseInt(hex, 16)) : ch!)), 'latin1'));
  } catch {
    return undefined;
  }
  if (segment.includes('/') || archiveKeyProblem(segment) !== undefined || encodeSegment(segment) !== body) return undefined;
  return { segment, dir };
}

function errnoOf(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

function isMissing(err: unknown): boolean {
  const code = errnoOf(err);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

async function fsyncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Opens (creating if needed) the archive in directory `dir`: creates the
 * directory and its marker, and removes stale temp files.
 *
 * @throws TypeError for a `dir` that is not a non-empty string or bad options;
 *   SyncError INTERNAL_ERROR naming the directory when it cannot be created
 *   or written (a file in the way, no permission).
 */
export async function openFsArchive(dir: string, options: FsArchiveOptions = {}): Promise<FsArchive> {
  if (typeof dir !== 'string' || dir === '') throw new TypeError(`archive directory: expected a non-empty path, got ${describeValue(dir)}`);
  const sync = options.sync ?? true;
  if (typeof sync !== 'boolean') throw new TypeError(`fs archive option sync: expected a boolean, got ${describeValue(sync)}`);
  const staleTempMs = options.staleTempMs ?? 60 * 60 * 1000;
  if (typeof staleTempMs !== 'number' || !(staleTempMs >= 0)) throw new TypeError(`fs archive option staleTempMs: expected a number >= 0, got ${describeValue(staleTempMs)}`);
  const root = resolve(dir);
  try {
    await mkdir(root, { recursive: true });
    const marker = await open(join(root, MARKER), 'wx').catch((err: unknown) => {
      if (errnoOf(err) === 'EEXIST') return undefined;
      throw err;
    });
    if (marker !== undefined) {
      try {
        await marker.writeFile(MARKER_TEXT);
        if (sync) await marker.sync();
      } finally {
        await marker.close();
      }
      if (sync) await fsyncDirectory(root);
    }
    const tmp = join(root, TMP);
    await mkdir(tmp, { recursive: true });
    const before = Date.now() - staleTempMs;
    for (const name of await readdir(tmp)) {
      const path = join(tmp, name);
      const info = await stat(path).catch(() => undefined);
      if (info !== undefined && info.mtimeMs < before) {
        await rm(path, { force: true, recursive: true });
        log('removed stale temp file %s', path);
      }
    }
  } catch (err) {
    throw new SyncError(ErrorCode.Internal, `cannot open archive directory ${JSON.stringify(root)}: ${messageOf(err)}`, { cause: err });
  }
  return new FsArchive(root, sync);
}

/** An Archive in a local directory; open one with {@link openFsArchive}. */
export class FsArchive implements Archive {
  readonly location: string;
  readonly #root: string;
  readonly #sync: boolean;
  readonly #life: ArchiveLifecycle;

  /** @internal use {@link openFsArchive}, which prepares the directory. */
  constructor(root: string, sync: boolean) {
    this.#root = root;
    this.#sync = sync;
    this.location = pathToFileURL(root).href;
    this.#life = new ArchiveLifecycle(this.location);
  }

  put(key: string, body: Buffer | Readable, options: ArchivePutOptions = {}): Promise<void> {
    const done = this.#life.run(async () => {
      const target = this.#path(key);
      if (options.contentType !== undefined && typeof options.contentType !== 'string') {
        throw new TypeError(`archive put contentType: expected a string, got ${describeValue(options.contentType)}`);
      }
      if (!Buffer.isBuffer(body) && (!(body instanceof Readable) || body.readableObjectMode)) {
        throw new TypeError(`archive put body: expected a Buffer or a byte Readable, got ${describeValue(body)}`);
      }
      await this.#checkMounted('put', key);
      const tmp = join(this.#root, TMP, randomUUID());
      let handle: FileHandle | undefined;
      try {
        handle = await this.#createTemp(tmp);
        if (Buffer.isBuffer(body)) await handle.writeFile(body);
        else await this.#writeStream(handle, body, key);
        if (this.#sync) await handle.sync();
        await handle.close();
        handle = undefined;
        await this.#place(tmp, target);
      } catch (err) {
        await handle?.close().catch(() => undefined);
        await rm(tmp, { force: true }).catch(() => undefined);
        throw err instanceof BodyError ? err.cause : await this.#error('put', key, err);
      }
    });
    // Whatever failed, a producer must not be left waiting on a body nobody reads.
    if (body instanceof Readable) done.catch(() => body.destroy());
    return done;
  }

  async #createTemp(tmp: string): Promise<FileHandle> {
    try {
      return await open(tmp, 'wx');
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
      // Someone removed %%tmp; the marker was there a moment ago, so the root is.
      await mkdir(dirname(tmp));
      return open(tmp, 'wx');
    }
  }

  /** Copies `body` into `handle`, gathering small chunks; the body's own failure comes out as a BodyError. */
  async #writeStream(handle: FileHandle, body: Readable, key: string): Promise<void> {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      const data = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      for (let offset = 0; offset < data.length;) offset += (await handle.write(data, offset, data.length - offset)).bytesWritten;
    };
    let writeError: unknown;
    try {
      for await (const chunk of body as AsyncIterable<Buffer | string>) {
        const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        pending.push(buffer);
        pendingBytes += buffer.length;
        if (pendingBytes >= WRITE_BYTES) await flush().catch((err: unknown) => { writeError = err; throw err; });
      }
    } catch (err) {
      if (writeError !== undefined) throw writeError;
      throw new BodyError(err, key);
    }
    if (pendingBytes > 0) await flush();
  }

  /** Renames the temp file to `target`, creating its directories, and makes both durable. */
  async #place(tmp: string, target: string): Promise<void> {
    const dirs: string[] = [];
    for (let dir = dirname(target); dir !== this.#root; dir = dirname(dir)) dirs.unshift(dir);
    const created: string[] = [];
    // A delete removing an emptied directory can race with this put: then the rename finds no directory, and we make it again.
    for (let attempt = 1; ; attempt++) {
      for (const dir of dirs) {
        try {
          await mkdir(dir);
          created.push(dir);
        } catch (err) {
          if (errnoOf(err) !== 'EEXIST') throw err;
        }
      }
      try {
        await rename(tmp, target);
        break;
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT' || attempt >= 5) throw err;
      }
    }
    if (!this.#sync) return;
    const changed = new Set([dirname(target), ...created.map((dir) => dirname(dir))]);
    for (const dir of changed) await fsyncDirectory(dir);
  }

  get(key: string): Promise<Readable | undefined> {
    return this.#life.run(async () => {
      const path = this.#path(key);
      let handle: FileHandle;
      try {
        handle = await open(path, 'r');
      } catch (err) {
        if (!isMissing(err)) throw await this.#error('get', key, err);
        await this.#checkMounted('get', key);
        return undefined;
      }
      return this.#life.adopt(handle.createReadStream(), (err) => this.#errorOf('get', key, err));
    });
  }

  list(prefix: string): AsyncIterable<ArchiveObject> {
    return this.#list(prefix);
  }

  async *#list(prefix: string): AsyncGenerator<ArchiveObject> {
    if (typeof prefix !== 'string') throw new TypeError(`archive list prefix: expected a string, got ${describeValue(prefix)}`);
    await this.#life.run(() => this.#checkMounted('list', prefix, 'prefix'));
    // Everything up to the last '/' names a directory; the rest filters its entries.
    const slash = prefix.lastIndexOf('/');
    const base = prefix.slice(0, slash + 1);
    let dir = this.#root;
    if (base !== '') {
      for (const segment of base.slice(0, -1).split('/')) {
        const name = segment.includes('/') || archiveKeyProblem(segment) !== undefined ? undefined : encodeSegment(segment);
        // No valid key can start with this prefix.
        if (name === undefined) return;
        dir = join(dir, name + DIR_SUFFIX);
      }
    }
    yield* this.#walk(dir, base, prefix.slice(slash + 1), prefix);
  }

  /**
   * Yields the objects below `dir` (whose keys start with `base`) whose next
   * segment starts with `start`, in key byte order: a file sorts by its
   * segment, a directory by its segment plus '/', which is where all of its
   * keys sort among its siblings.
   */
  async *#walk(dir: string, base: string, start: string, prefix: string): AsyncGenerator<ArchiveObject> {
    const entries = await this.#life.run(() => this.#readDir(dir, prefix));
    const found: { name: string; segment: string; dir: boolean; order: Buffer }[] = [];
    for (const entry of entries) {
      const decoded = decodeName(entry.name);
      if (decoded === undefined || !decoded.segment.startsWith(start)) continue;
      if (decoded.dir ? !entry.isDirectory() : !entry.isFile()) continue;
      found.push({ name: entry.name, ...decoded, order: Buffer.from(decoded.dir ? `${decoded.segment}/` : decoded.segment, 'utf8') });
    }
    found.sort((a, b) => Buffer.compare(a.order, b.order));
    for (const item of found) {
      const path = join(dir, item.name);
      if (item.dir) {
        yield* this.#walk(path, `${base}${item.segment}/`, '', prefix);
        continue;
      }
      const size = await this.#life.run(async () => {
        try {
          return (await stat(path)).size;
        } catch (err) {
          if (isMissing(err)) return undefined;
          throw await this.#error('list', prefix, err, 'prefix');
        }
      });
      // Deleted since the directory was read.
      if (size !== undefined) yield { key: base + item.segment, size };
    }
  }

  async #readDir(dir: string, prefix: string): Promise<Dirent[]> {
    try {
      return await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (!isMissing(err)) throw await this.#error('list', prefix, err, 'prefix');
      await this.#checkMounted('list', prefix, 'prefix');
      return [];
    }
  }

  delete(keys: readonly string[]): Promise<void> {
    return this.#life.run(async () => {
      if (!Array.isArray(keys)) throw new TypeError(`archive delete keys: expected an array of keys, got ${describeValue(keys)}`);
      const paths = new Map<string, string>();
      keys.forEach((key, i) => paths.set(this.#path(key, `keys[${i}]`), key));
      if (paths.size === 0) return;
      await this.#checkMounted('delete', keys[0]!);
      const touched = new Set<string>();
      for (const [path, key] of paths) {
        try {
          await unlink(path);
          touched.add(dirname(path));
        } catch (err) {
          if (!isMissing(err)) throw await this.#error('delete', key, err);
        }
      }
      // Remove directories the deletes emptied, deepest first, so that a
      // database's archive leaves nothing behind once deleted.
      const pruned = new Set<string>();
      for (const start of [...touched].sort((a, b) => b.length - a.length)) {
        for (let dir = start; dir !== this.#root && !pruned.has(dir); dir = dirname(dir)) {
          try {
            await rmdir(dir);
            pruned.add(dir);
            touched.add(dirname(dir));
          } catch {
            break; // Not empty (or already gone): its parents are not empty either.
          }
        }
      }
      if (!this.#sync) return;
      for (const dir of touched) if (!pruned.has(dir)) await fsyncDirectory(dir).catch(() => undefined);
    });
  }

  close(): Promise<void> {
    return this.#life.close(async () => undefined);
  }

  /** The file of `key`; throws a TypeError when the key is invalid or a segment too long for a file name. */
  #path(key: string, field = 'key'): string {
    checkArchiveKey(key, field);
    const segments = key.split('/');
    const names: string[] = [];
    for (let i = 0; i < segments.length; i++) {
      const name = encodeSegment(segments[i]!);
      if (name === undefined) {
        throw new TypeError(`archive ${field}: segment ${describeValue(segments[i])} of ${describeValue(key)} is longer than ${MAX_NAME_BYTES} bytes once escaped for a file name`);
      }
      names.push(i < segments.length - 1 ? name + DIR_SUFFIX : name);
    }
    return join(this.#root, ...names);
  }

  /** Rejects with STORAGE_UNAVAILABLE when the marker is gone: the volume is unmounted or the directory removed. */
  async #checkMounted(op: string, key: string, what = 'key'): Promise<void> {
    try {
      await stat(join(this.#root, MARKER));
    } catch (err) {
      if (isMissing(err)) {
        throw new SyncError(ErrorCode.StorageUnavailable, `archive ${this.location} unavailable: ${op} of ${what} ${JSON.stringify(key)}: the directory has no ${MARKER} marker (volume not mounted or directory removed)`, { cause: err });
      }
      throw this.#errorOf(op, key, err, what);
    }
  }

  /** Like #errorOf, but a missing file or directory is STORAGE_UNAVAILABLE when the whole archive is gone. */
  async #error(op: string, key: string, err: unknown, what = 'key'): Promise<Error> {
    if (isMissing(err)) {
      try {
        await this.#checkMounted(op, key, what);
      } catch (unmounted) {
        return unmounted as Error;
      }
    }
    return this.#errorOf(op, key, err, what);
  }

  #errorOf(op: string, key: string, err: unknown, what = 'key'): Error {
    if (isSyncError(err) || err instanceof TypeError) return err;
    const where = `${op} of ${what} ${JSON.stringify(key)} in ${JSON.stringify(this.#root)}`;
    const code = errnoOf(err);
    if (code !== undefined && TRANSIENT_CODES.has(code)) {
      return new SyncError(ErrorCode.StorageUnavailable, `archive ${this.location} unavailable: ${where}: ${messageOf(err)}`, { cause: err });
    }
    return new SyncError(ErrorCode.Internal, `archive ${where} failed: ${messageOf(err)}`, { cause: err });
  }
}

/** The put body's own failure, passed through to the caller unchanged. */
class BodyError extends Error {
  override readonly cause: unknown;
  constructor(cause: unknown, key: string) {
    super(`archive put body of ${JSON.stringify(key)} failed`);
    this.cause = cause;
  }
}
