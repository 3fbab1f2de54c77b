import { expect } from 'chai';
import { mkdir, readdir, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Archive } from '../../lib/durability/archive.js';
import { openFsArchive } from '../../lib/durability/fs-archive.js';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { archiveSuite, type ArchiveFixture } from './archive-suite.js';

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
});
