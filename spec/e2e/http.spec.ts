import { expect } from 'chai';
import request from 'supertest';
import { gzipSync } from 'node:zlib';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import type { SnapshotChunk } from '../../lib/protocol/messages.js';
import { eventually } from '../helpers/coordinator-process.js';

const DB = 'acme:notes-42';
const PATH = `/${encodeURIComponent(DB)}`;

describe('http routes', () => {
  let server: TestServer;
  const site = new TestSite();
  const reader = new TestSite();
  afterEach(() => server.close());

  describe('without auth', () => {
    beforeEach(async () => { server = await startTestServer({ batchSize: 2 }); });

    it('GET /status reports uptime, open stores and connected clients', async () => {
      await server.connect(DB);
      const res = await request(server.app).get('/sync/status').expect(200).expect('content-type', /json/);
      expect(res.body.ok).to.equal(true);
      expect(res.body.data).to.include({ openStores: 1, connectedClients: 1 });
      expect(res.body.data.uptime).to.be.a('number');
    });

    it('POST then GET changes round-trips, excluding the caller and paging with hasMore', async () => {
      const body = { changes: [site.txn([{ pk: [1], value: 'a' }, { pk: [2], value: { __bin: 'AQID' } }]), site.txn([{ pk: [3], value: 'c' }, { pk: [4], value: 'd' }])] };
      const post = await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send(body).expect(200);
      expect(post.body).to.deep.equal({ ok: true, data: { applied: 4, skipped: 0, conflicts: 0, transactions: 2 } });
      const own = await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).expect(200);
      expect(own.body.data.changes).to.deep.equal([]);
      const first = await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', reader.wire).expect(200);
      expect(first.body.data.changes).to.have.length(1);
      expect(first.body.data.hasMore).to.equal(true);
      const cursor = first.body.data.changes[0].hlc;
      const second = await request(server.app).get(`/sync${PATH}/changes`).query({ sinceHLC: cursor }).set('X-Site-Id', reader.wire).expect(200);
      expect(second.body.data.changes.map((s: { transactionId: string }) => s.transactionId)).to.deep.equal([body.changes[1]!.transactionId]);
      expect(second.body.data.hasMore).to.equal(false);
    });

    it('pushes HTTP writes to WebSocket subscribers', async () => {
      const client = await server.connect(DB);
      const pushed = new Promise((resolve) => client.once('push', resolve));
      await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ changes: [site.txn([{ pk: [9], value: 'x' }])] }).expect(200);
      expect(await pushed).to.have.length(1);
    });

    it('streams a snapshot as NDJSON in chunk order', async () => {
      await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire)
        .send({ changes: [site.txn([{ pk: [1], value: 'a' }, { pk: [2], delete: true }], [{ table: 'notes' }])] }).expect(200);
      const res = await request(server.app).get(`/sync${PATH}/snapshot`).set('X-Site-Id', reader.wire).buffer(true).parse((r, cb) => {
        let text = '';
        r.on('data', (d: Buffer) => { text += d.toString(); });
        r.on('end', () => cb(null, text));
      }).expect(200).expect('content-type', /application\/x-ndjson/);
      const chunks = (res.body as string).trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk);
      expect(chunks.map((c) => c.type)).to.deep.equal(['header', 'schema-migration', 'table-start', 'column-versions', 'table-end', 'tombstone', 'footer']);
    });

    it('answers bad input with the error envelope and fitting status', async () => {
      const cases: [request.Test, number, string][] = [
        [request(server.app).get(`/sync${PATH}/changes`), 401, 'AUTH_FAILED'],
        [request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', 'short'), 400, 'INVALID_SITE_ID'],
        [request(server.app).get('/sync/bad%20id/changes').set('X-Site-Id', reader.wire), 400, 'INVALID_DATABASE_ID'],
        [request(server.app).get('/sync/%ZZ/changes').set('X-Site-Id', reader.wire), 400, 'INVALID_DATABASE_ID'],
        [request(server.app).get(`/sync${PATH}/changes`).query({ sinceHLC: 'nope' }).set('X-Site-Id', reader.wire), 400, 'INVALID_HLC'],
        [request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ nope: 1 }), 400, 'INVALID_BODY'],
        [request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).set('content-type', 'application/json').send('{"changes": ['), 400, 'INVALID_BODY'],
        [request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ changes: [{ ...site.txn([{ pk: [1] }]), siteId: 'x' }] }), 400, 'INVALID_SITE_ID'],
        [request(server.app).get(`/sync${PATH}/snapshot`), 401, 'AUTH_FAILED'],
        [request(server.app).get('/sync/a/b/c'), 404, 'NOT_FOUND'],
      ];
      for (const [req, status, code] of cases) {
        const res = await req;
        expect(res.status, code).to.equal(status);
        expect(res.body.ok, code).to.equal(false);
        expect(res.body.error.code).to.equal(code);
        expect(res.body.error.message).to.be.a('string').and.not.equal('');
      }
      const undecodable = await request(server.app).get('/sync/%ZZ/snapshot').set('X-Site-Id', reader.wire);
      expect(undecodable.body.error).to.deep.equal({ code: 'INVALID_DATABASE_ID', message: 'databaseId: not valid percent-encoding, got "%ZZ"' });
    });

    it('takes a gzip body, and answers a corrupt one or an unknown Content-Encoding with INVALID_BODY naming the body', async () => {
      const row = { changes: [site.txn([{ pk: [77], value: 'zipped' }])] };
      // Raw bytes through fetch: supertest would serialize a Buffer as JSON.
      const post = async (body: Buffer, encoding: string): Promise<{ status: number; body: { error?: { code: string; message: string } } }> => {
        const res = await fetch(`${server.baseUrl}${PATH}/changes`, {
          method: 'POST', headers: { 'x-site-id': site.wire, 'content-type': 'application/json', 'content-encoding': encoding }, body,
        });
        return { status: res.status, body: await res.json() as { error?: { code: string; message: string } } };
      };
      const zipped = await post(gzipSync(JSON.stringify(row)), 'gzip');
      expect(zipped.status, JSON.stringify(zipped.body)).to.equal(200);
      for (const [body, encoding] of [[Buffer.from('not gzip at all'), 'gzip'], [Buffer.from('{}'), 'br-ish']] as const) {
        const res = await post(body, encoding);
        expect(res.status, encoding).to.equal(400);
        expect(res.body.error?.code, encoding).to.equal('INVALID_BODY');
        expect(res.body.error?.message, encoding).to.match(/^body: /);
      }
    });

    it('keeps names and pks that differ only by a lone surrogate vs U+FFFD apart, end to end', async () => {
      const body = { changes: [site.txn([
        { pk: [1], column: 'c\ud83d', value: 'lone' }, { pk: [1], column: 'c\ufffd', value: 'replacement' },
        { pk: ['p\udc00'], value: 'lone pk' }, { pk: ['p\ufffd'], value: 'replacement pk' },
      ])] };
      await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send(body).expect(200)
        .expect((res) => expect(res.body.data.applied).to.equal(4));
      const res = await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', reader.wire).expect(200);
      const got = (res.body.data.changes as { changes: { pk: unknown[]; column: string; value: unknown }[] }[]).flatMap((s) => s.changes).map((c) => [c.pk, c.column, c.value]);
      expect(got).to.have.deep.members([[[1], 'c\ud83d', 'lone'], [[1], 'c\ufffd', 'replacement'], [['p\udc00'], 'title', 'lone pk'], [['p\ufffd'], 'title', 'replacement pk']]);
    });

    it('reads GET changes query parameters strictly: only an absent sinceHLC means from the beginning', async () => {
      await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ changes: [site.txn([{ pk: [1], value: 'a' }])] }).expect(200);
      // A cursor whose base64 holds a "+": site id byte 2 = f8 puts one at character 16.
      const plusSite = new TestSite(Buffer.from('3f1af8445a0b4e8d9a2e61730cd5ee07', 'hex'));
      const cursor = plusSite.hlc(Date.now() - 3_600_000, 0, 0);
      expect(cursor).to.contain('+');
      const get = (query: string): request.Test => request(server.app).get(`/sync${PATH}/changes${query}`).set('X-Site-Id', reader.wire);
      const cases: [string, number, string, string][] = [
        ['?sinceHLC=', 400, 'INVALID_HLC', 'sinceHLC: empty'],
        ['?sinceHLC', 400, 'INVALID_HLC', 'sinceHLC: empty'],
        [`?sinceHLC=${encodeURIComponent(cursor)}&sinceHLC=${encodeURIComponent(cursor)}`, 400, 'INVALID_HLC', 'more than once'],
        [`?sinceHLC=${cursor}`, 400, 'INVALID_HLC', '%2B'],
        ['?sinceHLC=%ZZ', 400, 'INVALID_HLC', 'percent-encoding'],
        ['?since=AAAA', 400, 'INVALID_MESSAGE', 'query parameter "since"'],
        [`?sinceHLC=${encodeURIComponent(cursor)}&limit=5`, 400, 'INVALID_MESSAGE', 'query parameter "limit"'],
        ['?sinceHLC[]=x', 400, 'INVALID_MESSAGE', 'query parameter "sinceHLC[]"'],
      ];
      for (const [query, status, code, message] of cases) {
        const res = await get(query);
        expect(res.status, query).to.equal(status);
        expect(res.body.error.code, query).to.equal(code);
        expect(res.body.error.message, query).to.contain(message);
      }
      // Percent-encoded, the same cursor is read exactly (the change is newer than it); absent reads everything.
      for (const query of [`?sinceHLC=${encodeURIComponent(cursor)}`, '', '?']) {
        const res = await get(query).expect(200);
        expect(res.body.data.changes, query).to.have.length(1);
      }
    });

    it('answers a known route with a wrong method 405, with Allow listing the right ones', async () => {
      const cases: [string, () => request.Test, string][] = [
        ['/sync/status', () => request(server.app).post('/sync/status'), 'GET, HEAD'],
        ['/sync/metrics', () => request(server.app).delete('/sync/metrics'), 'GET, HEAD'],
        [`/sync${PATH}/changes`, () => request(server.app).put(`/sync${PATH}/changes`).set('X-Site-Id', site.wire), 'GET, HEAD, POST'],
        [`/sync${PATH}/snapshot`, () => request(server.app).post(`/sync${PATH}/snapshot`).set('X-Site-Id', site.wire), 'GET, HEAD'],
      ];
      for (const [path, send, allow] of cases) {
        const res = await send().expect(405);
        expect(res.headers.allow, path).to.equal(allow);
        expect(res.body.error.code, path).to.equal('METHOD_NOT_ALLOWED');
      }
      await request(server.app).post('/sync/nowhere/else/at/all').expect(404);
    });

    it('counts a request without X-Site-Id as an authentication failure', async () => {
      const failures = async (): Promise<number> => {
        const text = (await request(server.app).get('/sync/metrics')).text;
        return Number(/^sync_auth_failures_total (\S+)$/m.exec(text)?.[1] ?? 0);
      };
      const before = await failures();
      await request(server.app).get(`/sync${PATH}/changes`).expect(401);
      expect(await failures()).to.equal(before + 1);
    });

    it('answers 410 SNAPSHOT_REQUIRED for a cursor behind the retention floor', async () => {
      await server.close();
      let now = Date.now();
      server = await startTestServer({ retentionHorizonMs: 1000, now: () => now, sweepIntervalMs: 0 });
      await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ changes: [site.txn([{ pk: [1], value: 'a' }])] }).expect(200);
      const first = await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', reader.wire).expect(200);
      await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ changes: [site.txn([{ pk: [1], delete: true }])] }).expect(200);
      now += 10_000;
      await server.sync.coordinator.sweepOpen();
      const res = await request(server.app).get(`/sync${PATH}/changes`).query({ sinceHLC: first.body.data.changes[0].hlc }).set('X-Site-Id', reader.wire).expect(410);
      expect(res.body.error.code).to.equal('SNAPSHOT_REQUIRED');
    });

    it('answers 413 for a body over maxMessageBytes and stays up', async () => {
      await server.close();
      server = await startTestServer({ maxMessageBytes: 2048 });
      const big = site.txn(Array.from({ length: 40 }, (_, i) => ({ pk: [i], value: 'x'.repeat(100) })));
      const res = await request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).send({ changes: [big] }).expect(413);
      expect(res.body.error.code).to.equal('PAYLOAD_TOO_LARGE');
      await request(server.app).get('/sync/status').expect(200);
    });
  });

  describe('inbound budget (docs/protocol.md §9)', () => {
    it('counts a body until its reply, and makes the next body wait for room before it is read', async () => {
      let openGate!: () => void;
      const gate = new Promise<void>((resolve) => { openGate = resolve; });
      let calls = 0;
      server = await startTestServer({
        maxMessageBytes: 65_536, maxInboundBytes: 65_536,
        hooks: {
          async onBeforeApplyChanges(_identity, changeSets) {
            if (calls++ === 0) await gate;
            return { approved: changeSets };
          },
        },
      });
      const metric = async (name: string): Promise<number> => (await server.sync.registry.getSingleMetric(name)!.get()).values[0]?.value ?? 0;
      const post = (body: string) => request(server.app).post(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).set('Content-Type', 'application/json').send(body).then((res) => res);
      // The first body fills the budget exactly and is held in the hook.
      const first = post(JSON.stringify({ changes: [site.txn([{ pk: [1], value: 'a' }])] }).padEnd(65_536, ' '));
      expect(await eventually(async () => await metric('sync_inbound_bytes') === 65_536)).to.equal(true);
      const second = post(JSON.stringify({ changes: [site.txn([{ pk: [2], value: 'b' }])] }));
      expect(await eventually(async () => await metric('sync_inbound_paused_sockets') === 1)).to.equal(true);
      expect(await metric('sync_inbound_bytes'), 'the waiting body is not counted yet').to.equal(65_536);
      expect(calls, 'the waiting body has not reached the service').to.equal(1);
      openGate();
      const [a, b] = await Promise.all([first, second]);
      expect(a.status).to.equal(200);
      expect(b.body).to.deep.equal({ ok: true, data: { applied: 1, skipped: 0, conflicts: 0, transactions: 1 } });
      expect(await metric('sync_inbound_bytes')).to.equal(0);
      expect(await metric('sync_inbound_paused_sockets')).to.equal(0);
    });
  });

  describe('with token-whitelist auth', () => {
    beforeEach(async () => { server = await startTestServer({ authMode: 'token-whitelist', authTokens: ['s3cret', 'other'] }); });

    it('requires a whitelisted Bearer token', async () => {
      const noToken = await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', reader.wire).expect(401);
      expect(noToken.body.error.code).to.equal('AUTH_FAILED');
      await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', reader.wire).set('Authorization', 'Bearer wrong').expect(401);
      await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', reader.wire).set('Authorization', 'Bearer other').expect(200);
    });

    it('leaves /status and /metrics open without statusTokens, as the README says', async () => {
      await request(server.app).get('/sync/status').expect(200);
      await request(server.app).get('/sync/metrics').expect(200);
    });

    it('closes WebSocket handshakes with a wrong token with 4001', async () => {
      await server.connect(DB, { token: 's3cret' });
      await server.connect(DB, { token: 'nope' }).then(() => expect.fail('should refuse'), (err: Error) => expect(err.message).to.equal('token: not accepted'));
    });
  });

  describe('with statusTokens', () => {
    beforeEach(async () => { server = await startTestServer({ statusTokens: ['scrape-me'] }); });

    it('requires one of them on /status and /metrics, and nowhere else', async () => {
      for (const path of ['/sync/status', '/sync/metrics']) {
        const res = await request(server.app).get(path).expect(401);
        expect(res.body.error.code, path).to.equal('AUTH_FAILED');
        await request(server.app).get(path).set('Authorization', 'Bearer wrong').expect(401);
        await request(server.app).get(path).set('Authorization', 'Bearer scrape-me').expect(200);
      }
      await request(server.app).get(`/sync${PATH}/changes`).set('X-Site-Id', site.wire).expect(200);
    });
  });

  describe('metrics', () => {
    beforeEach(async () => { server = await startTestServer(); });

    it('exposes the named metrics with values that follow the traffic', async () => {
      const a = await server.connect(DB);
      const b = await server.connect(DB);
      const pushed = new Promise((resolve) => b.once('push', resolve));
      await a.apply([new TestSite(Buffer.from(a.options.siteId, 'base64url')).txn([{ pk: [1], value: 'x' }, { pk: [2], value: 'y' }])]);
      await pushed;
      await b.snapshot();
      await request(server.app).get('/sync/status').expect(200);
      const text = (await request(server.app).get('/sync/metrics').expect(200).expect('content-type', /text\/plain/)).text;
      const value = (name: string): number => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1]);
      expect(value('sync_websocket_connections_active')).to.equal(2);
      expect(value('sync_websocket_connections_total')).to.equal(2);
      expect(value('sync_changes_received_total')).to.equal(2);
      expect(value('sync_changes_applied_total')).to.equal(2);
      expect(value('sync_changes_broadcast_total')).to.equal(1);
      expect(value('sync_snapshot_requests_total')).to.equal(1);
      expect(value('sync_snapshot_chunks_total')).to.be.greaterThan(3);
      expect(value('sync_auth_attempts_total')).to.equal(2);
      expect(value('sync_auth_failures_total')).to.equal(0);
      expect(value('sync_apply_changes_duration_seconds_count')).to.equal(1);
      expect(value('sync_change_batch_size_count')).to.equal(1);
      expect(text).to.match(/sync_http_requests_total\{route="\/status",status="200"\} 1/);
      for (const name of ['sync_changes_rejected_total', 'sync_broadcast_errors_total', 'sync_get_changes_duration_seconds_count']) {
        expect(text).to.contain(name);
      }
      await a.close();
      await b.close();
      // The gauge falls back once the sockets are gone.
      for (let i = 0; i < 50 && server.sync.coordinator.hub.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
      const after = (await request(server.app).get('/sync/metrics')).text;
      expect(after).to.match(/^sync_websocket_connections_active 0$/m);
    });

    it('counts databases opened and closed by the pool of open stores (sync_store_opens_total, sync_store_closes_total)', async () => {
      await server.close();
      server = await startTestServer({ maxOpenStores: 2 });
      const read = async (): Promise<{ opens: number; closes: number; open: number }> => {
        const text = (await request(server.app).get('/sync/metrics').expect(200)).text;
        const status = (await request(server.app).get('/sync/status').expect(200)).body.data;
        const value = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
        return { opens: value('sync_store_opens_total'), closes: value('sync_store_closes_total'), open: status.openStores };
      };
      expect(await read()).to.deep.equal({ opens: 0, closes: 0, open: 0 });
      // Five databases through a pool of two: each is opened once, and all
      // but the last two are closed to make room.
      for (const db of ['a', 'b', 'c', 'd', 'e']) {
        const body = { changes: [site.txn([{ pk: [1], value: db }])] };
        await request(server.app).post(`/sync/${db}/changes`).set('X-Site-Id', site.wire).send(body).expect(200);
      }
      expect(await read()).to.deep.equal({ opens: 5, closes: 3, open: 2 });
      // The least recently used one comes back: opened again, one more closed.
      await request(server.app).get('/sync/a/changes').set('X-Site-Id', reader.wire).expect(200);
      expect(await read()).to.deep.equal({ opens: 6, closes: 4, open: 2 });
      // Still open: no churn.
      await request(server.app).get('/sync/a/changes').set('X-Site-Id', reader.wire).expect(200);
      expect(await read()).to.deep.equal({ opens: 6, closes: 4, open: 2 });
    });

    it('keeps two routers in one process apart (own registries)', async () => {
      const second = await startTestServer();
      try {
        await second.connect(DB);
        const text = (await request(server.app).get('/sync/metrics')).text;
        expect(text).to.match(/^sync_websocket_connections_total 0$/m);
      } finally {
        await second.close();
      }
    });
  });
});
