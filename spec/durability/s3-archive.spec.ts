import { expect } from 'chai';
import type { Archive } from '../../lib/durability/archive.js';
import { S3Archive } from '../../lib/durability/s3-archive.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { archiveSuite, type ArchiveFixture } from './archive-suite.js';

describe('durability/s3-archive', () => {
  let server: S3TestServer;
  let fixtures = 0;

  before(async () => {
    server = await startS3Server();
  });

  after(async () => {
    await server?.close();
  });

  // Each test gets its own key prefix on the one server.
  archiveSuite('Archive contract (s3rver)', async (): Promise<ArchiveFixture> => {
    const keyPrefix = `t${++fixtures}/`;
    const opened: Archive[] = [];
    return {
      maxKeyBytes: 1024 - keyPrefix.length,
      async open() {
        // Small parts so that the tests' streams take several parts each.
        const archive = new S3Archive(server.archiveOptions({ keyPrefix, partSizeBytes: 5 * 1024 * 1024, uploadConcurrency: 2 }));
        opened.push(archive);
        return archive;
      },
      outage: () => server.stop(),
      recover: () => server.restart(),
      async dispose() {
        await Promise.all(opened.map((a) => a.close()));
        if (!server.running()) await server.restart();
      },
    };
  });
});
