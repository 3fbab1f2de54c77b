/**
 * Child process of spec/helpers/s3-coordinator-process.ts: a standalone
 * coordinator (createCoordinatorServer, as the CLI builds it) with router
 * options the CLI cannot take from a config file, such as `s3`. Its one
 * argument is JSON `{ "dataDir": string, "router": { ...router options } }`.
 *
 * It listens on 127.0.0.1, port 0, prints the CLI's listening line
 * (`sync-coordinator listening on http://...`), and shuts down gracefully on
 * SIGTERM or SIGINT, or when its stdin closes (the parent went away), then
 * exits 0 (1 when the shutdown failed).
 */
import { createCoordinatorServer } from '../../lib/create-coordinator-server.js';
import type { CoordinatorConfig } from '../../lib/config/options.js';

interface MainConfig { dataDir: string; router?: CoordinatorConfig['router'] }

const config = JSON.parse(process.argv[2] ?? '') as MainConfig;
if (typeof config.dataDir !== 'string') throw new TypeError('s3-coordinator-main: argument must be JSON { dataDir, router }');
const server = createCoordinatorServer({ config: { host: '127.0.0.1', port: 0, dataDir: config.dataDir, router: config.router } });
const started = server.start();

let stopping = false;
function shutdown(): void {
  if (stopping) return;
  stopping = true;
  started
    .catch(() => undefined)
    .then(() => server.stop())
    .then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`s3-coordinator-main: shutdown failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('close', shutdown);
process.stdin.resume();

const { url } = await started;
process.stdout.write(`sync-coordinator listening on ${url}\n`);
