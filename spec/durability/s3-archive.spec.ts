import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTcpServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import type { Archive, ArchiveObject } from '../../lib/durability/archive.js';
import { S3Archive, type S3ArchiveOptions } from '../../lib/durability/s3-archive.js';
import { ErrorCode, isSyncError } from '../../lib/errors.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
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

/** An HTTP server on 127.0.0.1 that answers every request with `handler`; counts requests. */
async function fakeS3(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ endpoint: string; requests: () => number; close(): Promise<void> }> {
  let count = 0;
  const server: Server = createHttpServer((req, res) => {
    count++;
    req.resume();
    req.on('end', () => handler(req, res));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests: () => count,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

function fakeOptions(endpoint: string, extra: Partial<S3ArchiveOptions> = {}): S3ArchiveOptions {
  return { bucket: 'fake-bucket', endpoint, forcePathStyle: true, accessKeyId: 'id', secretAccessKey: 'secret', ...extra };
}

describe('durability/s3-archive', () => {
  let server: S3TestServer;
  let fixtures = 0;
  const opened: Archive[] = [];

  /** An S3Archive on the s3rver under a fresh key prefix, closed after the test. */
  function open(extra: Partial<S3ArchiveOptions> = {}): S3Archive {
    const archive = new S3Archive(server.archiveOptions({ keyPrefix: `t${++fixtures}/`, ...extra }));
    opened.push(archive);
    return archive;
  }

  before(async () => {
    server = await startS3Server();
  });

  afterEach(async () => {
    await Promise.all(opened.splice(0).map((a) => a.close()));
    if (!server.running()) await server.restart();
  });

  after(async () => {
    await server?.close();
  });

  // Each test gets its own key prefix on the one server.
  archiveSuite('Archive contract (s3rver)', async (): Promise<ArchiveFixture> => {
    const keyPrefix = `t${++fixtures}/`;
    const mine: Archive[] = [];
    return {
      maxKeyBytes: 1024 - keyPrefix.length,
      async open() {
        // Small parts so that the tests' streams take several parts each.
        const archive = new S3Archive(server.archiveOptions({ keyPrefix, partSizeBytes: 5 * 1024 * 1024, uploadConcurrency: 2 }));
        mine.push(archive);
        return archive;
      },
      outage: () => server.stop(),
      recover: () => server.restart(),
      async dispose() {
        await Promise.all(mine.map((a) => a.close()));
        if (!server.running()) await server.restart();
      },
    };
  });

  describe('options', () => {
    it('refuses invalid options with a TypeError naming the option', () => {
      const base = { bucket: 'b-1' };
      const cases: [Partial<S3ArchiveOptions>, RegExp][] = [
        [{ bucket: '' }, /bucket/],
        [{ bucket: undefined as unknown as string }, /bucket: required/],
        [{ ...base, endpoint: 'not a url' }, /endpoint/],
        [{ ...base, endpoint: 'localhost:9000' }, /endpoint/],
        [{ ...base, accessKeyId: 'id' }, /accessKeyId and secretAccessKey/],
        [{ ...base, sessionToken: 'tok' }, /sessionToken/],
        [{ ...base, forcePathStyle: 'yes' as unknown as boolean }, /forcePathStyle/],
        [{ ...base, keyPrefix: '/lead/' }, /keyPrefix/],
        [{ ...base, keyPrefix: 'a//b/' }, /keyPrefix/],
        [{ ...base, partSizeBytes: 1024 * 1024 }, /partSizeBytes/],
        [{ ...base, uploadConcurrency: 0 }, /uploadConcurrency/],
        [{ ...base, listPageSize: 1001 }, /listPageSize/],
        [{ ...base, connectTimeoutMs: -1 }, /connectTimeoutMs/],
        [{ ...base, maxAttempts: 1.5 }, /maxAttempts/],
      ];
      for (const [options, message] of cases) {
        expect(() => new S3Archive(options as S3ArchiveOptions), JSON.stringify(options)).to.throw(TypeError, message);
      }
    });

    it('signs for us-east-1 and prefixes nothing when given no region and no keyPrefix (S3_REGION and S3_KEY_PREFIX unset)', async () => {
      const seen: { url?: string; authorization?: string }[] = [];
      const fake = await fakeS3((req, res) => {
        seen.push({ url: req.url, authorization: req.headers.authorization });
        res.writeHead(200, { etag: '"0"' });
        res.end();
      });
      const archive = new S3Archive(fakeOptions(fake.endpoint));
      try {
        await archive.put('a/k', b('v'));
      } finally {
        await archive.close();
        await fake.close();
      }
      expect(seen).to.have.length(1);
      expect(seen[0]!.url).to.match(/^\/fake-bucket\/a\/k(\?|$)/);
      expect(seen[0]!.authorization).to.match(/Credential=id\/\d{8}\/us-east-1\/s3\/aws4_request/);
    });

    it('names the bucket, prefix and endpoint in its location, never the credentials', async () => {
      const archive = open();
      expect(archive.location).to.match(/^s3:\/\/archive-test\/t\d+\/ at http:\/\/127\.0\.0\.1:\d+$/);
      expect(archive.location).to.not.contain('S3RVER');
    });
  });

  describe('keyPrefix', () => {
    it('stores keys under the prefix, and lists and reads only those', async () => {
      const a = open({ keyPrefix: 'tenant-a/' });
      const c = open({ keyPrefix: 'tenant-a-copy/' });
      await a.put('db/k', b('from a'));
      await c.put('db/k', b('from c'));
      expect(await listAll(a)).to.deep.equal([{ key: 'db/k', size: 6 }]);
      expect(await listAll(c)).to.deep.equal([{ key: 'db/k', size: 6 }]);
      expect(await readAll((await a.get('db/k'))!)).to.deep.equal(b('from a'));
      const whole = open({ keyPrefix: '' });
      const keys = (await listAll(whole, 'tenant-a')).map((o) => o.key);
      expect(keys).to.deep.equal(['tenant-a-copy/db/k', 'tenant-a/db/k']);
      await a.delete(['db/k']);
      expect((await listAll(whole, 'tenant-a')).map((o) => o.key)).to.deep.equal(['tenant-a-copy/db/k']);
    });

    it('pages with small pages too, continuing after the last key', async () => {
      const archive = open({ listPageSize: 7 });
      const keys = Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? `k/${i}` : `k-${i}`));
      for (const key of keys) await archive.put(key, b(key));
      const listed = (await listAll(archive)).map((o) => o.key);
      expect(listed).to.deep.equal([...keys].sort((x, y) => Buffer.compare(b(x), b(y))));
    });

    it('ends a list between pages with STORE_CLOSED once closed', async () => {
      const archive = open({ listPageSize: 5 });
      for (let i = 0; i < 12; i++) await archive.put(`p/${String(i).padStart(2, '0')}`, b('v'));
      const it = archive.list('p/')[Symbol.asyncIterator]();
      for (let i = 0; i < 5; i++) expect((await it.next()).value).to.deep.equal({ key: `p/0${i}`, size: 1 });
      await archive.close();
      expectCode(await errorOf(it.next()), ErrorCode.StoreClosed);
    });
  });

  describe('errors', () => {
    it('reports unknown credentials as an error naming the bucket and key, not STORAGE_UNAVAILABLE', async () => {
      // s3rver knows one access key id; it does not check SigV4 signatures, so a wrong secret would pass there.
      const archive = open({ accessKeyId: 'NOT-A-KEY' });
      const calls = [() => archive.put('db/k', b('v')), () => archive.get('db/k'), () => listAll(archive, 'db/'), () => archive.delete(['db/k'])];
      for (const call of calls) {
        const err = await errorOf(call());
        expectCode(err, ErrorCode.Internal);
        expect((err as Error).message).to.contain('bucket "archive-test"').and.to.match(/"t\d+\/db\/k"|prefix "t\d+\/db\/"/).and.to.contain('InvalidAccessKeyId (HTTP 403)');
      }
    });

    it('reports a missing bucket as an error naming it; a get there is not "absent"', async () => {
      const archive = open({ bucket: 'no-such-bucket' });
      for (const call of [() => archive.put('k', b('v')), () => archive.get('k'), () => listAll(archive)]) {
        const err = await errorOf(call());
        expectCode(err, ErrorCode.Internal);
        expect((err as Error).message).to.contain('"no-such-bucket"').and.to.contain('NoSuchBucket');
      }
    });

    it('answers STORAGE_UNAVAILABLE for throttling and 5xx, after maxAttempts attempts', async () => {
      for (const [status, code] of [[503, 'SlowDown'], [500, 'InternalError'], [502, 'BadGateway']] as const) {
        const fake = await fakeS3((_req, res) => {
          res.writeHead(status, { 'content-type': 'application/xml' });
          res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>try later</Message></Error>`);
        });
        const archive = new S3Archive(fakeOptions(fake.endpoint, { maxAttempts: 2 }));
        try {
          const err = await errorOf(archive.put('k', b('v')));
          expectCode(err, ErrorCode.StorageUnavailable);
          expect((err as Error).message).to.contain(code).and.to.contain(`HTTP ${status}`).and.to.contain('"k"');
          expect(fake.requests(), `${status}: attempts`).to.equal(2);
        } finally {
          await archive.close();
          await fake.close();
        }
      }
    });

    it('gives up on a server that accepts and never answers, with STORAGE_UNAVAILABLE', async () => {
      const sockets = new Set<Socket>();
      const silent = createTcpServer((socket) => {
        sockets.add(socket);
        socket.resume();
      });
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const endpoint = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
      const archive = new S3Archive(fakeOptions(endpoint, { requestTimeoutMs: 300, idleTimeoutMs: 300, maxAttempts: 2 }));
      try {
        for (const call of [() => archive.put('k', b('v')), () => archive.get('k'), () => listAll(archive)]) {
          const err = await errorOf(call());
          expectCode(err, ErrorCode.StorageUnavailable);
          expect((err as Error).message).to.match(/TimeoutError|timed out|exceeded/);
        }
      } finally {
        await archive.close();
        for (const socket of sockets) socket.destroy();
        await new Promise<void>((resolve) => silent.close(() => resolve()));
      }
    });

    it('answers STORAGE_UNAVAILABLE when the server goes away in the middle of a multipart upload', async () => {
      const archive = open({ partSizeBytes: 5 * 1024 * 1024, uploadConcurrency: 1 });
      await archive.put('big', b('previous'));
      let produced = 0;
      const body = new Readable({
        read() {
          if (produced >= 24 * 1024 * 1024) {
            this.push(null);
            return;
          }
          produced += 1024 * 1024;
          // The first part has been handed over by then; the server dies before the rest.
          if (produced === 12 * 1024 * 1024) void server.stop().then(() => this.push(randomBytes(1024 * 1024)));
          else this.push(randomBytes(1024 * 1024));
        },
      });
      const err = await errorOf(archive.put('big', body));
      expectCode(err, ErrorCode.StorageUnavailable);
      expect(body.destroyed).to.equal(true);
      await server.restart();
      expect(await readAll((await archive.get('big'))!)).to.deep.equal(b('previous'));
    });

    it('errors a get stream cut by an outage with STORAGE_UNAVAILABLE', async () => {
      const archive = open();
      const body = randomBytes(32 * 1024 * 1024);
      await archive.put('big', body);
      const stream = (await archive.get('big'))!;
      // The reader takes one chunk, then holds still (the server waits to send more) until the server is gone.
      let received!: () => void;
      const firstChunk = new Promise<void>((resolve) => { received = resolve; });
      let release!: () => void;
      const gate = new Promise<void>((resolve) => { release = resolve; });
      let bytes = 0;
      const reading = errorOf((async () => {
        for await (const chunk of stream) {
          bytes += (chunk as Buffer).length;
          received();
          await gate;
        }
      })());
      await firstChunk;
      await server.stop();
      release();
      expectCode(await reading, ErrorCode.StorageUnavailable);
      expect(bytes).to.be.above(0).and.below(body.length);
    });

    it('fails loudly, naming both keys, when the server lists out of byte order', async () => {
      const fake = await fakeS3((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
          + '<Name>fake-bucket</Name><Prefix></Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>'
          + '<Contents><Key>a</Key><Size>1</Size></Contents><Contents><Key>a/b</Key><Size>1</Size></Contents><Contents><Key>a-c</Key><Size>1</Size></Contents>'
          + '</ListBucketResult>');
      });
      const archive = new S3Archive(fakeOptions(fake.endpoint));
      try {
        const seen: string[] = [];
        const err = await errorOf((async () => {
          for await (const o of archive.list('')) seen.push(o.key);
        })());
        expectCode(err, ErrorCode.Internal);
        expect((err as Error).message).to.contain('"a-c" after "a/b"');
        expect(seen).to.deep.equal(['a', 'a/b']);
      } finally {
        await archive.close();
        await fake.close();
      }
    });
  });
});
