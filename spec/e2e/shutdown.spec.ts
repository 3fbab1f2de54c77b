import { expect } from 'chai';
import { startTestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import type { ApplyResultMessage } from '../../lib/protocol/messages.js';

describe('router #close', () => {
  it('answers in-flight applies, closes sockets with 1001 and closes the stores', async () => {
    const dataDir = await makeTempDir('shutdown-');
    try {
      const server = await startTestServer({ dataDir });
      const client = await server.connect('db');
      const site = new TestSite(Buffer.from(client.options.siteId, 'base64url'));
      const results: Promise<ApplyResultMessage | Error>[] = [];
      for (let i = 0; i < 20; i++) {
        results.push(client.apply([site.txn(Array.from({ length: 50 }, (_, j) => ({ pk: [i, j], value: `v${i}` })))]).catch((err: Error) => err));
      }
      // Wait for the first answer so that the rest are in flight or queued.
      await results[0];
      const closing = server.sync.close();
      const code = await client.closed();
      await closing;
      expect(code).to.equal(1001);
      const settled = await Promise.all(results);
      const answered = settled.filter((r): r is ApplyResultMessage => !(r instanceof Error));
      expect(answered.length).to.be.greaterThan(0);
      // Everything answered is stored; the store can be reopened (its lock was released).
      const replica = await Replica.open(await openLevelStore(databaseDirectory(dataDir, 'db')));
      try {
        const stats = replica.tableStats();
        expect(stats[0]!.count).to.be.at.least(answered.length * 50);
      } finally {
        await replica.close();
      }
      await server.close();
    } finally {
      await removeTempDir(dataDir);
    }
  });
});
