/**
 * The standalone coordinator with a fixed list of accepted tokens. Clients
 * send one as `token` in the WebSocket handshake or as `Authorization:
 * Bearer <token>` over HTTP.
 *
 *     TOKENS=alpha,beta node --import tsx examples/standalone-token-auth.ts
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCoordinatorServer } from '../lib/index.js';

const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? '127.0.0.1';
// Without DATA_DIR the data is throwaway, so a demo run leaves nothing behind.
const dataDir = process.env.DATA_DIR ?? await mkdtemp(join(tmpdir(), 'sync-example-'));
// Never ship the default: anyone reading this file knows it.
const authTokens = (process.env.TOKENS ?? 'demo-token').split(',').map((t) => t.trim()).filter((t) => t !== '');

const coordinator = createCoordinatorServer({
  config: { authMode: 'token-whitelist', authTokens, port, host, dataDir },
});

const { url } = await coordinator.start();
console.log(`listening on ${url}`);

async function shutdown(): Promise<void> {
  await coordinator.stop();
  if (!process.env.DATA_DIR) await rm(dataDir, { recursive: true, force: true });
}

// `once`: a second Ctrl-C during a stuck shutdown falls back to the default, killing the process.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    shutdown().then(
      () => process.exit(0),
      (err) => { console.error(err); process.exit(1); },
    );
  });
}
