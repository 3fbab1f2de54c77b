/**
 * Takes the README's picture of the status page (docs/dashboard.png): the
 * real CLI on a temp data dir, a load of real applies on four databases, a
 * few refused messages, then a full-page screenshot in headless Chromium.
 *
 *     node --import tsx spec/dashboard/screenshot.ts [out.png] [seconds of load]
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SyncClient } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { startCoordinatorProcess } from '../helpers/coordinator-process.js';
import { launchChromium, startLoad } from '../helpers/dashboard.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const out = resolve(process.argv[2] ?? `${ROOT}docs/dashboard.png`);
const seconds = Number(process.argv[3] ?? 40);

const server = await startCoordinatorProcess();
const browser = await launchChromium();
try {
  const load = await startLoad({ wsUrl: server.wsUrl, databases: ['acme:notes', 'acme:tasks', 'globex:crm', 'initech:tps-reports'] });
  const page = await browser.context.newPage();
  await page.goto(`${server.baseUrl}/dashboard`);
  await new Promise((done) => setTimeout(done, seconds * 500));
  // A few refused messages while the page watches, so that the errors panel has something to show.
  const odd = await SyncClient.connect({ url: server.wsUrl, databaseId: 'acme:notes', siteId: siteIdToWire(randomSiteId()) });
  for (let i = 0; i < 3; i++) await odd.request('error', { type: 'get_changes', sinceHLC: 'not-an-hlc' });
  await odd.request('error', { type: 'no_such_message' });
  await odd.close();
  await new Promise((done) => setTimeout(done, seconds * 500));
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
  await load.stop();
} finally {
  await browser.close();
  await server.cleanup();
}
