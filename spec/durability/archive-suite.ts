import { expect } from 'chai';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import v8 from 'node:v8';
import vm from 'node:vm';
import { compareArchiveKeys, readArchiveObject, type Archive, type ArchiveObject } from '../../lib/durability/archive.js';
import { ErrorCode, isSyncError } from '../../lib/errors.js';

/**
 * One archive's storage for one test: every `open()` is a new instance over
 * the same objects. `outage()` makes the storage unreachable (the S3 server
 * stopped, the volume gone) until `recover()`.
 */
export interface ArchiveFixture {
  open(): Promise<Archive>;
  /** Longest key this fixture's archives accept (S3 counts its key prefix against 1,024 bytes). */
  readonly maxKeyBytes: number;
  outage(): Promise<void>;
  recover(): Promise<void>;
  /** Closes what open() returned and removes what the fixture made. */
  dispose(): Promise<void>;
}

const b = (text: string): Buffer => Buffer.from(text);

// The memory test needs a settled heap before and after; mocha runs without --expose-gc.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function getBytes(archive: Archive, key: string): Promise<Buffer | undefined> {
  const stream = await archive.get(key);
  return stream === undefined ? undefined : readAll(stream);
}

async function listAll(archive: Archive, prefix = ''): Promise<ArchiveObject[]> {
  const out: ArchiveObject[] = [];
  for await (const object of archive.list(prefix)) out.push(object);
  return out;
}

async function keysOf(archive: Archive, prefix = ''): Promise<string[]> {
  return (await listAll(archive, prefix)).map((o) => o.key);
}

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (err: unknown) => err);
}

async function listError(archive: Archive, prefix = ''): Promise<unknown> {
  return errorOf(listAll(archive, prefix));
}

function expectCode(err: unknown, code: ErrorCode): void {
  expect(isSyncError(err), `expected a SyncError ${code}, got ${String(err)}`).to.equal(true);
  expect((err as { code: string }).code, String(err)).to.equal(code);
}

function byteOrder(keys: string[]): string[] {
  return [...keys].sort(compareArchiveKeys);
}

/** A byte stream of `size` random bytes in `chunk`-byte pieces, made as it is read; `digest()` is the SHA-256 of what it produced. */
function randomBody(size: number, chunk = 64 * 1024, onChunk?: () => void): Readable & { digest(): string } {
  const hash = createHash('sha256');
  let left = size;
  const stream = new Readable({
    read() {
      if (left === 0) {
        this.push(null);
        return;
      }
      const piece = randomBytes(Math.min(chunk, left));
      left -= piece.length;
      hash.update(piece);
      onChunk?.();
      this.push(piece);
    },
  });
  return Object.assign(stream, { digest: () => hash.digest('hex') });
}

async function digestOf(stream: Readable): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), size };
}

/** Runs `fn` over `items` with at most `limit` at once. */
async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

/** Keys chosen so that byte order differs from a directory walk and from JavaScript's UTF-16 order. */
const ORDER_KEYS = [
  'a', 'a/b', 'a/b/c', 'a-c', 'a.B', 'a0', 'a/a', 'aa', 'B', 'b', 'z\uFFFD', 'z\u{1F600}', 'z\u00E9', 'z~',
];

/** Characters that trip URL encoding, XML, shells or file names. */
const UNUSUAL_KEYS = [
  'space in key', 'plus+sign', 'percent%25%', 'hash#frag', 'question?x=1&y=2', 'colon:semi;comma,',
  'quotes\'"`', 'angle<brackets>', 'pipe|star*', 'back\\slash', 'brackets[]{}()', 'tilde~caret^bang!at@dollar$',
  'equals=', 'dots...', '.hidden', '-dash', '_under', 'UPPER/lower', 'caf\u00E9/na\u00EFve', '\u65E5\u672C\u8A9E/\u{1F600}',
  'trailing space ', ' leading space', '%2F/%2e%2e', 'a%/b', '%%archive', '%%tmp/x', 'lost+found',
];

/**
 * The behaviour every Archive must have (lib/durability/archive.ts). `makeFixture`
 * gives each test its own empty storage.
 */
export function archiveSuite(name: string, makeFixture: () => Promise<ArchiveFixture>): void {
  describe(name, function () {
    let fixture: ArchiveFixture;
    let archive: Archive;

    beforeEach(async () => {
      fixture = await makeFixture();
      archive = await fixture.open();
    });

    afterEach(async () => {
      await archive.close();
      await fixture.dispose();
    });

    describe('#put and #get', () => {
      it('gets undefined for a key never stored', async () => {
        expect(await archive.get('nothing/here')).to.equal(undefined);
      });

      it('stores a Buffer and gets it back as a stream', async () => {
        await archive.put('db/one', b('hello'), { contentType: 'text/plain' });
        const stream = await archive.get('db/one');
        expect(stream).to.be.instanceOf(Readable);
        expect(await readAll(stream!)).to.deep.equal(b('hello'));
      });

      it('replaces an existing object, size included', async () => {
        await archive.put('k', b('first version'));
        await archive.put('k', b('2nd'));
        expect(await getBytes(archive, 'k')).to.deep.equal(b('2nd'));
        expect(await listAll(archive)).to.deep.equal([{ key: 'k', size: 3 }]);
      });

      it('stores empty objects, from a Buffer and from a stream', async () => {
        await archive.put('empty/buffer', Buffer.alloc(0));
        await archive.put('empty/stream', Readable.from([], { objectMode: false }));
        expect(await getBytes(archive, 'empty/buffer')).to.deep.equal(Buffer.alloc(0));
        expect(await getBytes(archive, 'empty/stream')).to.deep.equal(Buffer.alloc(0));
        expect(await listAll(archive)).to.deep.equal([{ key: 'empty/buffer', size: 0 }, { key: 'empty/stream', size: 0 }]);
      });

      it('is binary safe: every byte value, and a random megabyte', async () => {
        const all = Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 7) % 256));
        const random = randomBytes(1024 * 1024 + 3);
        await archive.put('bin/all', all);
        await archive.put('bin/random', random);
        expect((await getBytes(archive, 'bin/all'))!.equals(all)).to.equal(true);
        expect((await getBytes(archive, 'bin/random'))!.equals(random)).to.equal(true);
      });

      it('streams a Readable of unknown length, small chunks and strings included', async () => {
        const pieces: (string | Buffer)[] = [];
        for (let i = 0; i < 5000; i++) pieces.push(i % 2 === 0 ? `line ${i}\n` : Buffer.from([i % 256, 0, 255]));
        await archive.put('stream/lines', Readable.from(pieces, { objectMode: false }));
        const expected = Buffer.concat(pieces.map((p) => (typeof p === 'string' ? b(p) : p)));
        expect((await getBytes(archive, 'stream/lines'))!.equals(expected)).to.equal(true);
      });

      it('keeps an object and the objects below its key apart ("a" and "a/b")', async () => {
        await archive.put('a/b', b('child'));
        await archive.put('a', b('parent'));
        await archive.put('a/b/c', b('grandchild'));
        expect(await getBytes(archive, 'a')).to.deep.equal(b('parent'));
        expect(await getBytes(archive, 'a/b')).to.deep.equal(b('child'));
        expect(await getBytes(archive, 'a/b/c')).to.deep.equal(b('grandchild'));
        await archive.delete(['a/b']);
        expect(await keysOf(archive)).to.deep.equal(['a', 'a/b/c']);
      });

      it('is seen by another instance over the same storage', async () => {
        await archive.put('shared/k', b('v'));
        const other = await fixture.open();
        try {
          expect(await getBytes(other, 'shared/k')).to.deep.equal(b('v'));
          await other.put('shared/k2', b('w'));
        } finally {
          await other.close();
        }
        expect(await getBytes(archive, 'shared/k2')).to.deep.equal(b('w'));
      });

      it('rejects with the body\'s own error when the body fails, keeping the previous object and storing nothing new', async () => {
        await archive.put('k', b('previous'));
        const boom = new Error('producer failed');
        let sent = 0;
        const failing = new Readable({
          read() {
            // Past one multipart part (5 MiB) for S3, so an upload has begun.
            if (sent >= 6 * 1024 * 1024) {
              this.destroy(boom);
              return;
            }
            sent += 256 * 1024;
            this.push(randomBytes(256 * 1024));
          },
        });
        expect(await errorOf(archive.put('k', failing))).to.equal(boom);
        expect(await errorOf(archive.put('new', new Readable({ read() { this.destroy(boom); } })))).to.equal(boom);
        expect(await getBytes(archive, 'k')).to.deep.equal(b('previous'));
        expect(await keysOf(archive)).to.deep.equal(['k']);
      });

      it('refuses an object-mode stream or another body with a TypeError, destroying the stream', async () => {
        const objects = Readable.from([{ a: 1 }]);
        const err = await errorOf(archive.put('k', objects));
        expect(err).to.be.instanceOf(TypeError);
        expect(objects.destroyed).to.equal(true);
        expect(await errorOf(archive.put('k', 'text' as unknown as Buffer))).to.be.instanceOf(TypeError);
        expect(await keysOf(archive)).to.deep.equal([]);
      });
    });

    describe('keys', () => {
      it('round-trips keys with unusual characters through put, list, get and delete', async () => {
        await inParallel(UNUSUAL_KEYS, 8, (key) => archive.put(key, b(`value of ${key}`)));
        const listed = await listAll(archive);
        expect(listed.map((o) => o.key)).to.deep.equal(byteOrder(UNUSUAL_KEYS));
        for (const { key, size } of listed) {
          expect(await getBytes(archive, key), key).to.deep.equal(b(`value of ${key}`));
          expect(size, key).to.equal(Buffer.byteLength(`value of ${key}`));
        }
        await archive.delete(UNUSUAL_KEYS);
        expect(await keysOf(archive)).to.deep.equal([]);
      });

      it('keeps keys apart that differ only in case or in Unicode normalization', async () => {
        const keys = ['Key', 'key', 'KEY', 'caf\u00E9', 'cafe\u0301'];
        for (const key of keys) await archive.put(key, b(key));
        expect(await keysOf(archive)).to.deep.equal(byteOrder(keys));
        for (const key of keys) expect(await getBytes(archive, key)).to.deep.equal(b(key));
      });

      it('accepts a key of the longest length and refuses one byte more', async () => {
        const max = fixture.maxKeyBytes;
        let key = '';
        while (key.length < max) key += `${key === '' ? '' : '/'}${'s'.repeat(80)}`;
        key = key.slice(0, max);
        if (key.endsWith('/')) key = `${key.slice(0, -1)}t`;
        expect(Buffer.byteLength(key)).to.equal(max);
        await archive.put(key, b('long'));
        expect(await getBytes(archive, key)).to.deep.equal(b('long'));
        expect(await keysOf(archive)).to.deep.equal([key]);
        expect(await errorOf(archive.put(`${key}x`, b('too long')))).to.be.instanceOf(TypeError);
      });

      it('refuses invalid keys with a TypeError naming the key, storing nothing', async () => {
        const invalid: unknown[] = ['', '/lead', 'trail/', 'dou//ble', '.', 'a/./b', '..', 'a/../b', 'nul\u0000', 'tab\tkey', 'del\u007f',
          'lone\uD800', 'x'.repeat(1025), 42, undefined, null];
        for (const key of invalid) {
          const err = await errorOf(archive.put(key as string, b('v')));
          expect(err, String(key)).to.be.instanceOf(TypeError);
          expect((err as Error).message, String(key)).to.match(/archive key/);
          expect(await errorOf(archive.get(key as string)), String(key)).to.be.instanceOf(TypeError);
          expect(await errorOf(archive.delete([key as string])), String(key)).to.be.instanceOf(TypeError);
        }
        expect(await errorOf(archive.delete('k' as unknown as string[]))).to.be.instanceOf(TypeError);
        expect(await keysOf(archive)).to.deep.equal([]);
      });
    });

    describe('#list', () => {
      it('lists in byte order of the keys\' UTF-8, with sizes', async () => {
        for (const [i, key] of ORDER_KEYS.entries()) await archive.put(key, Buffer.alloc(i + 1, 1));
        const listed = await listAll(archive);
        expect(listed.map((o) => o.key)).to.deep.equal(byteOrder(ORDER_KEYS));
        // Byte order is not JavaScript's default string order for these keys.
        expect(byteOrder(ORDER_KEYS)).to.not.deep.equal([...ORDER_KEYS].sort());
        for (const o of listed) expect(o.size, o.key).to.equal(ORDER_KEYS.indexOf(o.key) + 1);
      });

      it('filters by prefix: whole segments, part of a segment, one key, none', async () => {
        for (const key of ORDER_KEYS) await archive.put(key, b('v'));
        const startsWith = (p: string) => byteOrder(ORDER_KEYS.filter((k) => k.startsWith(p)));
        for (const prefix of ['', 'a', 'a/', 'a/b', 'a/b/', 'a-', 'z', 'z\u00E9', 'b', 'B', 'a/b/c', 'nothing', 'a/nothing/', 'a//', 'a/./']) {
          expect(await keysOf(archive, prefix), JSON.stringify(prefix)).to.deep.equal(startsWith(prefix));
        }
      });

      it('lists an empty archive as nothing', async () => {
        expect(await listAll(archive)).to.deep.equal([]);
        expect(await listAll(archive, 'db/')).to.deep.equal([]);
      });

      it('pages past 1,000 keys, in order and complete; stops early; deletes them in one call', async () => {
        const keys = Array.from({ length: 1100 }, (_, i) => `many/${String((i * 7919) % 1100).padStart(5, '0')}`);
        keys.push('many-after', 'man');
        await inParallel(keys, 32, (key) => archive.put(key, b(key)));
        const listed = await keysOf(archive, 'many/');
        expect(listed.length).to.equal(1100);
        expect(listed).to.deep.equal(byteOrder(keys.filter((k) => k.startsWith('many/'))));
        expect(await keysOf(archive)).to.deep.equal(byteOrder(keys));
        const firstTen: string[] = [];
        for await (const o of archive.list('many/')) {
          firstTen.push(o.key);
          if (firstTen.length === 10) break;
        }
        expect(firstTen).to.deep.equal(listed.slice(0, 10));
        await archive.delete(keys);
        expect(await keysOf(archive)).to.deep.equal([]);
      });

      it('refuses a prefix that is not a string', async () => {
        expect(await listError(archive, 7 as unknown as string)).to.be.instanceOf(TypeError);
      });
    });

    describe('#delete', () => {
      it('deletes the given keys, ignores absent and repeated ones, and accepts none', async () => {
        for (const key of ['d/1', 'd/2', 'd/3', 'e']) await archive.put(key, b(key));
        await archive.delete(['d/1', 'd/3', 'd/1', 'absent', 'd/9/9']);
        await archive.delete([]);
        expect(await keysOf(archive)).to.deep.equal(['d/2', 'e']);
        expect(await archive.get('d/1')).to.equal(undefined);
      });
    });

    describe('concurrency', () => {
      it('serves many puts, gets, lists and deletes at once', async () => {
        const keys = Array.from({ length: 60 }, (_, i) => `c/${i % 3}/${i}`);
        const bodies = new Map(keys.map((key, i) => [key, randomBytes(1000 + i * 997)]));
        await Promise.all(keys.map((key, i) => archive.put(key, i % 2 === 0 ? bodies.get(key)! : Readable.from([bodies.get(key)!], { objectMode: false }))));
        const [listed, ...read] = await Promise.all([keysOf(archive, 'c/'), ...keys.map((key) => getBytes(archive, key))]);
        expect(listed).to.deep.equal(byteOrder(keys));
        read.forEach((body, i) => expect(body!.equals(bodies.get(keys[i]!)!), keys[i]).to.equal(true));
        const gone = keys.filter((_, i) => i % 2 === 0);
        await Promise.all([
          ...gone.map((key) => archive.delete([key])),
          ...keys.filter((_, i) => i % 2 === 1).map((key) => archive.put(key, b('replaced'))),
        ]);
        const left = keys.filter((_, i) => i % 2 === 1);
        expect(await keysOf(archive)).to.deep.equal(byteOrder(left));
        for (const key of left) expect(await getBytes(archive, key)).to.deep.equal(b('replaced'));
      });
    });

    describe('large objects', () => {
      it('streams a 64 MiB body of unknown length in and out in bounded memory', async function () {
        this.timeout(60_000);
        const size = 64 * 1024 * 1024;
        // Live memory is measured after a full collection at every MiB
        // produced, so garbage awaiting collection does not count.
        gc();
        const before = process.memoryUsage();
        let peakLive = 0;
        let peakRss = 0;
        let chunks = 0;
        const sample = (): void => {
          if (chunks++ % 16 !== 0) return;
          gc();
          const now = process.memoryUsage();
          peakLive = Math.max(peakLive, now.heapUsed + now.external);
          peakRss = Math.max(peakRss, now.rss);
        };
        const body = randomBody(size, 64 * 1024, sample);
        await archive.put('big/object', body);
        const liveGrowth = peakLive - (before.heapUsed + before.external);
        const rssGrowth = peakRss - before.rss;
        expect(await listAll(archive, 'big/')).to.deep.equal([{ key: 'big/object', size }]);
        const stream = await archive.get('big/object');
        expect(await digestOf(stream!)).to.deep.equal({ sha256: body.digest(), size });
        // A put that gathered the whole body would hold 64 MiB by its end.
        expect(liveGrowth, `live heap + external growth ${(liveGrowth / 2 ** 20).toFixed(1)} MiB`).to.be.below(32 * 2 ** 20);
        expect(rssGrowth, `RSS growth ${(rssGrowth / 2 ** 20).toFixed(1)} MiB`).to.be.below(64 * 2 ** 20);
      });
    });

    describe('outage', () => {
      it('rejects every call with STORAGE_UNAVAILABLE while the storage is unreachable, and works again after', async () => {
        await archive.put('kept', b('before'));
        await fixture.outage();
        try {
          expectCode(await errorOf(archive.put('k', b('v'))), ErrorCode.StorageUnavailable);
          const body = randomBody(6 * 1024 * 1024);
          expectCode(await errorOf(archive.put('k', body)), ErrorCode.StorageUnavailable);
          expect(body.destroyed, 'a failed put destroys its body').to.equal(true);
          expectCode(await errorOf(archive.get('kept')), ErrorCode.StorageUnavailable);
          expectCode(await errorOf(archive.get('absent')), ErrorCode.StorageUnavailable);
          expectCode(await listError(archive), ErrorCode.StorageUnavailable);
          expectCode(await errorOf(archive.delete(['kept'])), ErrorCode.StorageUnavailable);
          const err = await errorOf(archive.put('k', b('v'))) as Error;
          expect(err.message).to.contain(archive.location.split(' ')[0]!);
        } finally {
          await fixture.recover();
        }
        expect(await getBytes(archive, 'kept')).to.deep.equal(b('before'));
        await archive.put('k', b('after'));
        expect(await keysOf(archive)).to.deep.equal(['k', 'kept']);
      });
    });

    describe('#close', () => {
      it('waits for a put in progress, which completes', async () => {
        const body = new Readable({ read() {} });
        body.push(b('part one, '));
        const order: string[] = [];
        const put = archive.put('closing', body).then(() => order.push('put'));
        const closed = archive.close().then(() => order.push('close'));
        body.push(b('part two'));
        body.push(null);
        await Promise.all([put, closed]);
        expect(order).to.deep.equal(['put', 'close']);
        const again = await fixture.open();
        try {
          expect(await getBytes(again, 'closing')).to.deep.equal(b('part one, part two'));
        } finally {
          await again.close();
        }
      });

      it('refuses later calls with STORE_CLOSED, and may be called twice', async () => {
        await archive.put('k', b('v'));
        await archive.close();
        await archive.close();
        expectCode(await errorOf(archive.put('k', b('v'))), ErrorCode.StoreClosed);
        const body = randomBody(10);
        expectCode(await errorOf(archive.put('k', body)), ErrorCode.StoreClosed);
        expect(body.destroyed).to.equal(true);
        expectCode(await errorOf(archive.get('k')), ErrorCode.StoreClosed);
        expectCode(await listError(archive), ErrorCode.StoreClosed);
        expectCode(await errorOf(archive.delete(['k'])), ErrorCode.StoreClosed);
      });

      it('destroys get streams still open: a reader gets STORE_CLOSED, an unread stream just ends', async () => {
        await archive.put('k', randomBytes(4 * 1024 * 1024));
        const read = (await archive.get('k'))!;
        const unread = (await archive.get('k'))!;
        const reading = errorOf(readAll(read));
        await archive.close();
        expect(read.destroyed).to.equal(true);
        expect(unread.destroyed).to.equal(true);
        expectCode(await reading, ErrorCode.StoreClosed);
      });
    });

    describe('readArchiveObject', () => {
      it('reads a whole object, undefined when absent, and refuses one over maxBytes', async () => {
        await archive.put('manifest.json', b('{"v":1}'));
        expect(await readArchiveObject(archive, 'manifest.json')).to.deep.equal(b('{"v":1}'));
        expect(await readArchiveObject(archive, 'absent')).to.equal(undefined);
        const err = await errorOf(readArchiveObject(archive, 'manifest.json', { maxBytes: 3 }));
        expect(err).to.be.instanceOf(RangeError);
        expect((err as Error).message).to.contain('manifest.json');
      });
    });
  });
}
