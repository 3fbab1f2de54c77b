import { expect } from 'chai';
import { mkdirSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Page } from 'playwright-core';
import { cleanupCoordinatorProcesses, eventually, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { launchChromium, startLoad, type Browser, type Load } from '../helpers/dashboard.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { TestSite } from '../helpers/changes.js';
import { openFsArchive } from '../../lib/durability/fs-archive.js';

/** Git-ignored; the screenshot of each run lands here. */
const ARTIFACTS = fileURLToPath(new URL('../artifacts/', import.meta.url));
const DATABASES = ['acme:notes', 'acme:tasks', 'globex:crm'];
const LISTENERS = 2;

/** The text of an element of the page. */
async function text(page: Page, selector: string): Promise<string> {
  return (await page.textContent(selector))?.trim() ?? '';
}

/** A figure of the page as a number ("1,234" → 1234; "-" → NaN). */
async function figure(page: Page, selector: string): Promise<number> {
  return Number((await text(page, selector)).replace(/,/g, ''));
}

/** Opens the page and waits until its event stream is live; collects what the browser reports as errors. */
async function openPage(browser: Browser, url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.context.newPage();
  const errors: string[] = [];
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()); });
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(url);
  await page.waitForSelector('#state[data-state="live"]');
  return { page, errors };
}

/**
 * A reverse proxy that serves `target` (http://host:port/<mount>) under
 * `prefix` on its own port, streaming both ways (Server-Sent Events pass).
 */
async function startPrefixProxy(target: string, prefix: string): Promise<{ url: string; close(): Promise<void> }> {
  const upstream = new URL(target);
  const server: Server = createServer((req, res) => {
    if (!req.url!.startsWith(`${prefix}/`)) {
      res.writeHead(404).end('not proxied');
      return;
    }
    const forward = request({
      host: upstream.hostname, port: upstream.port, method: req.method, agent: false,
      path: `${upstream.pathname}${req.url!.slice(prefix.length)}`,
      headers: { ...req.headers, host: upstream.host, 'x-forwarded-prefix': prefix },
    }, (answer) => {
      res.writeHead(answer.statusCode!, answer.headers);
      answer.pipe(res);
    });
    forward.on('error', () => res.destroy());
    res.on('close', () => forward.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}${prefix}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/** CPU seconds (user + system) the coordinator process has used: its own process.cpuUsage(), as one scrape of /metrics reports it. */
async function cpuSeconds(server: CoordinatorProcess): Promise<number> {
  const { body } = await server.get('/metrics');
  const value = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(body)?.[1]);
  const total = value('sync_process_cpu_user_seconds_total') + value('sync_process_cpu_system_seconds_total');
  if (!Number.isFinite(total)) throw new Error('no process CPU figures in /metrics');
  return total;
}

/** CPU microseconds per second the coordinator process used over `ms` from now. */
async function cpuRate(server: CoordinatorProcess, ms: number): Promise<number> {
  const start = await cpuSeconds(server);
  await sleep(ms);
  return ((await cpuSeconds(server)) - start) * 1e6 / (ms / 1000);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('dashboard in headless Chromium', function () {
  // A guard against a hang, not a pass mark: the CPU measurement alone waits about 25 s.
  this.timeout(120_000);
  let browser: Browser;
  before(async () => { browser = await launchChromium(); });
  after(async () => { await browser?.close(); });

  describe('on the CLI coordinator under a load of real applies', () => {
    let server: CoordinatorProcess;
    let load: Load;
    before(async () => {
      server = await startCoordinatorProcess();
      load = await startLoad({ wsUrl: server.wsUrl, databases: DATABASES, listenersPerDatabase: LISTENERS });
    });
    after(async () => {
      await load?.stop();
      await cleanupCoordinatorProcesses();
    });

    it('goes live, its charts move, its figures match /status, and it leaves a screenshot', async () => {
      const { page, errors } = await openPage(browser, `${server.baseUrl}/dashboard`);
      const chart = page.locator('#rates-chart');
      expect(await eventually(async () => Number(await chart.getAttribute('data-points')) >= 3 && await figure(page, '#applies-rate') > 0), 'applies shown').to.equal(true);
      const points = Number(await chart.getAttribute('data-points'));
      const before = await chart.locator('canvas').screenshot();
      expect(await eventually(async () => Number(await chart.getAttribute('data-points')) >= points + 2), 'new points').to.equal(true);
      const after = await chart.locator('canvas').screenshot();
      expect(before.equals(after), 'the throughput chart was redrawn with new points').to.equal(false);
      expect(await figure(page, '#pushes-rate')).to.be.greaterThan(0);
      expect(Number(await chart.getAttribute('data-last-applies'))).to.be.greaterThan(0);

      // What a person compares: the page against /status, same moment (both change only when clients come or go).
      const status = JSON.parse((await server.get('/status')).body).data as { openStores: number; connectedClients: number };
      expect(status).to.include({ openStores: DATABASES.length, connectedClients: load.clients });
      expect(await eventually(async () => await figure(page, '#open-databases') === status.openStores && await figure(page, '#clients') === status.connectedClients)).to.equal(true);

      const rows = await page.locator('#databases tbody tr').allTextContents();
      expect(rows).to.have.length(DATABASES.length);
      expect(await text(page, '#databases tbody tr:first-child td:first-child')).to.equal(DATABASES[0]);
      expect(await figure(page, '#databases tbody tr:first-child td:nth-child(2)')).to.equal(LISTENERS + 1);
      expect(await eventually(async () => /KiB|MiB/.test(await text(page, '#databases tbody tr:first-child td:nth-child(4)'))), 'size on disk').to.equal(true);
      expect(await figure(page, '#latency-apply td:nth-child(5)')).to.be.greaterThan(0);
      expect(await figure(page, '#latency-push td:nth-child(5)')).to.be.greaterThan(0);
      expect(await text(page, '#version')).to.match(/^v\d+\.\d+\.\d+/);
      expect(await text(page, '#node')).to.equal('single node');
      expect(await page.locator('#archive-panel').isHidden()).to.equal(true);

      mkdirSync(ARTIFACTS, { recursive: true });
      const shot = join(ARTIFACTS, 'dashboard.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`      screenshot: ${shot}`);
      expect(errors, 'console errors (a CSP violation shows here)').to.deep.equal([]);
      await page.close();
    });

    it('weighs less than 200 KB of HTML, JavaScript and CSS', async () => {
      const page = await browser.context.newPage();
      const sizes = new Map<string, number>();
      page.on('response', async (response) => {
        const type = response.request().resourceType();
        if (type === 'document' || type === 'script' || type === 'stylesheet') sizes.set(response.url(), (await response.body()).length);
      });
      await page.goto(`${server.baseUrl}/dashboard`);
      await page.waitForSelector('#state[data-state="live"]');
      await eventually(() => sizes.size === 5);
      const total = [...sizes.values()].reduce((a, b) => a + b, 0);
      console.log(`      page weight: ${(total / 1024).toFixed(1)} KiB in ${sizes.size} files (${[...sizes].map(([url, n]) => `${url.split('/').pop()} ${(n / 1024).toFixed(1)}`).join(', ')})`);
      expect([...sizes.keys()].map((url) => new URL(url).pathname).sort()).to.deep.equal(
        ['/sync/dashboard', '/sync/dashboard/app.css', '/sync/dashboard/app.js', '/sync/dashboard/uplot.css', '/sync/dashboard/uplot.js'],
      );
      expect(total).to.be.below(200 * 1024);
      await page.close();
    });

    it('costs the server under 1% of a CPU while open on an idle server', async () => {
      await load.pause();
      // LevelDB may still compact what the load wrote (its threads count in the process's CPU).
      await sleep(5000);
      // Noise only ever adds CPU time, so the quietest of three windows is each case's figure.
      const without: number[] = [];
      const open: number[] = [];
      for (let round = 0; round < 3; round++) {
        without.push(await cpuRate(server, 2500));
        const { page } = await openPage(browser, `${server.baseUrl}/dashboard`);
        await sleep(1000);
        open.push(await cpuRate(server, 2500));
        await page.close();
        await sleep(500);
      }
      const cost = Math.min(...open) - Math.min(...without);
      const shown = (list: number[]): string => list.map((n) => n.toFixed(0)).join(', ');
      console.log(`      server CPU while idle, µs per second: without the page ${shown(without)}; with it open ${shown(open)}; difference (the page's cost, within the noise) ${(cost / 1e4).toFixed(3)}% of one core`);
      // CPU time, not wall time: 1% of a core is 10,000 µs each second.
      expect(cost).to.be.below(10_000);
    });

    it('works behind a reverse proxy that serves it under another path', async () => {
      const proxy = await startPrefixProxy(server.baseUrl, '/ops/coordinator');
      try {
        const seen: string[] = [];
        const page = await browser.context.newPage();
        page.on('request', (req) => seen.push(req.url()));
        // With a trailing slash: the relative redirect lands on the page under the proxy's path.
        await page.goto(`${proxy.url}/dashboard/`);
        await page.waitForSelector('#state[data-state="live"]');
        expect(new URL(page.url()).pathname).to.equal('/ops/coordinator/dashboard');
        expect(await eventually(async () => await figure(page, '#clients') === load.clients)).to.equal(true);
        expect(seen.length).to.be.at.least(6);
        for (const url of seen) expect(url.startsWith(`${proxy.url}/dashboard`), url).to.equal(true);
        await page.close();
      } finally {
        await proxy.close();
      }
    });
  });

  describe('panels, auth and the switch', () => {
    let server: TestServer | undefined;
    afterEach(async () => {
      await server?.close();
      server = undefined;
    });

    it('shows the archive and cluster sections of /status on a cluster node with an archive', async () => {
      const redis: RedisTestServer = await startRedisServer();
      const archiveDir = await makeTempDir('dashboard-archive-');
      try {
        server = await startTestServer({ archive: await openFsArchive(archiveDir), redis: redis.url, nodeId: 'node-a' });
        const client = await server.connect('acme:notes');
        await client.apply([new TestSite().txn([{ pk: [1], value: 'a' }])]);
        const { page, errors } = await openPage(browser, `${server.baseUrl}/dashboard`);
        expect(await text(page, '#node')).to.equal('node node-a');
        expect(await page.locator('#archive-panel').isVisible()).to.equal(true);
        expect(await page.locator('#cluster-panel').isVisible()).to.equal(true);
        const status = JSON.parse((await (await fetch(`${server.baseUrl}/status`)).text())).data as { archive: { mode: string }; cluster: { node: string } };
        expect(await text(page, '#archive-mode')).to.equal(status.archive.mode).and.to.equal('async');
        expect(await text(page, '#cluster-node')).to.equal(status.cluster.node).and.to.equal('node-a');
        expect(await eventually(async () => await text(page, '#cluster-databases tbody td:first-child') === 'acme:notes')).to.equal(true);
        expect(await eventually(async () => await text(page, '#cluster-broken') === '0')).to.equal(true);
        expect(errors).to.deep.equal([]);
        await page.close();
        await server.close();
        server = undefined;
      } finally {
        await redis.close();
        await removeTempDir(archiveDir);
      }
    });

    it('answers 401 without a token when auth is on, and shows the page with ?token=', async () => {
      server = await startTestServer({ authMode: 'token-whitelist', authTokens: ['s3cret'] });
      const page = await browser.context.newPage();
      const refused = await page.goto(`${server.baseUrl}/dashboard`);
      expect(refused!.status()).to.equal(401);
      expect(await page.textContent('body')).to.contain('AUTH_FAILED');
      const shown = await page.goto(`${server.baseUrl}/dashboard?token=s3cret`);
      expect(shown!.status()).to.equal(200);
      await page.waitForSelector('#state[data-state="live"]');
      expect(await eventually(async () => await figure(page, '#open-databases') === 0)).to.equal(true);
      await page.close();
    });

    it('is not there with dashboard: false (404)', async () => {
      server = await startTestServer({ dashboard: false });
      const page = await browser.context.newPage();
      const res = await page.goto(`${server.baseUrl}/dashboard`);
      expect(res!.status()).to.equal(404);
      await page.close();
    });
  });
});
