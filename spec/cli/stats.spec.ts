import { readFileSync } from 'node:fs';
/**
 * `sync-coordinator stats`: the built CLI as a child process, asking real
 * coordinator processes (one alone; one in a cluster on a real
 * redis-server, archiving to s3rver) and servers that are not coordinators.
 * What it prints is compared with `/status` and `/metrics` read by the test.
 */
import { expect } from 'chai';
import { writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { ServerStats, ServerStatus } from '../../lib/admin/server-stats.js';
import { TestSite } from '../helpers/changes.js';
import { cleanupCoordinatorProcesses, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, lines, runToEnd, Runs } from './harness.js';

const DB = 'acme:notes';
const TOKEN = 'status-secret-0123';

async function status(proc: CoordinatorProcess, headers: Record<string, string> = {}): Promise<ServerStatus> {
  const res = await proc.get('/status', headers);
  expect(res.status, res.body).to.equal(200);
  return (JSON.parse(res.body) as { data: ServerStatus }).data;
}

/** Writes `messages` messages of `perMessage` column changes each over HTTP; resolves with the changes sent. */
async function write(proc: CoordinatorProcess, messages: number, perMessage: number): Promise<number> {
  const site = new TestSite();
  for (let m = 0; m < messages; m++) {
    const changes = Array.from({ length: perMessage }, (_, i) => ({ pk: [m * perMessage + i], value: `v${m}.${i}` }));
    const res = await proc.post(`/${DB}/changes`, JSON.stringify({ changes: [site.txn(changes)] }), { 'x-site-id': site.wire });
    expect(res.status, res.body).to.equal(200);
  }
  return messages * perMessage;
}

/** A port nothing listens on (taken, then released). */
async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('cli stats', function () {
  this.timeout(120_000);
  const runs = new Runs();
  let cwd: string;

  before(async function () {
    this.timeout(180_000);
    await buildOnce();
  });

  beforeEach(async () => {
    cwd = await makeTempDir('cli-stats-');
  });

  afterEach(async () => {
    await runs.cleanup();
    await removeTempDir(cwd);
  });

  after(async () => {
    await cleanupCoordinatorProcesses();
  });

  function stats(args: string[], env?: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return runToEnd(runs, ['stats', ...args], { cwd, ...(env ? { env } : {}) });
  }

  describe('against a running server', () => {
    let proc: CoordinatorProcess;
    let client: RawSocket;
    let written: number;

    before(async () => {
      proc = await startCoordinatorProcess();
      written = await write(proc, 3, 4);
      ({ socket: client } = await RawSocket.handshake(proc.wsUrl, DB, new TestSite().wire));
    });

    after(async () => {
      await client?.close();
      await proc?.cleanup();
    });

    it("prints the server's uptime, version, node, open databases, clients and traffic", async () => {
      const before = await status(proc);
      const result = await stats(['--url', proc.baseUrl]);
      const after = await status(proc);
      expect(result.code, result.stderr).to.equal(0);
      expect(result.stderr).to.equal('');
      const out = lines(result.stdout);
      expect(out[0]).to.match(new RegExp(`^sync coordinator at ${proc.baseUrl.replace(/[.]/g, '\\.')} \\(\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\)$`));
      const uptime = /^ {2}uptime {10}(\d+) s \(since (\S+)\)$/.exec(out[1]!);
      expect(uptime, out[1]).to.not.equal(null);
      expect(Number(uptime![1])).to.be.within(Math.floor(before.uptime), Math.floor(after.uptime));
      expect(out.slice(2, 6)).to.deep.equal([
        `  version         ${(JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version}, on Node.js ${process.version}`,
        '  node            single node (no cluster)',
        `  open databases  ${after.openStores}`,
        `  clients         ${after.connectedClients}`,
      ]);
      expect(after.openStores).to.equal(1);
      expect(after.connectedClients).to.equal(1);
      expect(out).to.include(`  changes       ${written} received, ${written} applied, 0 rejected, 0 change sets pushed`);
      expect(out).to.include('  connections   1');
      expect(out.some((line) => /^ {2}apply {9}3 messages, [\d.]+ ms each on average$/.test(line)), out.join('\n')).to.equal(true);
      expect(out.some((line) => /^ {2}memory {10}[\d.]+ MiB resident, [\d.]+ MiB heap used$/.test(line)), out.join('\n')).to.equal(true);
      expect(out.join('\n')).not.to.match(/^archive|^cluster/m);
    });

    it('prints /status as fetched and the figures of /metrics with --json', async () => {
      const before = await status(proc);
      const result = await stats(['--url', `${proc.baseUrl}/`, '--json']);
      const after = await status(proc);
      expect(result.code, result.stderr).to.equal(0);
      const json = JSON.parse(result.stdout) as ServerStats;
      expect(json.url).to.equal(proc.baseUrl);
      expect(json.status.uptime).to.be.within(before.uptime, after.uptime);
      expect({ ...json.status, uptime: 0 }).to.deep.equal({ ...after, uptime: 0 });
      expect(json.metrics).to.include({ nodeVersion: process.version, changesReceived: written, changesApplied: written, changesRejected: 0, applyMessages: 3, connectionsTotal: 1 });
      expect(json.metrics!.residentMemoryBytes).to.be.above(10 * 1024 * 1024);
      expect(json.metrics!.processStartedAt).to.be.a('number');
      expect(json).not.to.have.property('metricsError');
    });
  });

  describe('with statusTokens', () => {
    let proc: CoordinatorProcess;

    before(async () => {
      proc = await startCoordinatorProcess({ router: { statusTokens: [TOKEN] } });
    });

    after(async () => {
      await proc?.cleanup();
    });

    it('fails with one line saying a token is needed, or was not accepted, never printing it', async () => {
      const without = await stats(['--url', proc.baseUrl]);
      expect(without.code).to.equal(1);
      // The middle is the server's own message, passed on.
      expect(lines(without.stderr)).to.have.length(1);
      expect(without.stderr).to.match(new RegExp(`^sync-coordinator stats: ${escapeRegExp(proc.baseUrl)}/status answered 401 AUTH_FAILED: .*Bearer token required.*; pass one of the server's statusTokens with --token\n$`));
      const wrong = await stats(['--url', proc.baseUrl, '--token', 'not-the-token']);
      expect(wrong.code).to.equal(1);
      expect(lines(wrong.stderr)).to.have.length(1);
      expect(wrong.stderr).to.match(new RegExp(`^sync-coordinator stats: ${escapeRegExp(proc.baseUrl)}/status answered 401 AUTH_FAILED: .*token not accepted.*; the token given was not accepted\n$`));
      expect(wrong.stderr).not.to.include('not-the-token');
      const right = await stats(['--url', proc.baseUrl, '--token', TOKEN, '--json']);
      expect(right.code, right.stderr).to.equal(0);
      expect((JSON.parse(right.stdout) as ServerStats).metrics?.nodeVersion).to.equal(process.version);
    });

    it('takes the URL and the token from the config file the server would read', async () => {
      const { port, pathname } = new URL(proc.baseUrl);
      await writeFile(join(cwd, 'sync-coordinator.json'), JSON.stringify({ port: Number(port), basePath: pathname, router: { statusTokens: [TOKEN] } }));
      const result = await stats(['--json']);
      expect(result.code, result.stderr).to.equal(0);
      expect((JSON.parse(result.stdout) as ServerStats).url).to.equal(`http://127.0.0.1:${port}${pathname}`);
      // The environment wins over the file, as for the server: here it points at nothing.
      const elsewhere = await freePort();
      const moved = await stats(['--json'], { SYNC_PORT: String(elsewhere) });
      expect(moved.code).to.equal(1);
      expect(moved.stderr).to.include(`cannot reach http://127.0.0.1:${elsewhere}${pathname}/status: ECONNREFUSED`);
    });
  });

  describe('in a cluster with an archive', () => {
    let redis: RedisTestServer;
    let s3: S3TestServer;
    let proc: CoordinatorProcess;

    before(async function () {
      this.timeout(120_000);
      redis = await startRedisServer();
      s3 = await startS3Server('stats-archive');
      proc = await startCoordinatorProcess({
        args: ['--redis-url', redis.url, '--node-id', 'stats-node-1'],
        env: {
          S3_BUCKET: s3.bucket, S3_ENDPOINT: s3.endpoint, S3_REGION: s3.region, S3_FORCE_PATH_STYLE: 'true',
          S3_ACCESS_KEY_ID: s3.accessKeyId, S3_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        },
      });
      await write(proc, 2, 3);
    });

    after(async () => {
      await proc?.cleanup();
      await s3?.close();
      await redis?.close();
    });

    it('prints the node id, the archive section and the cluster section with each open database', async () => {
      const result = await stats(['--url', proc.baseUrl]);
      expect(result.code, result.stderr).to.equal(0);
      const now = await status(proc);
      const out = lines(result.stdout);
      expect(out).to.include('  node            stats-node-1');
      const archive = out.indexOf('archive (async)');
      expect(archive, result.stdout).to.be.greaterThan(0);
      expect(out[archive + 1]).to.equal(`  open databases    ${now.archive!.openDatabases}`);
      expect(out.slice(archive + 1).some((line) => /^ {2}not archived yet {2}\d+ transactions, [\d.]+ (B|KiB), oldest [\d.]+ s$/.test(line)), result.stdout).to.equal(true);
      const cluster = out.indexOf('cluster (node stats-node-1)');
      expect(cluster, result.stdout).to.be.greaterThan(archive);
      expect(out[cluster + 2]).to.equal('  log retention  1 d');
      const { position } = now.cluster!.databases[DB]!;
      expect(out[cluster + 3]).to.match(new RegExp(`^ {4}${DB} {2}position ${escapeRegExp(position)}, lag ([\\d.]+ s|unknown)$`));
    });

    it('prints both sections as /status has them with --json', async () => {
      const result = await stats(['--url', proc.baseUrl, '--json']);
      expect(result.code, result.stderr).to.equal(0);
      const json = JSON.parse(result.stdout) as ServerStats;
      const now = await status(proc);
      expect(Object.keys(json.status)).to.have.members(Object.keys(now));
      expect(json.status.archive).to.include({ mode: 'async', openDatabases: now.archive!.openDatabases });
      expect(json.status.cluster).to.include({ node: 'stats-node-1', logRetentionMs: now.cluster!.logRetentionMs });
      expect(Object.keys(json.status.cluster!.databases)).to.deep.equal([DB]);
    });
  });

  it('is listed by --help, with its own flags under stats --help, as inspect is', async () => {
    const help = await runToEnd(runs, ['--help'], { cwd });
    expect(help.code).to.equal(0);
    expect(help.stdout).to.include('sync-coordinator stats [--url URL] [--token T] [--json]');
    expect(help.stdout).to.include('sync-coordinator inspect <db> [--data-dir DIR] [--json]');
    const own = await stats(['--help']);
    expect(own.code).to.equal(0);
    for (const flag of ['--url', '--token', '--json', '--timeout-ms', '--config']) expect(own.stdout).to.include(flag);
    expect(own.stdout).not.to.include('--data-dir');
    const inspect = await runToEnd(runs, ['inspect', '--help'], { cwd });
    expect(inspect.code).to.equal(0);
    for (const flag of ['--data-dir', '--json', '--config']) expect(inspect.stdout).to.include(flag);
    expect(inspect.stdout).not.to.include('--s3-bucket');
  });

  describe('errors', () => {
    const servers: (HttpServer | NetServer)[] = [];
    const sockets = new Set<Socket>();

    afterEach(async () => {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      await Promise.all(servers.splice(0).map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    });

    async function listen<T extends HttpServer | NetServer>(server: T): Promise<number> {
      servers.push(server);
      server.on('connection', (socket: Socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return (server.address() as AddressInfo).port;
    }

    it('fails with one line naming the URL and the error code when nothing listens there', async () => {
      const port = await freePort();
      const result = await stats(['--url', `http://127.0.0.1:${port}/sync`]);
      expect(result.code).to.equal(1);
      expect(result.stdout).to.equal('');
      expect(lines(result.stderr)).to.deep.equal([
        `sync-coordinator stats: cannot reach http://127.0.0.1:${port}/sync/status: ECONNREFUSED (connection refused: is the server running, on this port?)`,
      ]);
    });

    it('gives up after --timeout-ms on a server that never answers', async () => {
      const port = await listen(createNetServer());
      const result = await stats(['--url', `http://127.0.0.1:${port}/sync`, '--timeout-ms', '300']);
      expect(result.code).to.equal(1);
      expect(lines(result.stderr)).to.deep.equal([`sync-coordinator stats: cannot reach http://127.0.0.1:${port}/sync/status: ETIMEDOUT (no answer within 300 ms)`]);
    });

    it('says so when the answer is not a coordinator, or the mount path is wrong', async () => {
      const port = await listen(createHttpServer((req, res) => {
        if (req.url === '/sync/status') res.end('hello');
        else res.writeHead(404).end('Cannot GET');
      }));
      const other = await stats(['--url', `http://127.0.0.1:${port}/sync`]);
      expect(other.code).to.equal(1);
      expect(lines(other.stderr)).to.deep.equal([
        `sync-coordinator stats: http://127.0.0.1:${port}/sync/status answered 200 with something other than JSON: not a sync coordinator's /status (is the mount path right?)`,
      ]);
      const wrongMount = await stats(['--url', `http://127.0.0.1:${port}/api`]);
      expect(wrongMount.code).to.equal(1);
      expect(lines(wrongMount.stderr)).to.deep.equal([
        `sync-coordinator stats: http://127.0.0.1:${port}/api/status answered 404 ("Cannot GET"); is the mount path right? The URL is the router's base, e.g. http://127.0.0.1:3000/sync`,
      ]);
    });

    it('exits 2 with one line for a bad URL, a bad timeout, an empty token or an unknown flag', async () => {
      for (const [args, message] of [
        [['--url', 'ftp://127.0.0.1/sync'], 'sync-coordinator stats: --url: expected an http or https URL, got "ftp://127.0.0.1/sync"'],
        [['--url', 'localhost:3000'], 'sync-coordinator stats: --url: expected an http or https URL, got "localhost:3000"'],
        [['--url', 'not a url'], 'sync-coordinator stats: --url: expected the server\'s base URL with its mount path, like http://127.0.0.1:3000/sync, got "not a url"'],
        [['--url', 'http://127.0.0.1:3000/sync', '--timeout-ms', 'soon'], 'sync-coordinator stats: --timeout-ms: expected a whole number of milliseconds above 0, got "soon"'],
        [['--url', 'http://127.0.0.1:3000/sync', '--token', ''], 'sync-coordinator stats: --token: expected a bearer token, got an empty string'],
        [['--force'], 'Unknown argument: force (see sync-coordinator --help)'],
        [['extra'], 'Unknown argument: extra (see sync-coordinator --help)'],
      ] as const) {
        const result = await stats([...args]);
        expect(result.code, args.join(' ')).to.equal(2);
        expect(lines(result.stderr), args.join(' ')).to.deep.equal([message]);
      }
    });
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
