import { expect } from 'chai';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { kvSuite } from './kv-suite.js';

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (e: unknown) => e);
}

describe('leveldb', () => {
  kvSuite('KvStore contract', (dir) => openLevelStore(dir));

  describe('#openLevelStore', () => {
    let root: string;

    beforeEach(async () => {
      root = await makeTempDir('leveldb-');
    });

    afterEach(async () => {
      await removeTempDir(root);
    });

    it('creates missing parent directories', async () => {
      const store = await openLevelStore(join(root, 'a', 'b', 'c'));
      await store.write([{ type: 'put', key: Buffer.from('k'), value: Buffer.from('v') }]);
      await store.close();
      const again = await openLevelStore(join(root, 'a', 'b', 'c'), { createIfMissing: false });
      expect(await again.get(Buffer.from('k'))).to.deep.equal(Buffer.from('v'));
      await again.close();
    });

    it('refuses a missing database with NOT_FOUND when createIfMissing is false, creating nothing', async () => {
      const dir = join(root, 'missing');
      const err = await errorOf(openLevelStore(dir, { createIfMissing: false }));
      expect(isSyncError(err)).to.equal(true);
      expect((err as { code: string }).code).to.equal(ErrorCode.NotFound);
      expect(await errorOf(access(dir))).to.have.property('code', 'ENOENT');
    });

    it('refuses a database another store has open', async () => {
      const first = await openLevelStore(root);
      const err = await errorOf(openLevelStore(root));
      await first.close();
      expect(isSyncError(err)).to.equal(true);
      expect((err as { code: string }).code).to.equal(ErrorCode.Internal);
      const second = await openLevelStore(root);
      expect(second.isOpen).to.equal(true);
      await second.close();
    });
  });
});
