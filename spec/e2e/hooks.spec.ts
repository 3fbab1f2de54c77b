import { expect } from 'chai';
import request from 'supertest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { SyncClient, SyncClientError } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import type { CoordinatorHooks, Operation } from '../../lib/config/hooks.js';
import type { ErrorMessage } from '../../lib/protocol/messages.js';

const DB = 'hooks-db';

describe('hooks', () => {
  let server: TestServer;
  afterEach(() => server?.close());

  async function withHooks(hooks: CoordinatorHooks): Promise<TestServer> {
    server = await startTestServer({ hooks });
    return server;
  }

  it('onAuthenticate: its return value is the identity; throwing refuses with its message (4001 / 401)', async () => {
    const seen: unknown[] = [];
    await withHooks({
      onAuthenticate(ctx) {
        if (ctx.token !== 'letmein') throw new Error(`unknown token ${ctx.token ?? '(none)'}`);
        return { user: 'ann', transport: ctx.transport };
      },
      onAuthorize(identity) { seen.push(identity); return true; },
    });
    await server.connect(DB, { token: 'letmein' });
    expect(seen).to.deep.equal([{ user: 'ann', transport: 'websocket' }]);
    const client = await SyncClient.open({ url: server.wsUrl, databaseId: DB, siteId: siteIdToWire(randomSiteId()), token: 'nope' });
    const err = client.expect('error');
    client.send({ type: 'handshake', databaseId: DB, siteId: client.options.siteId, token: 'nope', protocolVersion: 1 });
    expect(await err).to.deep.include({ code: 'AUTH_FAILED', message: 'unknown token nope', fatal: true });
    expect(await client.closed()).to.equal(4001);
    const res = await request(server.app).get(`/sync/${DB}/changes`).set('X-Site-Id', siteIdToWire(randomSiteId())).set('Authorization', 'Bearer nope').expect(401);
    expect(res.body.error.message).to.equal('unknown token nope');
    await request(server.app).get('/sync/status').expect(200);
  });

  it('onAuthorize: false refuses one operation with FORBIDDEN and keeps the session', async () => {
    const ops: Operation['action'][] = [];
    await withHooks({
      onAuthenticate: (ctx) => ({ role: ctx.token }),
      onAuthorize(identity, op) {
        ops.push(op.action);
        return (identity as { role: string }).role === 'writer' || op.action !== 'apply_changes';
      },
    });
    const readerClient = await server.connect(DB, { token: 'reader' });
    const site = new TestSite(Buffer.from(readerClient.options.siteId, 'base64url'));
    await readerClient.apply([site.txn([{ pk: [1], value: 'x' }])]).then(
      () => expect.fail('should refuse'), (err: SyncClientError) => expect(err).to.include({ code: 'FORBIDDEN', fatal: false }));
    await readerClient.ping();
    expect((await readerClient.getChanges()).changeSets).to.deep.equal([]);
    const writer = await server.connect(DB, { token: 'writer' });
    expect(await writer.apply([new TestSite(Buffer.from(writer.options.siteId, 'base64url')).txn([{ pk: [1], value: 'x' }])])).to.include({ applied: 1 });
    expect(ops).to.include.members(['connect', 'apply_changes', 'get_changes']);
    const res = await request(server.app).post(`/sync/${DB}/changes`).set('X-Site-Id', site.wire).set('Authorization', 'Bearer reader')
      .send({ changes: [site.txn([{ pk: [2], value: 'y' }])] }).expect(403);
    expect(res.body.error.code).to.equal('FORBIDDEN');
  });

  it('onBeforeApplyChanges: rejections come back in apply_result.rejected and only approved changes are stored', async () => {
    await withHooks({
      onBeforeApplyChanges(_identity, changeSets) {
        const rejected: { reason: string; code: string; table: string }[] = [];
        const approved = changeSets.map((set) => ({
          ...set,
          changes: set.changes.filter((c) => {
            if (c.table !== 'secrets') return true;
            rejected.push({ reason: 'secrets is read-only', code: 'PROTECTED_TABLE', table: c.table });
            return false;
          }),
        }));
        return { approved, rejected };
      },
    });
    const a = await server.connect(DB);
    const site = new TestSite(Buffer.from(a.options.siteId, 'base64url'));
    const result = await a.apply([site.txn([{ pk: [1], value: 'ok' }, { table: 'secrets', pk: [1], value: 'no' }])]);
    expect(result).to.deep.include({ applied: 1, rejected: [{ reason: 'secrets is read-only', code: 'PROTECTED_TABLE', table: 'secrets' }] });
    const reader = await server.connect(DB);
    const tables = (await reader.getChanges()).changeSets.flatMap((s) => s.changes.map((c) => c.table));
    expect(tables).to.deep.equal(['notes']);
  });

  it('onBeforeApplyChanges: throwing refuses the message; returning junk is an error; the session survives', async () => {
    let mode = 'throw';
    await withHooks({
      onBeforeApplyChanges(_identity, changeSets) {
        if (mode === 'throw') throw new Error('quota exceeded');
        if (mode === 'junk') return { approved: [{ nope: true }] as never };
        return { approved: changeSets };
      },
    });
    const a = await server.connect(DB);
    const site = new TestSite(Buffer.from(a.options.siteId, 'base64url'));
    await a.apply([site.txn([{ pk: [1], value: 'x' }])]).then(() => expect.fail(), (err: SyncClientError) => expect(err.message).to.equal('quota exceeded'));
    mode = 'junk';
    await a.apply([site.txn([{ pk: [1], value: 'x' }])]).then(() => expect.fail(), (err: SyncClientError) => expect(err.code).to.equal('APPLY_CHANGES_ERROR'));
    mode = 'pass';
    expect(await a.apply([site.txn([{ pk: [1], value: 'x' }])])).to.include({ applied: 1 });
  });

  it('onAfterApplyChanges sees the result; its failure does not undo or fail the apply', async () => {
    const results: unknown[] = [];
    await withHooks({
      onAfterApplyChanges(_identity, result, accepted) {
        results.push({ applied: result.applied, sets: accepted.length });
        throw new Error('audit sink down');
      },
    });
    const a = await server.connect(DB);
    expect(await a.apply([new TestSite(Buffer.from(a.options.siteId, 'base64url')).txn([{ pk: [1], value: 'x' }])])).to.include({ applied: 1 });
    expect(results).to.deep.equal([{ applied: 1, sets: 1 }]);
  });

  it('onClientConnect false refuses the socket; onClientDisconnect runs when it leaves', async () => {
    const events: string[] = [];
    let left!: () => void;
    const gone = new Promise<void>((resolve) => { left = resolve; });
    await withHooks({
      onClientConnect(_identity, client) {
        events.push(`connect ${client.databaseId}`);
        return client.databaseId !== 'closed-db';
      },
      onClientDisconnect(_identity, client) {
        events.push(`disconnect ${client.databaseId}`);
        left();
      },
    });
    const refused = await SyncClient.open({ url: server.wsUrl, databaseId: 'closed-db', siteId: siteIdToWire(randomSiteId()) });
    const err = refused.expect('error');
    refused.send({ type: 'handshake', databaseId: 'closed-db', siteId: refused.options.siteId, protocolVersion: 1 });
    expect((await err as ErrorMessage).fatal).to.equal(true);
    expect(await refused.closed()).to.equal(4001);
    const ok = await server.connect(DB);
    await ok.close();
    await gone;
    expect(events).to.deep.equal(['connect closed-db', `connect ${DB}`, `disconnect ${DB}`]);
  });
});
