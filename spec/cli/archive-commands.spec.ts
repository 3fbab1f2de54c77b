/**
 * `sync-coordinator restore <db>` and `sync-coordinator export <db>`: the
 * built CLI as a child process, against a real S3-compatible server
 * (s3rver) and real data directories. The archive is seeded by a router in
 * this process, so that it holds a snapshot and batches after it whatever
 * the timing; the refusal tests run the CLI server itself, which takes the
 * data directory's lock.
 */
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { readdir, readFile, mkdir, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Durability } from '../../lib/durability/durability.js';
import type { S3Options } from '../../lib/config/options.js';
import type { SnapshotChunk } from '../../lib/protocol/messages.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, CLI, LISTENING, lines, runToEnd, Runs } from './harness.js';

const DB = 'acme:notes';
const BUCKET = 'cli-commands';

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Writes `n` transactions (overwrites, a second column, deletes) over WebSocket. */
async function write(wsUrl: string, n: number, from = 0, db = DB): Promise<void> {
  const site = new TestSite();
  const { socket, reply } = await RawSocket.handshake(wsUrl, db, site.wire);
  expect(reply.type).to.equal('handshake_ack');
  try {
    for (let i = from; i < from + n; i++) {
      const changes = i % 7 === 3 ? [{ pk: [i - 3], delete: true }] : [{ pk: [i % 50], value: `v${i}` }, { pk: [i], column: 'other', value: i }];
      const res = await socket.request({ type: 'apply_changes', requestId: String(i), changes: [site.txn(changes)] }, ['apply_result', 'error']);
      expect(res.type, JSON.stringify(res)).to.equal('apply_result');
    }
  } finally {
    await socket.close();
  }
}

/** GET <baseUrl>/<db>/snapshot as text. */
async function snapshotText(baseUrl: string, db = DB): Promise<string> {
  const res = await fetch(`${baseUrl}/${encodeURIComponent(db)}/snapshot`, { headers: { 'x-site-id': new TestSite().wire } });
  expect(res.status).to.equal(200);
  return res.text();
}

/**
 * The chunks of an NDJSON snapshot without what legitimately differs between
 * two snapshots of the same state: the random snapshotId, and (after a
 * restore, which replays deletes) when a tombstone was created.
 */
function comparable(text: string, { restored = false } = {}): unknown[] {
  return text.trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk).map((chunk) => {
    if (chunk.type === 'header' || chunk.type === 'footer') return { ...chunk, snapshotId: '' };
    if (restored && chunk.type === 'tombstone') return { ...chunk, entries: chunk.entries.map((e) => ({ ...e, createdAt: 0 })) };
    return chunk;
  });
}

describe('cli restore and export', function () {
  this.timeout(120_000);
  let s3: S3TestServer;
  let cwd: string;
  let prefix: string;
  let tests = 0;
  const runs = new Runs();
  const servers: TestServer[] = [];

  const sdkWarning = process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED;

  before(async function () {
    this.timeout(180_000);
    // The seeding router in this process loads the AWS SDK, which would warn about Node 20 here (the CLI silences it itself).
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
    await buildOnce();
    s3 = await startS3Server(BUCKET);
  });

  after(async () => {
    await s3?.close();
    if (sdkWarning === undefined) delete process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED;
    else process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = sdkWarning;
  });

  beforeEach(async () => {
    cwd = await makeTempDir('cli-archive-');
    // Every test has its own corner of the bucket.
    prefix = `test-${++tests}/`;
  });

  afterEach(async () => {
    await runs.cleanup();
    await Promise.all(servers.splice(0).map((s) => s.close()));
    await removeTempDir(cwd);
  });

  function s3Options(): S3Options {
    return { bucket: BUCKET, endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, keyPrefix: prefix };
  }

  /** The S3_* variables of this test's archive. */
  function s3Env(): Record<string, string> {
    return {
      S3_BUCKET: BUCKET, S3_ENDPOINT: s3.endpoint, S3_REGION: s3.region, S3_FORCE_PATH_STYLE: 'true',
      S3_ACCESS_KEY_ID: s3.accessKeyId, S3_SECRET_ACCESS_KEY: s3.secretAccessKey, S3_KEY_PREFIX: prefix,
    };
  }

  function location(): string {
    return `s3://${BUCKET}/${prefix} at ${s3.endpoint}`;
  }

  function run(args: string[], env: Record<string, string> = s3Env()): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return runToEnd(runs, args, { cwd, env });
  }

  /**
   * A router archiving to this test's prefix writes `before` transactions,
   * takes a snapshot, writes 60 more (batches after the snapshot) and waits
   * until they are archived; resolves with the snapshot it served at the
   * end. The router is closed again; its data directory is `dataDir`.
   */
  async function seed(dataDir = join(cwd, 'seed'), before = 150): Promise<string> {
    const server = await startTestServer({ dataDir, s3: s3Options() });
    servers.push(server);
    const durability = (server.sync.coordinator as unknown as { replicas: Durability }).replicas;
    await write(server.wsUrl, before);
    expect(await durability.snapshotNow(DB)).to.be.a('string');
    await write(server.wsUrl, 60, before);
    expect(await durability.flush(DB)).to.equal(true);
    const text = await snapshotText(server.baseUrl);
    servers.splice(servers.indexOf(server), 1);
    await server.close();
    return text;
  }

  /** What a router without an archive serves from `dataDir`. */
  async function servedFrom(dataDir: string): Promise<string> {
    const server = await startTestServer({ dataDir });
    servers.push(server);
    return snapshotText(server.baseUrl);
  }

  const NO_WARNINGS = /warning/i;

  /**
   * Runs the CLI on a pseudo-terminal (util-linux `script`, part of every
   * Debian system), 100 columns wide; stdout and stderr both reach the
   * terminal, so `output` holds them interleaved as a person would see them.
   */
  async function onTerminal(args: string[], env: Record<string, string> = s3Env()): Promise<{ code: number | null; output: string }> {
    const script = ['/usr/bin/script', '/bin/script'].find((path) => existsSync(path));
    if (script === undefined) throw new Error('this test needs util-linux `script` (Debian: bsdutils) to give the CLI a terminal');
    const quote = (word: string): string => `'${word.replace(/'/g, `'\\''`)}'`;
    const command = `stty cols 100 rows 40; exec ${[process.execPath, CLI, ...args].map(quote).join(' ')}`;
    const run = runs.start(script, ['--quiet', '--return', '--flush', '--command', command, '/dev/null'], { cwd, env });
    const { code } = await run.closed;
    return { code, output: run.output.stdout };
  }

  describe('restore', () => {
    it('restores a database into an empty data directory, identical to what was served', async () => {
      // Enough for a snapshot of more than 1,000 store entries, which restore reports as it loads them.
      const expected = await seed(join(cwd, 'seed'), 500);
      const result = await run(['restore', DB, '--data-dir', 'restored']);
      expect(result.code, result.stderr).to.equal(0);
      const directory = databaseDirectory(join(cwd, 'restored'), DB);
      expect(lines(result.stdout)).to.have.length(1);
      expect(result.stdout).to.match(new RegExp(
        `^sync-coordinator: restored acme:notes from ${escapeRegExp(location())} into ${escapeRegExp(directory)}: ` +
          'snapshot databases/\\S+/snapshots/\\S+\\.kv\\.gz \\(\\d+ store entries\\) \\+ \\d+ batches \\(60 transactions\\), ' +
          'newest change stamped \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z in \\d+\\.\\d s\\n$',
      ));
      // Plain progress lines without a terminal: the snapshot's entries, then the batches up to all of them.
      const progress = lines(result.stderr);
      for (const line of progress) expect(line).to.match(/^sync-coordinator restore acme:notes: (loading snapshot: \d+ entries|replaying batches: \d+\/\d+ batches)$/);
      expect(progress[0]).to.match(/^sync-coordinator restore acme:notes: loading snapshot: [1-9]\d* entries$/);
      expect(progress).to.include(`sync-coordinator restore acme:notes: replaying batches: 0/${/(\d+) batches \(/.exec(result.stdout)![1]} batches`);
      const batches = /(\d+) batches \(60 transactions\)/.exec(result.stdout)![1]!;
      expect(progress.at(-1)).to.equal(`sync-coordinator restore acme:notes: replaying batches: ${batches}/${batches} batches`);
      expect(result.stderr).not.to.match(NO_WARNINGS);

      expect(comparable(await servedFrom(join(cwd, 'restored')), { restored: true })).to.deep.equal(comparable(expected, { restored: true }));
    });

    it('draws progress bars on a terminal instead of lines, for restore and for export', async () => {
      const expected = await seed(join(cwd, 'seed'), 500);
      const restore = await onTerminal(['restore', DB, '--data-dir', 'restored']);
      expect(restore.code, restore.output).to.equal(0);
      // cli-progress: the cursor hidden while bars draw, a bar of 20 cells per phase, the finished one full.
      expect(restore.output).to.include('\u001b[?25l');
      expect(restore.output).to.match(/restore acme:notes: replaying batches \u2588{20} 100% (\d+)\/\1 batches/);
      expect(restore.output).to.match(/restore acme:notes: loading snapshot: [1-9]\d* entries/);
      // Not the plain lines written off a terminal (those name the command: "sync-coordinator restore ...: phase: n").
      expect(restore.output).not.to.match(/sync-coordinator restore acme:notes: (loading snapshot|replaying batches):/);
      expect(restore.output).to.match(/sync-coordinator: restored acme:notes from /);
      expect(comparable(await servedFrom(join(cwd, 'restored')), { restored: true })).to.deep.equal(comparable(expected, { restored: true }));

      // From the seeding router's store (the restored one is open in servedFrom's router).
      const exported = await onTerminal(['export', DB, '--data-dir', 'seed', '--out', 'snapshot.ndjson'], {});
      expect(exported.code, exported.output).to.equal(0);
      const footer = comparable(await readFile(join(cwd, 'snapshot.ndjson'), 'utf8')).at(-1) as Extract<SnapshotChunk, { type: 'footer' }>;
      expect(exported.output).to.include(`export acme:notes: writing ${'\u2588'.repeat(20)} 100% ${footer.totalEntries}/${footer.totalEntries} entries`);
      expect(exported.output).not.to.match(/sync-coordinator export acme:notes: writing:/);
    });

    it('takes the S3 settings as flags, and without S3 keys the AWS SDK\'s default credential chain (AWS_* variables)', async () => {
      const expected = await seed();
      const result = await run(
        ['restore', DB, '--data-dir', 'restored', '--s3-bucket', BUCKET, '--s3-endpoint', s3.endpoint, '--s3-force-path-style', '--s3-key-prefix', prefix],
        { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_EC2_METADATA_DISABLED: 'true' },
      );
      expect(result.code, result.stderr).to.equal(0);
      expect(result.stdout).to.match(new RegExp(`^sync-coordinator: restored acme:notes from ${escapeRegExp(location())} `));
      expect(comparable(await servedFrom(join(cwd, 'restored')), { restored: true })).to.deep.equal(comparable(expected, { restored: true }));
    });

    it('refuses a database that is already on disk; --force moves it aside first', async () => {
      const expected = await seed();
      expect((await run(['restore', DB, '--data-dir', 'data'])).code).to.equal(0);
      const directory = databaseDirectory(join(cwd, 'data'), DB);

      const refused = await run(['restore', DB, '--data-dir', 'data']);
      expect(refused.code).to.equal(1);
      expect(refused.stderr).to.equal(`sync-coordinator restore: database "acme:notes" is already on disk at ${JSON.stringify(directory)}; use --force to move it aside and restore over it\n`);
      expect(refused.stdout).to.equal('');

      // Something only the copy on disk has: it must survive in the moved-aside directory.
      await writeFile(join(directory, 'only-on-disk'), 'x');
      const forced = await run(['restore', DB, '--data-dir', 'data', '--force']);
      expect(forced.code, forced.stderr).to.equal(0);
      const aside = new RegExp(`; the copy that was on disk is now (${escapeRegExp(directory)}\\.replaced-\\d{8}T\\d{6}Z)\\n$`).exec(forced.stdout);
      expect(aside, forced.stdout).to.not.equal(null);
      expect(existsSync(join(aside![1]!, 'only-on-disk'))).to.equal(true);
      expect(existsSync(join(directory, 'only-on-disk'))).to.equal(false);
      expect(comparable(await servedFrom(join(cwd, 'data')), { restored: true })).to.deep.equal(comparable(expected, { restored: true }));
    });

    it('puts the database back when a forced restore finds nothing in the archive', async () => {
      await seed(join(cwd, 'data'));
      const directory = databaseDirectory(join(cwd, 'data'), DB);
      await writeFile(join(directory, 'only-on-disk'), 'x');
      prefix = 'empty-prefix/';
      const result = await run(['restore', DB, '--data-dir', 'data', '--force']);
      expect(result.code).to.equal(1);
      expect(result.stderr).to.equal(`sync-coordinator restore: the archive ${location()} holds nothing of database "acme:notes"\n`);
      expect(existsSync(join(directory, 'only-on-disk'))).to.equal(true);
      expect((await readdir(join(directory, '..'))).filter((name) => name.includes('.replaced-'))).to.deep.equal([]);
    });

    it('fails with one line for a database the archive does not hold, creating nothing for it', async () => {
      const result = await run(['restore', 'nobody:here', '--data-dir', 'data']);
      expect(result.code).to.equal(1);
      expect(result.stderr).to.equal(`sync-coordinator restore: the archive ${location()} holds nothing of database "nobody:here"\n`);
      expect(result.stdout).to.equal('');
      expect(existsSync(databaseDirectory(join(cwd, 'data'), 'nobody:here'))).to.equal(false);
    });

    it('exits 2 with one line for an invalid database id, a missing one, or no archive configured', async () => {
      const invalid = await run(['restore', '../etc', '--data-dir', 'data']);
      expect(invalid.code).to.equal(2);
      expect(invalid.stderr).to.equal('<db>: expected 1-128 characters of [A-Za-z0-9_:.-] not starting with ".", got "../etc"\n');

      const missing = await run(['restore', '--data-dir', 'data']);
      expect(missing.code).to.equal(2);
      expect(lines(missing.stderr)).to.have.length(1);

      const noArchive = await run(['restore', DB, '--data-dir', 'data'], {});
      expect(noArchive.code).to.equal(2);
      expect(noArchive.stderr).to.equal('sync-coordinator restore: no archive is configured: set S3_BUCKET, --s3-bucket or "s3.bucket" in the config file\n');

      const regionOnly = await run(['restore', DB, '--data-dir', 'data'], { S3_REGION: 'eu-west-1' });
      expect(regionOnly.code).to.equal(2);
      expect(lines(regionOnly.stderr)).to.deep.equal([
        `sync-coordinator: warning: S3_REGION is set, but S3 stays off without a bucket (set S3_BUCKET, --s3-bucket or "s3.bucket" in the config file): databases are stored only in ${JSON.stringify(join(cwd, 'data'))}`,
        'sync-coordinator restore: no archive is configured: set S3_BUCKET, --s3-bucket or "s3.bucket" in the config file',
      ]);
    });

    it('fails with one line when S3 cannot be reached, never printing a key', async () => {
      const closed = createServer();
      await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
      const { port } = closed.address() as AddressInfo;
      await new Promise((resolve) => closed.close(resolve));
      const env = { ...s3Env(), S3_ENDPOINT: `http://127.0.0.1:${port}`, S3_ACCESS_KEY_ID: 'AKIA-UNREACHABLE-ID', S3_SECRET_ACCESS_KEY: 'unreachable-secret-value' };
      const result = await run(['restore', DB, '--data-dir', 'data'], env);
      expect(result.code).to.equal(1);
      expect(lines(result.stderr)).to.have.length(1);
      expect(result.stderr).to.match(/^sync-coordinator restore: .*ECONNREFUSED/);
      expect(result.stderr + result.stdout).not.to.include('unreachable-secret-value');
      expect(result.stderr + result.stdout).not.to.include('AKIA-UNREACHABLE-ID');
      expect(existsSync(databaseDirectory(join(cwd, 'data'), DB))).to.equal(false);
    });
  });

  describe('the server', () => {
    it('takes S3 from the config file and the env, acknowledges in ack mode only what S3 holds, and prints nothing on stderr', async () => {
      await writeFile(join(cwd, 'sync-coordinator.json'), JSON.stringify({
        s3: { bucket: BUCKET, endpoint: s3.endpoint, forcePathStyle: true, keyPrefix: prefix },
        s3Durability: 'ack',
      }));
      const server = runs.cli(['--port', '0', '--host', '127.0.0.1', '--data-dir', 'live'], {
        cwd, env: { S3_ACCESS_KEY_ID: s3.accessKeyId, S3_SECRET_ACCESS_KEY: s3.secretAccessKey },
      });
      const url = (await server.waitFor('stdout', LISTENING))[1]!;
      await write(`${url.replace(/^http/, 'ws')}/ws`, 30);
      const status = await (await fetch(`${url}/status`)).json() as { data: { archive?: { mode: string } } };
      expect(status.data.archive).to.include({ mode: 'ack' });
      const served = await snapshotText(url);
      // No graceful shutdown: in ack mode every acknowledged write is in S3 already.
      server.child.kill('SIGKILL');
      await server.closed;
      expect(server.output.stderr).to.equal('');

      const restored = await run(['restore', DB, '--data-dir', 'restored']);
      expect(restored.code, restored.stderr).to.equal(0);
      expect(comparable(await servedFrom(join(cwd, 'restored')), { restored: true })).to.deep.equal(comparable(served, { restored: true }));
    });
  });

  describe('a server on the data directory', () => {
    it('makes restore and export refuse with one line, and keeps serving', async () => {
      await seed(join(cwd, 'live'));
      const server = runs.cli(['--port', '0', '--host', '127.0.0.1', '--data-dir', 'live'], { cwd, env: s3Env() });
      const url = (await server.waitFor('stdout', LISTENING))[1]!;
      const inUse = new RegExp(`^--data-dir: ${escapeRegExp(JSON.stringify(join(cwd, 'live')))} is in use by another running sync coordinator \\(pid ${server.child.pid} on [^)]+\\); stop it or use another directory`);

      const restore = await run(['restore', DB, '--data-dir', 'live', '--force']);
      expect(restore.code).to.equal(1);
      expect(lines(restore.stderr)).to.have.length(1);
      expect(restore.stderr).to.match(inUse);

      const exported = await run(['export', DB, '--data-dir', 'live', '--out', 'x.ndjson']);
      expect(exported.code).to.equal(1);
      expect(lines(exported.stderr)).to.have.length(1);
      expect(exported.stderr).to.match(inUse);
      expect(exported.stderr).to.include(`(or GET /sync/${DB}/snapshot from that server, or point --data-dir at an empty directory to export from the archive)`);
      expect(existsSync(join(cwd, 'x.ndjson'))).to.equal(false);

      // Nothing of the database was touched: the server still serves it.
      expect(comparable(await snapshotText(url))).to.have.length.greaterThan(3);
      server.child.kill('SIGTERM');
      expect((await server.closed).code).to.equal(0);
    });
  });

  describe('export', () => {
    it('exits 2 naming --out when it is empty or a directory, before reading the store or writing anything', async () => {
      await seed(join(cwd, 'data'));
      const empty = await run(['export', DB, '--data-dir', 'data', '--out', ''], {});
      expect(empty.code, empty.stderr).to.equal(2);
      expect(lines(empty.stderr)).to.deep.equal(['sync-coordinator export: --out: expected a file path, or - for stdout, got ""']);
      await mkdir(join(cwd, 'out'));
      const directory = await run(['export', DB, '--data-dir', 'data', '--out', 'out'], {});
      expect(directory.code, directory.stderr).to.equal(2);
      expect(lines(directory.stderr)).to.deep.equal([`sync-coordinator export: --out: ${JSON.stringify(join(cwd, 'out'))} is a directory, not a file`]);
      expect(await readdir(cwd)).to.have.members(['data', 'out']);
      expect(await readdir(join(cwd, 'out'))).to.deep.equal([]);
    });

    it('writes the NDJSON that GET /:db/snapshot of the live server answered, from the store on disk', async () => {
      const served = await seed(join(cwd, 'data'));
      // No archive configured: a database on disk needs none.
      const result = await run(['export', DB, '--data-dir', 'data', '--out', 'snapshot.ndjson'], {});
      expect(result.code, result.stderr).to.equal(0);
      const written = await readFile(join(cwd, 'snapshot.ndjson'), 'utf8');
      expect(comparable(written)).to.deep.equal(comparable(served));

      const chunks = comparable(written) as SnapshotChunk[];
      const footer = chunks.at(-1) as Extract<SnapshotChunk, { type: 'footer' }>;
      const tombstones = chunks.filter((c): c is Extract<SnapshotChunk, { type: 'tombstone' }> => c.type === 'tombstone').reduce((n, c) => n + c.entries.length, 0);
      expect(tombstones).to.be.greaterThan(0);
      expect(result.stdout).to.match(new RegExp(
        `^sync-coordinator: exported acme:notes from the store in ${escapeRegExp(databaseDirectory(join(cwd, 'data'), DB))} to ${escapeRegExp(join(cwd, 'snapshot.ndjson'))}: ` +
          `1 tables, ${footer.totalEntries} entries, ${tombstones} tombstones, ${chunks.length} chunks, [\\d.]+ KiB in \\d+\\.\\d s\\n$`,
      ));
      const progress = lines(result.stderr);
      for (const line of progress) expect(line).to.match(/^sync-coordinator export acme:notes: writing: \d+\/\d+ entries$/);
      expect(progress[0]).to.equal(`sync-coordinator export acme:notes: writing: 0/${footer.totalEntries} entries`);
      expect(progress.at(-1)).to.equal(`sync-coordinator export acme:notes: writing: ${footer.totalEntries}/${footer.totalEntries} entries`);
      expect(await readdir(cwd)).to.have.members(['data', 'snapshot.ndjson']);
    });

    it('writes to stdout without --out, with progress and the summary on stderr', async () => {
      const served = await seed(join(cwd, 'data'));
      const result = await run(['export', DB, '--data-dir', 'data']);
      expect(result.code, result.stderr).to.equal(0);
      expect(comparable(result.stdout)).to.deep.equal(comparable(served));
      expect(lines(result.stderr).at(-1)).to.match(/^sync-coordinator: exported acme:notes from the store in \S+ to stdout: 1 tables, \d+ entries/);
    });

    it('restores from the archive into a temporary store when the database is not on disk', async () => {
      const served = await seed();
      const tmp = join(cwd, 'tmp');
      await mkdir(tmp);
      const result = await runToEnd(runs, ['export', DB, '--data-dir', 'elsewhere', '-o', 'snapshot.ndjson'], { cwd, env: { ...s3Env(), TMPDIR: tmp } });
      expect(result.code, result.stderr).to.equal(0);
      expect(comparable(await readFile(join(cwd, 'snapshot.ndjson'), 'utf8'), { restored: true })).to.deep.equal(comparable(served, { restored: true }));
      expect(result.stdout).to.match(new RegExp(
        `^sync-coordinator: exported acme:notes from ${escapeRegExp(location())} \\(snapshot \\S+ \\(\\d+ store entries\\) \\+ \\d+ batches \\(60 transactions\\), newest change stamped \\S+Z\\) to `,
      ));
      const progress = lines(result.stderr);
      expect(progress.some((line) => /^sync-coordinator export acme:notes: replaying batches: \d+\/\d+ batches$/.test(line))).to.equal(true);
      expect(progress.at(-1)).to.match(/^sync-coordinator export acme:notes: writing: (\d+)\/\1 entries$/);
      // The temporary store is gone, and the data directory was never created.
      expect(await readdir(tmp)).to.deep.equal([]);
      expect(existsSync(join(cwd, 'elsewhere'))).to.equal(false);
    });

    it("leaves the AWS SDK's Node version warning on when the user asked for it", async function () {
      // The SDK warns only on Node versions it is about to drop.
      if (Number(process.versions.node.split('.')[0]) >= 22) this.skip();
      await seed();
      const result = await run(['export', DB, '--data-dir', 'elsewhere', '--out', 'snapshot.ndjson'], { ...s3Env(), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'false' });
      expect(result.code, result.stderr).to.equal(0);
      expect(result.stderr).to.include('NodeVersionSupportWarning');
    });

    it('leaves no file behind when it fails', async () => {
      const result = await run(['export', 'nobody:here', '--data-dir', 'data', '--out', 'snapshot.ndjson']);
      expect(result.code).to.equal(1);
      expect(result.stderr).to.equal(`sync-coordinator export: database "nobody:here" is not in ${JSON.stringify(join(cwd, 'data'))}, and the archive ${location()} holds nothing of it\n`);
      expect(await readdir(cwd)).to.deep.equal([]);
    });

    it('fails with one line for a database neither on disk nor in an archive', async () => {
      await mkdir(join(cwd, 'data'));
      const result = await run(['export', 'nobody:here', '--data-dir', 'data'], {});
      expect(result.code).to.equal(1);
      expect(result.stderr).to.equal(`sync-coordinator export: database "nobody:here" is not in ${JSON.stringify(join(cwd, 'data'))} and no archive is configured to restore it from\n`);
      expect(result.stdout).to.equal('');
    });
  });
});
