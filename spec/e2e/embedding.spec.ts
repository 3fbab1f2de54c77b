/**
 * The sync router embedded in an Express app the way users write it: with
 * the app's own body parser in front, mounted with `app.use(sync.path,
 * sync)`, inside a nested router, at the root, or (by mistake) at a path
 * other than its `path` option.
 */
import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Express, type RequestHandler } from 'express';
import request from 'supertest';
import { createSyncRouter, type SyncRouter } from '../../lib/create-sync-router.js';
import type { SyncRouterOptions } from '../../lib/config/options.js';
import { SyncClient } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { exceedsValueDepth } from '../../lib/http/routes.js';
import { exceedsJsonDepth } from '../../lib/service/limits.js';
import { TestSite } from '../helpers/changes.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

interface Embedded {
  app: Express;
  server: Server;
  sync: SyncRouter;
  port: number;
  close(): Promise<void>;
}

/** An app on 127.0.0.1:0 whose `setup` mounts the router; the router gets a temp data dir. */
async function embed(options: SyncRouterOptions, setup: (app: Express, sync: SyncRouter) => void): Promise<Embedded> {
  const dataDir = await makeTempDir('embed-');
  const sync = createSyncRouter({ heartbeatIntervalMs: 0, ...options, dataDir });
  const app = express();
  setup(app, sync);
  const server = createServer(app);
  sync.attach(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    app, server, sync,
    port: (server.address() as AddressInfo).port,
    async close() {
      await sync.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await removeTempDir(dataDir);
    },
  };
}

/** The process warnings with our codes, collected per test. */
function collectWarnings(): { list: Error[]; stop(): void } {
  const list: Error[] = [];
  const onWarning = (warning: Error & { code?: string }): void => {
    if (warning.code?.startsWith('SYNC_')) list.push(warning);
  };
  process.on('warning', onWarning);
  return { list, stop: () => process.off('warning', onWarning) };
}

const codesOf = (warnings: Error[]): string[] => warnings.map((w) => (w as Error & { code: string }).code);

/** `[[[…0…]]]`, `depth` arrays deep. */
function nested(depth: number): string {
  return `${'['.repeat(depth)}0${']'.repeat(depth)}`;
}

describe('embedding the sync router in an Express app', () => {
  const site = new TestSite();
  const reader = new TestSite();
  let embedded: Embedded | undefined;
  let warnings: ReturnType<typeof collectWarnings>;

  beforeEach(() => { warnings = collectWarnings(); });
  afterEach(async () => {
    warnings.stop();
    await embedded?.close();
    embedded = undefined;
  });

  const mountAfter = (parser: RequestHandler) => (app: Express, sync: SyncRouter): void => {
    app.use(parser);
    app.use(sync.path, sync);
  };

  it('a tiny app with express.json() first, mounted at /api/sync: syncs over HTTP and WebSocket both ways', async () => {
    embedded = await embed({ path: '/api/sync' }, (app, sync) => {
      app.use(express.json());
      app.post('/api/echo', (req, res) => { res.json(req.body); });
      app.use(sync.path, sync);
    });
    const server = embedded.server;
    const device = await SyncClient.connect({ url: `ws://127.0.0.1:${embedded.port}/api/sync/ws`, databaseId: 'notes', siteId: reader.wire, timeoutMs: 10_000 });
    try {
      expect((await device.catchUp()).changeSets).to.deep.equal([]);
      // HTTP → WebSocket: a push over HTTP reaches the connected device.
      const pushed = new Promise<{ transactionId: string }[]>((resolve) => device.once('push', resolve));
      const fromHttp = site.txn([{ pk: [1], value: 'written over HTTP' }]);
      const post = await request(server).post('/api/sync/notes/changes').set('X-Site-Id', site.wire).send({ changes: [fromHttp] }).expect(200);
      expect(post.body.data).to.include({ applied: 1, transactions: 1 });
      expect((await pushed).map((set) => set.transactionId)).to.deep.equal([fromHttp.transactionId]);
      // WebSocket → HTTP: the device's write is read back over HTTP by the other site.
      const fromDevice = reader.txn([{ pk: [2], value: 'written over WebSocket' }]);
      expect(await device.apply([fromDevice])).to.include({ applied: 1, transactions: 1 });
      const read = await request(server).get('/api/sync/notes/changes').set('X-Site-Id', site.wire).expect(200);
      expect(read.body.data.changes.map((set: { transactionId: string }) => set.transactionId)).to.deep.equal([fromDevice.transactionId]);
      expect(read.body.data.changes[0].changes[0].value).to.equal('written over WebSocket');
    } finally {
      await device.close();
    }
    // The app's own JSON route still gets its parsed body.
    expect((await request(server).post('/api/echo').send({ hello: 'world' }).expect(200)).body).to.deep.equal({ hello: 'world' });
    expect(codesOf(warnings.list)).to.deep.equal(['SYNC_BODY_PREPARSED']);
  });

  describe('after app.use(express.json())', () => {
    it('applies pushes the app has parsed already and serves them back', async () => {
      embedded = await embed({ path: '/api/sync' }, mountAfter(express.json()));
      const body = { changes: [site.txn([{ pk: [1], value: 'a' }, { pk: [2], value: 'b' }])] };
      const post = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire).send(body).expect(200);
      expect(post.body).to.deep.equal({ ok: true, data: { applied: 2, skipped: 0, conflicts: 0, transactions: 1 } });
      const read = await request(embedded.server).get('/api/sync/db1/changes').set('X-Site-Id', reader.wire).expect(200);
      expect(read.body.data.changes.map((s: { transactionId: string }) => s.transactionId)).to.deep.equal([body.changes[0]!.transactionId]);
    });

    it('still refuses a body without a changes array (INVALID_BODY)', async () => {
      embedded = await embed({ path: '/api/sync' }, mountAfter(express.json()));
      for (const body of [{}, { changes: {} }, [site.txn([{ pk: [1] }])]]) {
        const res = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire).send(body).expect(400);
        expect(res.body.error, JSON.stringify(body)).to.deep.equal({ code: 'INVALID_BODY', message: 'changes: request body must be {"changes": ChangeSet[]}' });
      }
    });

    it('still refuses a body nested deeper than maxJsonDepth, even 100000 levels deep (INVALID_MESSAGE, not a stack overflow)', async () => {
      embedded = await embed({ path: '/api/sync', maxJsonDepth: 16 }, mountAfter(express.json({ limit: '1mb' })));
      for (const depth of [16, 100_000]) {
        const res = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire)
          .type('application/json').send(`{"changes":${nested(depth)}}`).expect(400);
        expect(res.body.error, `depth ${depth + 1}`).to.deep.equal({ code: 'INVALID_MESSAGE', message: 'body: JSON nested deeper than 16 levels (maxJsonDepth)' });
      }
      // At the limit the body passes the depth check and fails validation instead.
      const res = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire)
        .type('application/json').send(`{"changes":${nested(15)}}`).expect(400);
      expect(res.body.error.code).to.equal('INVALID_CHANGESET');
    });

    it('warns once that express.json()\'s own limit applies first; a bigger push gets its 413', async () => {
      embedded = await embed({ path: '/api/sync' }, mountAfter(express.json()));
      // Express prints the 413's stack unless its env is "test"; the refusal itself is the same.
      embedded.app.set('env', 'test');
      const push = (value: string) => request(embedded!.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire)
        .send({ changes: [site.txn([{ pk: [1], value }])] });
      await push('small').expect(200);
      await push('small again').expect(200);
      expect(codesOf(warnings.list)).to.deep.equal(['SYNC_BODY_PREPARSED']);
      const text = warnings.list[0]!.message;
      expect(text).to.include('The sync router at /api/sync received a request body already parsed');
      expect(text).to.include('express.json()');
      expect(text).to.include('maxMessageBytes (67108864 bytes)');
      expect(text).to.include('Mount the sync router before express.json(), or give express.json({ limit: 67108864 })');
      // express.json() refuses this before the router runs: its 413, not the router's envelope.
      const big = await push('x'.repeat(200 * 1024)).expect(413);
      expect(big.body?.error?.code).to.equal(undefined);
      expect(codesOf(warnings.list)).to.have.length(1);
    });

    it('keeps maxMessageBytes when express.json()\'s limit is raised above it (PAYLOAD_TOO_LARGE)', async () => {
      embedded = await embed({ path: '/api/sync', maxMessageBytes: 64 * 1024 }, mountAfter(express.json({ limit: '20mb' })));
      const res = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire)
        .send({ changes: [site.txn([{ pk: [1], value: 'x'.repeat(100 * 1024) }])] }).expect(413);
      expect(res.body.error).to.deep.equal({ code: 'PAYLOAD_TOO_LARGE', message: 'body: larger than the limit of 65536 bytes (maxMessageBytes)' });
    });
  });

  it('after app.use(express.text()), parses the text like a body it read itself', async () => {
    embedded = await embed({ path: '/api/sync' }, mountAfter(express.text({ type: '*/*' })));
    const body = { changes: [site.txn([{ pk: [1], value: 'a' }])] };
    const post = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire).send(body).expect(200);
    expect(post.body.data.applied).to.equal(1);
    const bad = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire).type('application/json').send('{"changes": [').expect(400);
    expect(bad.body.error.code).to.equal('INVALID_BODY');
    expect(bad.body.error.message).to.match(/^body: not valid JSON \(/);
  });

  it('mounted before express.json(), takes pushes bigger than express.json()\'s limit and prints no warning', async () => {
    embedded = await embed({ path: '/api/sync' }, (app, sync) => {
      app.use(sync.path, sync);
      app.use(express.json());
    });
    const post = await request(embedded.server).post('/api/sync/db1/changes').set('X-Site-Id', site.wire)
      .send({ changes: [site.txn([{ pk: [1], value: 'x'.repeat(200 * 1024) }])] }).expect(200);
    expect(post.body.data.applied).to.equal(1);
    expect(warnings.list).to.deep.equal([]);
  });

  describe('mount path', () => {
    const connect = (port: number, path: string) =>
      SyncClient.connect({ url: `ws://127.0.0.1:${port}${path}`, databaseId: 'db1', siteId: siteIdToWire(randomSiteId()), timeoutMs: 10_000 });

    it('app.use(sync.path, sync) names it once: HTTP and WebSocket both answer under it', async () => {
      embedded = await embed({ path: '/api/sync' }, (app, sync) => { app.use(sync.path, sync); });
      expect(embedded.sync.path).to.equal('/api/sync');
      await request(embedded.server).get('/api/sync/status').expect(200);
      const client = await connect(embedded.port, '/api/sync/ws');
      await client.ping();
      await client.close();
      expect(warnings.list).to.deep.equal([]);
    });

    it('defaults sync.path to /sync', async () => {
      embedded = await embed({}, (app, sync) => { app.use(sync.path, sync); });
      expect(embedded.sync.path).to.equal('/sync');
      await request(embedded.server).get('/sync/status').expect(200);
      expect(warnings.list).to.deep.equal([]);
    });

    it('warns once, at the first HTTP request, when mounted somewhere other than its path option', async () => {
      embedded = await embed({}, (app, sync) => { app.use('/api/sync', sync); });
      expect(warnings.list).to.deep.equal([]);
      await request(embedded.server).get('/api/sync/status').expect(200);
      await request(embedded.server).get('/api/sync/status').expect(200);
      expect(codesOf(warnings.list)).to.deep.equal(['SYNC_MOUNT_MISMATCH']);
      expect(warnings.list[0]!.message).to.equal(
        'The sync router is mounted at "/api/sync" but its path option is "/sync": HTTP works at /api/sync, ' +
        'but WebSocket clients connecting to /api/sync/ws get no answer until they time out, because upgrades are only taken at /sync/ws. ' +
        'Mount it with app.use(sync.path, sync), or create it with createSyncRouter({ path: "/api/sync" }).',
      );
      // WebSocket stays where the option says; the warning is the only sign of the mistake.
      const client = await connect(embedded.port, '/sync/ws');
      await client.close();
    });

    it('counts the full path of a router mounted inside another router', async () => {
      embedded = await embed({ path: '/api/v1/sync' }, (app, sync) => {
        const api = express.Router();
        api.use('/sync', sync);
        app.use('/api/v1', api);
      });
      await request(embedded.server).get('/api/v1/sync/status').expect(200);
      const client = await connect(embedded.port, '/api/v1/sync/ws');
      await client.close();
      expect(warnings.list).to.deep.equal([]);
    });

    it('takes "/" as the root mount, app.use(sync)', async () => {
      embedded = await embed({ path: '/' }, (app, sync) => { app.use(sync); });
      await request(embedded.server).get('/status').expect(200);
      const client = await connect(embedded.port, '/ws');
      await client.close();
      expect(warnings.list).to.deep.equal([]);
    });

    it('does not mistake a request in other letter case for another mount', async () => {
      embedded = await embed({ path: '/api/sync' }, (app, sync) => { app.use(sync.path, sync); });
      await request(embedded.server).get('/API/Sync/status').expect(200);
      expect(warnings.list).to.deep.equal([]);
    });
  });

  describe('#exceedsValueDepth (the depth check of bodies parsed upstream)', () => {
    it('counts nesting as the check on raw bodies does', () => {
      const texts = ['0', '"[[[["', '[]', '[[]]', '{"a":[{}]}', '{"a":1,"b":{"c":[[2]]}}', `{"changes":${nested(7)}}`, `[${nested(3)},${nested(6)},{}]`];
      for (const text of texts) {
        for (const max of [1, 2, 3, 4, 8]) {
          expect(exceedsValueDepth(JSON.parse(text), max), `${text} at ${max}`).to.equal(exceedsJsonDepth(Buffer.from(text), max));
        }
      }
    });

    it('ends on a cyclic value, which no JSON parser makes but a host middleware could', () => {
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      expect(exceedsValueDepth(cyclic, 32)).to.equal(true);
    });
  });
});
