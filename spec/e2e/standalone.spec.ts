import { expect } from 'chai';
import WebSocket from 'ws';
import { createCoordinatorServer, type CoordinatorServer } from '../../lib/create-coordinator-server.js';
import { SyncClient } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

describe('create-coordinator-server', () => {
  let dir: string;
  let server: CoordinatorServer;
  let url: string;
  before(async () => {
    dir = await makeTempDir('standalone-');
    server = createCoordinatorServer({ config: { host: '127.0.0.1', port: 0, dataDir: dir } });
    url = (await server.start()).url;
  });
  after(async () => {
    await server.stop();
    await removeTempDir(dir);
  });

  it('serves HTTP and WebSocket under the base path and answers 404 JSON elsewhere', async () => {
    expect((await (await fetch(`${url}/status`)).json() as { ok: boolean }).ok).to.equal(true);
    const res = await fetch(url.replace(/\/sync$/, '/elsewhere'));
    expect(res.status).to.equal(404);
    expect((await res.json() as { error: { code: string } }).error.code).to.equal('NOT_FOUND');
    const client = await SyncClient.connect({ url: `${url.replace(/^http/, 'ws')}/ws`, databaseId: 'db', siteId: siteIdToWire(randomSiteId()) });
    await client.ping();
    await client.close();
  });

  it('refuses WebSocket upgrades for other paths at once with 404', async () => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws').replace(/\/sync$/, '')}/chat`);
    const status = await new Promise<string>((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(`${res.statusCode} ${res.statusMessage}`));
      ws.on('error', () => undefined);
    });
    expect(status).to.equal('404 Not Found');
    ws.terminate();
  });
});
