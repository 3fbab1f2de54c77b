import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import request from 'supertest';
import { createSyncRouter } from '../../lib/create-sync-router.js';
import { parseOptions } from '../../lib/config/options.js';
import { loadConfig, ConfigError } from '../../lib/config/load-config.js';
import type { DashboardAuthContext } from '../../lib/config/hooks.js';
import type { DashboardSample } from '../../lib/dashboard/sampler.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { openEventStream, type EventStream } from '../helpers/dashboard.js';
import { eventually } from '../helpers/coordinator-process.js';

const VERSION = (JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string }).version;
const ASSETS = ['/dashboard/app.js', '/dashboard/app.css', '/dashboard/uplot.js', '/dashboard/uplot.css'];

describe('dashboard/routes', () => {
  let server: TestServer | undefined;
  const streams: EventStream[] = [];
  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await server?.close();
    server = undefined;
  });
  const events = async (path: string, headers: Record<string, string> = {}): Promise<EventStream> => {
    const stream = await openEventStream(`${server!.baseUrl}${path}`, headers);
    streams.push(stream);
    return stream;
  };

  describe('with dashboardAuth off (the default without auth)', () => {
    beforeEach(async () => { server = await startTestServer(); });

    it('serves a page whose every asset is a relative URL under dashboard/, from this router', async () => {
      const page = await request(server!.app).get('/sync/dashboard').expect(200).expect('content-type', /text\/html/);
      expect(page.headers['content-security-policy']).to.contain("default-src 'none'").and.to.contain("script-src 'self'");
      expect(page.headers['referrer-policy']).to.equal('no-referrer');
      expect(page.headers['cache-control']).to.equal('no-store');
      const urls = [...page.text.matchAll(/(?:href|src)="([^"]+)"/g)].map((m) => m[1]);
      // data:, is the empty icon, which spares the browser a request for /favicon.ico.
      expect(urls).to.deep.equal(['data:,', 'dashboard/uplot.css', 'dashboard/app.css', 'dashboard/uplot.js', 'dashboard/app.js']);
      const types: Record<string, RegExp> = { js: /javascript/, css: /text\/css/ };
      for (const asset of ASSETS) {
        const res = await request(server!.app).get(`/sync${asset}`).expect(200);
        expect(res.headers['content-type'], asset).to.match(types[asset.split('.').pop()!]!);
      }
      const uplot = await request(server!.app).get('/sync/dashboard/uplot.js').expect(200);
      expect(uplot.text).to.match(/^\/\*! https:\/\/github.com\/leeoniya\/uPlot \(v1\./);
    });

    it('redirects .../dashboard/ to the page, relatively, with the query', async () => {
      const res = await request(server!.app).get('/sync/dashboard/?token=abc').expect(302);
      expect(res.headers.location).to.equal('../dashboard?token=abc');
    });

    it('answers other methods with 405', async () => {
      const res = await request(server!.app).post('/sync/dashboard').expect(405);
      expect(res.headers.allow).to.equal('GET, HEAD');
      expect(res.body.error.code).to.equal('METHOD_NOT_ALLOWED');
    });

    it('streams a hello with the fixed facts, then a sample each second with the figures of /status', async () => {
      await server!.connect('acme:notes');
      await server!.connect('acme:notes');
      const stream = await events('/dashboard/events');
      expect(stream.status).to.equal(200);
      expect(stream.headers['content-type']).to.match(/^text\/event-stream/);
      expect(stream.headers['x-accel-buffering']).to.equal('no');
      const hello = await stream.next();
      expect(hello.event).to.equal('hello');
      const { info, series } = JSON.parse(hello.data) as { info: object; series: { at: number[] } };
      expect(info).to.deep.equal({ version: VERSION, archive: false, intervalMs: 1000, windowSeconds: 300 });
      expect(series.at).to.be.an('array');
      const first = await stream.next();
      expect(first.event).to.equal('message');
      const sample = JSON.parse(first.data) as DashboardSample;
      const status = (await request(server!.app).get('/sync/status')).body.data;
      expect(sample.openDatabases).to.equal(status.openStores).and.to.equal(1);
      expect(sample.clients).to.equal(status.connectedClients).and.to.equal(2);
      const second = JSON.parse((await stream.next()).data) as DashboardSample;
      expect(second.point.at).to.be.greaterThan(sample.point.at);
      expect(second.uptimeSeconds).to.be.greaterThan(sample.uptimeSeconds);
    });

    it('keeps sampling for the pages still open, gives a new page the history, and ends every stream on close()', async () => {
      const a = await events('/dashboard/events');
      const b = await events('/dashboard/events');
      await a.next();
      await b.next();
      await a.next();
      a.close();
      await b.next();
      const c = await events('/dashboard/events');
      const hello = JSON.parse((await c.next()).data) as { sample: DashboardSample | null; series: { at: number[] } };
      expect(hello.sample, 'the last sample').to.not.equal(null);
      expect(hello.series.at.length).to.be.greaterThan(0);
      await server!.sync.close();
      await Promise.all([b.ended, c.ended]);
      const late = await request(server!.app).get('/sync/dashboard/events').expect(503);
      expect(late.body.error.code).to.equal('SHUTTING_DOWN');
    });

    it('refuses a 65th open page with 429 and Retry-After, and takes one again once a page closes', async () => {
      const open = await Promise.all(Array.from({ length: 64 }, () => events('/dashboard/events')));
      expect(open.every((stream) => stream.status === 200)).to.equal(true);
      const refused = await request(server!.app).get('/sync/dashboard/events').expect(429);
      expect(refused.body.error.code).to.equal('RATE_LIMITED');
      expect(refused.headers['retry-after']).to.equal('3');
      open[0]!.close();
      // The server learns of the closed page a moment after this side does.
      let again: EventStream | undefined;
      expect(await eventually(async () => {
        const stream = await events('/dashboard/events');
        if (stream.status === 200) again = stream;
        return again !== undefined;
      })).to.equal(true);
      expect((await again!.next()).event).to.equal('hello');
    });
  });

  describe('dashboard: false', () => {
    it('removes every dashboard route (404)', async () => {
      server = await startTestServer({ dashboard: false });
      for (const path of ['/dashboard', '/dashboard/events', ...ASSETS]) {
        const res = await request(server.app).get(`/sync${path}`).expect(404);
        expect(res.body.error.code, path).to.equal('NOT_FOUND');
      }
      await request(server.app).get('/sync/status').expect(200);
    });
  });

  describe("dashboardAuth: 'token'", () => {
    beforeEach(async () => {
      server = await startTestServer({ authMode: 'token-whitelist', authTokens: ['client-token'], statusTokens: ['ops-token'] });
    });

    it('answers 401 AUTH_FAILED without a token or with a wrong one, for the page and its stream', async () => {
      for (const path of ['/sync/dashboard', '/sync/dashboard/events']) {
        const none = await request(server!.app).get(path).expect(401);
        expect(none.body.error).to.deep.equal({ code: 'AUTH_FAILED', message: 'dashboard: token required (?token=<token> or Authorization: Bearer <token>)' });
        expect(none.headers['www-authenticate']).to.match(/^Bearer /);
        const wrong = await request(server!.app).get(`${path}?token=nope`).expect(401);
        expect(wrong.body.error.message).to.equal('dashboard: token not accepted');
        expect(wrong.text).to.not.contain('nope');
      }
    });

    it('lets in a token of authTokens or statusTokens, from ?token= or a Bearer header', async () => {
      await request(server!.app).get('/sync/dashboard?token=client-token').expect(200);
      await request(server!.app).get('/sync/dashboard').set('Authorization', 'Bearer ops-token').expect(200);
      const stream = await events('/dashboard/events?token=ops-token');
      expect(stream.status).to.equal(200);
      expect((await stream.next()).event).to.equal('hello');
    });

    it('serves the assets, which hold no figures, without a token', async () => {
      for (const asset of ASSETS) await request(server!.app).get(`/sync${asset}`).expect(200);
    });
  });

  describe('dashboardAuth as a function', () => {
    it('lets a request through only when it returns true, and refuses with its message when it throws', async () => {
      const seen: DashboardAuthContext[] = [];
      server = await startTestServer({
        dashboardAuth(ctx) {
          seen.push(ctx);
          if (ctx.headers['x-fail'] === '1') throw new Error('no badge');
          return ctx.token === 'letmein';
        },
      });
      await request(server.app).get('/sync/dashboard?token=letmein').expect(200);
      expect(seen[0]).to.deep.include({ token: 'letmein', remoteAddress: '127.0.0.1' });
      const refused = await request(server.app).get('/sync/dashboard').set('Authorization', 'Bearer other').expect(401);
      expect(refused.body.error.message).to.equal('dashboard: refused by dashboardAuth');
      expect(seen[1]!.token).to.equal('other');
      const thrown = await request(server.app).get('/sync/dashboard?token=letmein').set('x-fail', '1').expect(401);
      expect(thrown.body.error.message).to.equal('dashboard: no badge');
    });
  });

  describe('options', () => {
    it('closes the dashboard by default whenever anything else asks for credentials', async () => {
      expect(parseOptions({}).dashboardAuth).to.equal('off');
      expect(parseOptions({ authMode: 'token-whitelist', authTokens: ['t'] }).dashboardAuth).to.equal('token');
      expect(parseOptions({ statusTokens: ['s'] }).dashboardAuth).to.equal('token');
      expect(parseOptions({ hooks: { onAuthenticate: () => ({}) } }).dashboardAuth).to.equal('token');
      expect(parseOptions({ statusTokens: ['s'], dashboardAuth: 'off' }).dashboardAuth).to.equal('off');
      // onAuthenticate alone: no token list to check, so nobody gets in until told how.
      server = await startTestServer({ hooks: { onAuthenticate: () => ({}) } });
      const res = await request(server.app).get('/sync/dashboard?token=x').expect(401);
      expect(res.body.error.message).to.contain('no token can open it');
    });

    it('refuses bad values with a TypeError naming the option and the value', () => {
      expect(() => createSyncRouter({ dashboard: 'yes' as never })).to.throw(TypeError, 'Option "dashboard" must be true or false, got "yes"');
      expect(() => createSyncRouter({ dashboardAuth: 'tokens' as never })).to.throw(TypeError, 'Option "dashboardAuth" must be "off", "token" or a function (ctx) => boolean, got "tokens"');
      expect(() => createSyncRouter({ dashboardAuth: 'token' })).to.throw(TypeError, 'Option "dashboardAuth" is "token", but authTokens and statusTokens are empty');
    });

    it('takes both from a config file\'s router section, checked by the same rules', () => {
      const config = loadConfig({ env: {}, overrides: { router: { dashboard: false, dashboardAuth: 'token', statusTokens: ['s'] } } });
      expect(config.router).to.deep.include({ dashboard: false, dashboardAuth: 'token' });
      expect(() => loadConfig({ env: {}, overrides: { router: { dashboardAuth: 'on' as never } } })).to.throw(ConfigError, 'router.dashboardAuth: expected "off", "token" or a function (ctx) => boolean, got "on"');
    });
  });
});
