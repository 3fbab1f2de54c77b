/**
 * The package as a consumer gets it: `npm pack`, unpacked into a fresh
 * project's node_modules beside ONLY what npm would install for it (its
 * `dependencies`) and what an Express app in TypeScript has anyway
 * (typescript, @types/node, express, @types/express). A strict tsconfig
 * without skipLibCheck then checks every .d.ts the package ships, so a
 * public declaration that imports types from a package without its own
 * types and without its @types in our dependencies fails here (TS7016).
 * No network: every package is a symlink into this repo's node_modules.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rename, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, cleanEnv, npmBinary, ROOT } from '../cli/harness.js';

interface PackageJson {
  name: string;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}

/** What a consumer Express app written in TypeScript installs itself. */
const CONSUMER_OWN = ['typescript', '@types/node', 'express', '@types/express'];

function run(command: string, args: string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd, env: cleanEnv({ npm_config_offline: 'true', npm_config_update_notifier: 'false', npm_config_audit: 'false', npm_config_fund: 'false' }), maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, output: `${stdout}${stderr}` });
    });
  });
}

/** Links `name` from this repo's node_modules, as npm would hoist it to the consumer's. */
async function linkPackage(consumer: string, name: string): Promise<void> {
  const target = join(ROOT, 'node_modules', name);
  expect(existsSync(target), `${name} in this repo's node_modules`).to.equal(true);
  const link = join(consumer, 'node_modules', name);
  if (existsSync(link)) return;
  await mkdir(dirname(link), { recursive: true });
  await symlink(target, link, 'dir');
}

/** A consumer that uses the public API the way the README shows, with typed hooks. */
const GOOD_ESM = `
import { createServer } from 'node:http';
import express from 'express';
import {
  createSyncRouter, createCoordinatorServer, loadConfig, SyncClient, SyncError,
  type ChangeSet, type CoordinatorHooks, type SyncRouter,
} from '@quereus/sync-coordinator';

const hooks: CoordinatorHooks<{ userId: string }> = {
  onAuthenticate: ({ token }) => (token ? { userId: token } : null),
  onAuthorize: (identity, operation) => identity.userId.length > 0 && operation.action !== 'get_snapshot',
  onBeforeApplyChanges: (identity, changeSets) => ({ approved: identity.userId === 'reader' ? [] : changeSets }),
  onAfterApplyChanges: (identity, result) => { console.log(identity.userId.toUpperCase(), result.applied); },
  onClientConnect: (identity, client) => identity.userId !== client.siteId,
  onClientDisconnect: (identity, client) => { console.log(identity.userId, client.connectionId); },
};

const app = express();
const sync: SyncRouter = createSyncRouter({ path: '/api/sync', dataDir: './.data', hooks });
app.use(sync.path, sync);
app.use(express.json());
app.get('/api/hello', (_req, res) => { res.json({ hello: 'world' }); });
const server = createServer(app);
sync.attach(server);
const mountedAt: string = sync.path;

// The identity type is inferred from onAuthenticate.
const inferred = createSyncRouter({
  hooks: { onAuthenticate: () => ({ userId: 'u' }), onAuthorize: (identity) => identity.userId === 'u' },
});
app.use(inferred.path, inferred);

const config = loadConfig({ env: {}, overrides: { port: 0, basePath: '/sync' } });
const standalone = createCoordinatorServer({ config, hooks });
const { url } = await standalone.start();
standalone.app.get('/health', (_req, res) => { res.send('ok'); });
const client = await SyncClient.connect({ url: url.replace(/^http/, 'ws') + '/ws', databaseId: 'db', siteId: 'AAAAAAAAAAAAAAAAAAAAAA' });
client.on('push', (changes: ChangeSet[]) => console.log(changes.length));
try {
  await client.apply([]);
} catch (err) {
  if (err instanceof SyncError) console.log(err.code);
}
await client.close();
await standalone.stop();
await Promise.all([sync.close(), inferred.close()]);
server.close();
console.log(mountedAt);
`;

/** The same package from CommonJS TypeScript (TypeScript 5.8+ types require() of ESM under NodeNext, as Node >= 20.19 runs it). */
const GOOD_CJS = `
import sync = require('@quereus/sync-coordinator');
const router: sync.SyncRouter = sync.createSyncRouter({ path: '/sync' });
const path: string = router.path;
export = path;
`;

/** A consumer with one deliberate mistake: a typo in a field of the inferred identity. */
const BAD_ESM = `
import { createSyncRouter } from '@quereus/sync-coordinator';

export const sync = createSyncRouter({
  hooks: { onAuthenticate: () => ({ userId: 'u' }), onAuthorize: (identity) => identity.userID === 'u' },
});
`;

function tsconfig(files: string[]): string {
  return JSON.stringify({
    compilerOptions: {
      strict: true,
      module: 'NodeNext',
      moduleResolution: 'NodeNext',
      target: 'ES2022',
      lib: ['ES2022'],
      noEmit: true,
    },
    files,
  }, null, 2);
}

describe('package: a strict TypeScript consumer of the packed tarball', function () {
  this.timeout(60_000);
  let dir: string;
  let consumer: string;
  let installed: PackageJson;

  before(async function packAndInstall() {
    this.timeout(180_000);
    await buildOnce();
    dir = await makeTempDir('consumer-');
    // --ignore-scripts: built already; `prepare` would run tsc again.
    const packed = await run(npmBinary('npm'), ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], ROOT);
    expect(packed.code, packed.output).to.equal(0);
    const tarball = join(dir, (JSON.parse(packed.output.slice(packed.output.indexOf('['))) as { filename: string }[])[0]!.filename);
    const unpacked = await run('tar', ['-xzf', tarball, '-C', dir], dir);
    expect(unpacked.code, unpacked.output).to.equal(0);

    consumer = join(dir, 'app');
    installed = JSON.parse(readFileSync(join(dir, 'package', 'package.json'), 'utf8')) as PackageJson;
    const home = join(consumer, 'node_modules', installed.name);
    await mkdir(dirname(home), { recursive: true });
    await rename(join(dir, 'package'), home);
    // Symlinks resolve to their real path in this repo's node_modules, where
    // each dependency's own dependencies are installed: the package's
    // declarations and the consumer's files see only what is linked here.
    for (const name of [...Object.keys(installed.dependencies ?? {}), ...CONSUMER_OWN]) await linkPackage(consumer, name);

    await writeFile(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    await writeFile(join(consumer, 'good.ts'), GOOD_ESM);
    await writeFile(join(consumer, 'good.cts'), GOOD_CJS);
    await writeFile(join(consumer, 'bad.ts'), BAD_ESM);
    await writeFile(join(consumer, 'tsconfig.json'), tsconfig(['good.ts', 'good.cts']));
    await writeFile(join(consumer, 'tsconfig.bad.json'), tsconfig(['bad.ts']));
  });

  after(async () => {
    if (dir) await removeTempDir(dir);
  });

  const tsc = (project: string): Promise<{ code: number; output: string }> =>
    run(process.execPath, [join(consumer, 'node_modules/typescript/bin/tsc'), '-p', project], consumer);

  it('is given no @types package it does not depend on', async () => {
    const types = await readdir(join(consumer, 'node_modules', '@types'));
    const ours = Object.keys(installed.dependencies ?? {}).filter((name) => name.startsWith('@types/')).map((name) => name.slice('@types/'.length));
    expect(types.sort()).to.deep.equal([...new Set([...ours, 'node', 'express'])].sort());
  });

  it('type-checks with strict and without skipLibCheck: every shipped declaration resolves', async () => {
    const result = await tsc('tsconfig.json');
    expect(result.output).to.equal('');
    expect(result.code).to.equal(0);
  });

  it('fails on a type error in the consumer (the identity type is inferred from onAuthenticate)', async () => {
    const result = await tsc('tsconfig.bad.json');
    expect(result.code).not.to.equal(0);
    expect(result.output).to.match(/^bad\.ts\(\d+,\d+\): error TS2551: Property 'userID' does not exist on type '\{ userId: string; \}'\. Did you mean 'userId'\?/m);
    expect(result.output.trim().split('\n').filter((line) => line.includes('error TS')), 'errors besides the deliberate one').to.have.length(1);
  });

  it('can be require()d from CommonJS and runs with only its dependencies installed', async () => {
    await writeFile(join(consumer, 'main.cjs'), [
      `const { createSyncRouter } = require(${JSON.stringify(installed.name)});`,
      `const sync = createSyncRouter({ path: '/api/sync', dataDir: ${JSON.stringify(join(dir, 'data'))} });`,
      `console.log(typeof sync, sync.path, typeof sync.attach);`,
      `sync.close().then(() => console.log('closed'));`,
    ].join('\n'));
    const result = await run(process.execPath, ['main.cjs'], consumer);
    expect(result.code, result.output).to.equal(0);
    expect(result.output).to.match(/^function \/api\/sync function\n/m);
    expect(result.output).to.match(/^closed$/m);
  });
});
