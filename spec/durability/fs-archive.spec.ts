import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Archive, ArchiveObject } from '../../lib/durability/archive.js';
import { openFsArchive, type FsArchive } from '../../lib/durability/fs-archive.js';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { archiveSuite, type ArchiveFixture } from './archive-suite.js';

const b = (text: string): Buffer => Buffer.from(text);

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (err: unknown) => err);
}

async function listAll(archive: Archive, prefix = ''): Promise<ArchiveObject[]> {
  const out: ArchiveObject[] = [];
  for await (const object of archive.list(prefix)) out.push(object);
  return out;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function expectCode(err: unknown, code: ErrorCode): void {
  expect(isSyncError(err), `expected a SyncError ${code}, got ${String(err)}`).to.equal(true);
  expect((err as { code: string }).code, String(err)).to.equal(code);
}

/** Every path under `dir`, relative, sorted. */
async function tree(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).sort();
}

describe('durability/fs-archive', () => {
  archiveSuite('Archive contract', async (): Promise<ArchiveFixture> => {
    const parent = await makeTempDir('fs-archive-');
    const dir = join(parent, 'archive');
    const opened: Archive[] = [];
    return {
      maxKeyBytes: 1024,
      async open() {
        const archive = await openFsArchive(dir);
        opened.push(archive);
        return archive;
      },
      // What an unmounted volume looks like: the directory is gone.
      outage: () => rename(dir, join(parent, 'away')),
      recover: () => rename(join(parent, 'away'), dir),
      async dispose() {
        await Promise.all(opened.map((a) => a.close()));
        await removeTempDir(parent);
      },
    };
  });

  describe('directory', () => {
    let parent: string;
    let dir: string;
    let archive: FsArchive;

    beforeEach(async () => {
      parent = await makeTempDir('fs-archive-');
      dir = join(parent, 'archive');
      archive = await openFsArchive(dir);
    });

    afterEach(async () => {
      await archive.close();
      await removeTempDir(parent);
    });

    it('lays keys out as escaped names, directories ending in %, beside its marker and temp directory', async () => {
      await archive.put('Db/x y', b('one'));
      await archive.put('db/caf\u00E9', b('two'));
      await archive.put('db', b('three'));
      expect(await tree(dir)).to.deep.equal(['%%archive', '%%tmp', '%44b%', '%44b%/x%20y', 'db', 'db%', 'db%/caf%c3%a9']);
      expect(await readFile(join(dir, '%44b%', 'x%20y'))).to.deep.equal(b('one'));
      expect(await readFile(join(dir, 'db%', 'caf%c3%a9'))).to.deep.equal(b('two'));
    });

    it('lists only names its encoding produces', async () => {
      await archive.put('kept/one', b('1'));
      await mkdir(join(dir, 'lost+found'));
      await writeFile(join(dir, 'lost+found', 'x'), 'stray');
      await writeFile(join(dir, 'Upper'), 'not escaped');
      await writeFile(join(dir, '%61'), 'escapes a plain character');
      await writeFile(join(dir, 'file%'), 'a file named like a directory');
      await mkdir(join(dir, 'dir'));
      await writeFile(join(dir, '%%tmp', 'half-written'), 'temp');
      await writeFile(join(dir, 'kept%', '%2f'), 'a slash inside a segment');
      await writeFile(join(dir, 'kept%', '..'.replace(/\./g, '%2e')), 'a .. segment');
      await symlink(join(dir, 'kept%', 'one'), join(dir, 'kept%', 'link'));
      await writeFile(join(dir, 'by-hand'), 'a valid name is an object, whoever wrote it');
      expect(await listAll(archive)).to.deep.equal([{ key: 'by-hand', size: 43 }, { key: 'kept/one', size: 1 }]);
    });

    it('removes the directories that deletes emptied, and only those', async () => {
      await archive.put('db/x/batches/1', b('1'));
      await archive.put('db/x/batches/2', b('2'));
      await archive.put('db/x/manifest', b('m'));
      await archive.delete(['db/x/batches/1']);
      expect(await tree(dir)).to.include('db%/x%/batches%/2');
      await archive.delete(['db/x/batches/2']);
      expect(await tree(dir)).to.deep.equal(['%%archive', '%%tmp', 'db%', 'db%/x%', 'db%/x%/manifest']);
      await archive.delete(['db/x/manifest']);
      expect(await tree(dir)).to.deep.equal(['%%archive', '%%tmp']);
      await archive.put('db/x/manifest', b('again'));
      expect(await listAll(archive)).to.deep.equal([{ key: 'db/x/manifest', size: 5 }]);
    });

    it('leaves no temp file behind a failed put', async () => {
      const failing = new Readable({
        read() {
          this.push(randomBytes(300 * 1024));
          this.destroy(new Error('producer failed'));
        },
      });
      expect((await errorOf(archive.put('k', failing)) as Error).message).to.equal('producer failed');
      expect(await tree(dir)).to.deep.equal(['%%archive', '%%tmp']);
    });

    it('removes stale temp files when opened, and keeps young ones (another process may be writing them)', async () => {
      await writeFile(join(dir, '%%tmp', 'stale'), 'left by a crash');
      await writeFile(join(dir, '%%tmp', 'young'), 'being written');
      const twoHoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
      await utimes(join(dir, '%%tmp', 'stale'), twoHoursAgo, twoHoursAgo);
      const again = await openFsArchive(dir);
      await again.close();
      expect(await readdir(join(dir, '%%tmp'))).to.deep.equal(['young']);
    });

    it('lets a reader that opened before a replace read the old version whole', async () => {
      const before = randomBytes(2 * 1024 * 1024);
      const after = randomBytes(3 * 1024 * 1024);
      await archive.put('k', before);
      const old = (await archive.get('k'))!;
      const reading = readAll(old);
      await archive.put('k', after);
      expect((await reading).equals(before)).to.equal(true);
      expect((await readAll((await archive.get('k'))!)).equals(after)).to.equal(true);
    });

    it('refuses a segment too long for a file name once escaped, with a TypeError', async () => {
      await archive.put(`d/${'s'.repeat(254)}`, b('fits'));
      for (const key of [`d/${'s'.repeat(255)}`, `${'S'.repeat(85)}/x`, `d/${'\u00E9'.repeat(43)}`]) {
        const err = await errorOf(archive.put(key, b('v')));
        expect(err, key).to.be.instanceOf(TypeError);
        expect((err as Error).message).to.contain('longer than 254 bytes once escaped');
      }
      expect((await listAll(archive)).map((o) => o.key)).to.deep.equal([`d/${'s'.repeat(254)}`]);
    });

    it('treats an empty mount point as unavailable and writes nothing into it', async () => {
      await archive.put('k', b('v'));
      await rename(dir, join(parent, 'unmounted'));
      await mkdir(dir);
      expectCode(await errorOf(archive.put('k2', b('v'))), ErrorCode.StorageUnavailable);
      expectCode(await errorOf(archive.delete(['k'])), ErrorCode.StorageUnavailable);
      expect(await readdir(dir)).to.deep.equal([]);
    });

    it('refuses to open where a file is in the way, naming the directory', async () => {
      await writeFile(join(parent, 'a-file'), 'x');
      const err = await errorOf(openFsArchive(join(parent, 'a-file')));
      expectCode(err, ErrorCode.Internal);
      expect((err as Error).message).to.contain(join(parent, 'a-file'));
      expect(await errorOf(openFsArchive(''))).to.be.instanceOf(TypeError);
      expect(await errorOf(openFsArchive(dir, { staleTempMs: -1 }))).to.be.instanceOf(TypeError);
    });

    it('stores without fsync when sync is false', async () => {
      const fast = await openFsArchive(dir, { sync: false });
      try {
        await fast.put('a/b', b('v'));
        await fast.delete(['a/b']);
        await fast.put('c', b('w'));
        expect(await listAll(archive)).to.deep.equal([{ key: 'c', size: 1 }]);
      } finally {
        await fast.close();
      }
    });
  });
});
