import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import WebSocket from 'ws';
import { SyncClient, SyncClientError, type SyncClientOptions } from '../../lib/client/sync-client.js';
import type { ChangeSet, ErrorMessage } from '../../lib/protocol/messages.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { TestSite } from '../helpers/changes.js';
import { startExample, stopAllExamples, type ExampleProcess } from './example-process.js';
import { S3Archive } from '../../lib/durability/s3-archive.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';

const DB = 'acme:notes-42';

function siteOf(client: SyncClient): TestSite {
  return new TestSite(Buffer.from(client.options.siteId, 'base64url'));
}

function nextPush(client: SyncClient): Promise<ChangeSet[]> {
  return new Promise((resolve) => client.once('push', resolve));
}

/** The rejection of `promise`, which must reject. */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

/** Opens a socket, sends a handshake and returns the error frame and close code it gets. */
async function refusedHandshake(example: ExampleProcess, databaseId: string, token?: string): Promise<{ error: ErrorMessage; code: number }> {
  const client = await SyncClient.open({ url: example.wsUrl, databaseId, siteId: siteIdToWire(randomSiteId()) });
  const error = client.expect('error');
  client.send({ type: 'handshake', databaseId, siteId: client.options.siteId, protocolVersion: 1, ...(token === undefined ? {} : { token }) });
  return { error: (await error) as ErrorMessage, code: await client.closed() };
}

/** A plain WebSocket client of the embed example's /chat echo endpoint. */
class ChatClient {
  private readonly socket: WebSocket;
  private readonly inbox: string[] = [];
  private readonly waiters: ((text: string) => void)[] = [];

  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.on('message', (data) => {
      const text = data.toString();
      const waiter = this.waiters.shift();
      if (waiter) waiter(text);
      else this.inbox.push(text);
    });
  }

  static async open(url: string): Promise<ChatClient> {
    const socket = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
    });
    return new ChatClient(socket);
  }

  /** Sends `text` and resolves with the next message received. */
  roundTrip(text: string): Promise<string> {
    const reply = this.inbox.length > 0
      ? Promise.resolve(this.inbox.shift()!)
      : new Promise<string>((resolve) => this.waiters.push(resolve));
    this.socket.send(text);
    return reply;
  }

  close(): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return Promise.resolve();
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.close(1000);
    return closed;
  }
}

describe('examples', function () {
  // Each example is a fresh node + tsx process; startup is slow on a loaded machine.
  this.timeout(60_000);

  const clients: SyncClient[] = [];
  const chats: ChatClient[] = [];

  async function connect(example: ExampleProcess, options: Partial<SyncClientOptions> = {}): Promise<SyncClient> {
    const client = await SyncClient.connect({ url: example.wsUrl, databaseId: DB, siteId: siteIdToWire(randomSiteId()), ...options });
    clients.push(client);
    return client;
  }

  async function openChat(example: ExampleProcess): Promise<ChatClient> {
    const chat = await ChatClient.open(`ws://${new URL(example.origin).host}/chat`);
    chats.push(chat);
    return chat;
  }

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    await Promise.all(chats.splice(0).map((c) => c.close()));
  });

  after(() => stopAllExamples());

  /** Every example: one stdout line, and a clean exit 0 on SIGTERM. */
  function itShutsDownGracefully(name: string, env: Record<string, string> = {}): void {
    it('prints only its listening line and exits 0 on SIGTERM, with sockets open', async () => {
      const example = await startExample(name, env);
      const token = env.TOKENS ?? (env.HOOK_SECRET ? signedToken(env.HOOK_SECRET, 'carol', 'writer') : undefined);
      const client = await connect(example, token ? { token } : {});
      const status = await example.stop();
      expect(status).to.deep.equal({ code: 0, signal: null });
      expect(await client.closed()).to.equal(1001);
      expect(example.stdout()).to.equal(`listening on ${example.baseUrl}\n`);
    });
  }

  describe('embed-in-express', () => {
    let example: ExampleProcess;
    before(async () => { example = await startExample('embed-in-express'); });

    it('prints its listening line with the sync mount path', () => {
      expect(example.baseUrl).to.match(/^http:\/\/127\.0\.0\.1:\d+\/sync$/);
    });

    it("keeps the app's own routes", async () => {
      const res = await fetch(`${example.origin}/api/hello`);
      expect(res.status).to.equal(200);
      expect(await res.json()).to.deep.equal({ hello: 'world' });
    });

    it("keeps the app's own /chat WebSocket", async () => {
      const chat = await openChat(example);
      expect(await chat.roundTrip('hello')).to.equal('hello');
      expect(await chat.roundTrip('again')).to.equal('again');
    });

    it('serves GET /sync/status', async () => {
      const res = await fetch(`${example.baseUrl}/status`);
      expect(res.status).to.equal(200);
      expect(res.headers.get('content-type')).to.match(/^application\/json/);
      const body = await res.json() as { ok: boolean; data: unknown };
      expect(body.ok).to.equal(true);
      expect(body.data).to.be.an('object');
    });

    it('answers an unknown route under /sync with 404 JSON', async () => {
      const res = await fetch(`${example.baseUrl}/no/such/route`);
      expect(res.status).to.equal(404);
      const body = await res.json() as { ok: boolean; error: { code: string; message: string } };
      expect(body.ok).to.equal(false);
      expect(body.error.code).to.equal('NOT_FOUND');
      expect(body.error.message).to.be.a('string');
    });

    it('converges two sync clients on one database', async () => {
      const db = 'embed:converge';
      const a = await connect(example, { databaseId: db });
      const b = await connect(example, { databaseId: db });
      const pushed = nextPush(b);
      const txn = siteOf(a).txn([{ pk: [1], column: 'title', value: 'from a' }], [{ table: 'notes' }]);
      const result = await a.apply([txn]);
      expect(result).to.include({ applied: 2, transactions: 1 });

      const [push] = await pushed;
      expect(push!.transactionId).to.equal(txn.transactionId);
      expect(push!.changes).to.deep.equal(txn.changes);

      const { changeSets } = await b.getChanges();
      expect(changeSets.map((s) => s.transactionId)).to.deep.equal([txn.transactionId]);
      expect(changeSets[0]!.changes).to.deep.equal(txn.changes);
      expect((await a.getChanges()).changeSets, 'never its own changes').to.deep.equal([]);
    });

    it('keeps /chat working while sync sockets are open', async () => {
      const chat = await openChat(example);
      expect(await chat.roundTrip('before')).to.equal('before');
      const a = await connect(example, { databaseId: 'embed:side-by-side' });
      const b = await connect(example, { databaseId: 'embed:side-by-side' });
      const pushed = nextPush(b);
      await a.apply([siteOf(a).txn([{ pk: [7], value: 'x' }])]);
      await pushed;
      expect(await chat.roundTrip('during')).to.equal('during');
      expect(await a.ping()).to.deep.equal({ type: 'pong' });
      await a.close();
      expect(await chat.roundTrip('after')).to.equal('after');
      expect(await b.ping()).to.deep.equal({ type: 'pong' });
    });

    itShutsDownGracefully('embed-in-express');
  });

  describe('standalone-token-auth', () => {
    const TOKEN = 'right-token';
    let example: ExampleProcess;
    before(async () => { example = await startExample('standalone-token-auth', { TOKENS: `other-token,${TOKEN}` }); });

    it('acknowledges a handshake with an accepted token', async () => {
      const client = await connect(example, { token: TOKEN });
      expect(client.serverSiteId).to.match(/^[A-Za-z0-9_-]{22}$/);
      expect(await client.ping()).to.deep.equal({ type: 'pong' });
      await connect(example, { token: 'other-token' });
    });

    for (const [label, token] of [['a wrong', 'wrong-token'], ['no', undefined]] as const) {
      it(`refuses ${label} token with a fatal AUTH_FAILED and close code 4001`, async () => {
        const { error, code } = await refusedHandshake(example, DB, token);
        expect(error).to.include({ type: 'error', code: 'AUTH_FAILED', fatal: true });
        expect(code).to.equal(4001);
      });
    }

    describe('HTTP GET /sync/:databaseId/changes', () => {
      const siteId = siteIdToWire(randomSiteId());
      const changesUrl = (): string => `${example.baseUrl}/${encodeURIComponent(DB)}/changes`;

      for (const [label, authorization] of [['no', undefined], ['a wrong', 'Bearer wrong-token']] as const) {
        it(`answers ${label} bearer token with 401 AUTH_FAILED`, async () => {
          const headers: Record<string, string> = { 'X-Site-Id': siteId };
          if (authorization) headers.Authorization = authorization;
          const res = await fetch(changesUrl(), { headers });
          expect(res.status).to.equal(401);
          const body = await res.json() as { ok: boolean; error: { code: string } };
          expect(body.ok).to.equal(false);
          expect(body.error.code).to.equal('AUTH_FAILED');
        });
      }

      it('serves the changes to the right bearer token', async () => {
        const writer = await connect(example, { token: TOKEN });
        const txn = siteOf(writer).txn([{ pk: [1], value: 'over http' }]);
        await writer.apply([txn]);
        const res = await fetch(changesUrl(), { headers: { 'X-Site-Id': siteId, Authorization: `Bearer ${TOKEN}` } });
        expect(res.status).to.equal(200);
        const body = await res.json() as { ok: boolean; data: { changes: ChangeSet[] } };
        expect(body.ok).to.equal(true);
        expect(body.data.changes.map((s) => s.transactionId)).to.deep.equal([txn.transactionId]);
      });
    });

    itShutsDownGracefully('standalone-token-auth', { TOKENS: TOKEN });
  });

  describe('custom-hooks', () => {
    const SECRET = 'acceptance-test-secret';
    const token = (userId: string, role: string): string => signedToken(SECRET, userId, role);
    let example: ExampleProcess;
    before(async () => { example = await startExample('custom-hooks', { HOOK_SECRET: SECRET }); });

    for (const [label, bad] of [
      ['a bad signature', () => `${token('mallory', 'reader').slice(0, -4)}AAAA`],
      ['a signature for another role', () => `mallory.writer.${token('mallory', 'reader').split('.')[2]}`],
      ['a token signed with another secret', () => signedToken('not-the-secret', 'mallory', 'writer')],
      ['a malformed token', () => 'not-a-token'],
      ['no token', () => undefined],
    ] as const) {
      it(`refuses ${label} with AUTH_FAILED and close code 4001`, async () => {
        const { error, code } = await refusedHandshake(example, DB, bad());
        expect(error).to.include({ code: 'AUTH_FAILED', fatal: true });
        expect(code).to.equal(4001);
      });
    }

    it('lets a reader read but not write, and keeps its session', async () => {
      const db = 'hooks:reader';
      const reader = await connect(example, { databaseId: db, token: token('bob', 'reader') });
      expect((await reader.getChanges()).changeSets).to.deep.equal([]);
      expect((await reader.snapshot()).map((c) => c.type)).to.include.members(['header', 'footer']);

      const err = await rejection(reader.apply([siteOf(reader).txn([{ pk: [1], value: 'nope' }])]));
      expect(err).to.be.instanceOf(SyncClientError);
      expect(err).to.include({ code: 'FORBIDDEN', fatal: false });

      expect(await reader.ping()).to.deep.equal({ type: 'pong' });
      expect((await reader.getChanges()).changeSets, 'nothing was stored').to.deep.equal([]);
    });

    it('rejects writes to audit_log and stores the rest of the transaction', async () => {
      const db = 'hooks:writer';
      const writer = await connect(example, { databaseId: db, token: token('alice', 'writer') });
      const txn = siteOf(writer).txn([
        { table: 'notes', pk: [1], column: 'title', value: 'kept' },
        { table: 'audit_log', pk: [1], column: 'entry', value: 'forged' },
      ]);
      const result = await writer.apply([txn]);
      expect(result).to.include({ applied: 1, transactions: 1 });
      expect(result.rejected).to.have.length(1);
      expect(result.rejected![0]).to.include({ code: 'PROTECTED_TABLE', table: 'audit_log' });
      expect(result.rejected![0]!.reason).to.be.a('string').and.not.equal('');

      const reader = await connect(example, { databaseId: db, token: token('bob', 'reader') });
      const { changeSets } = await reader.getChanges();
      expect(changeSets).to.have.length(1);
      expect(changeSets[0]!.changes).to.deep.equal([txn.changes[0]]);
    });

    it('refuses a transaction touching only audit_log without storing anything', async () => {
      const db = 'hooks:audit-only';
      const writer = await connect(example, { databaseId: db, token: token('alice', 'writer') });
      const result = await writer.apply([siteOf(writer).txn([{ table: 'audit_log', pk: [2], column: 'entry', value: 'x' }])]);
      expect(result).to.include({ applied: 0 });
      expect(result.rejected!.map((r) => r.table)).to.deep.equal(['audit_log']);
      const reader = await connect(example, { databaseId: db, token: token('bob', 'reader') });
      expect((await reader.getChanges()).changeSets).to.deep.equal([]);
    });

    it('logs connects and disconnects to stderr', async () => {
      const client = await connect(example, { databaseId: 'hooks:log', token: token('dave', 'reader') });
      const id = client.connectionId;
      expect(await example.waitForStderr(new RegExp(`^connect dave .*${id}`))).to.contain('hooks:log');
      await client.close();
      expect(await example.waitForStderr(new RegExp(`^disconnect dave .*${id}`))).to.contain('hooks:log');
    });

    itShutsDownGracefully('custom-hooks', { HOOK_SECRET: SECRET });
  });
});

/** Runs `examples/<name>.ts` to its end, in an environment without S3, AWS or coordinator settings but `env`. */
function runExample(name: string, env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const clean: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!/^(SYNC_|S3_|AWS_|DISK_EVICTION_|DEBUG$)/i.test(key)) clean[key] = value;
  const child = spawn(process.execPath, ['--import', 'tsx', `examples/${name}.ts`], {
    cwd: fileURLToPath(new URL('../../', import.meta.url)),
    env: { ...clean, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => { stdout += text; });
  child.stderr.setEncoding('utf8').on('data', (text: string) => { stderr += text; });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

describe('examples (run to their end)', function () {
  this.timeout(120_000);

  describe('s3-durability', () => {
    const restored = [
      /^stopped the coordinator and wiped its data directory \S+$/,
      /^restarted on the empty directory: example:notes was restored from S3 with 3 notes, identical$/,
      /^a note written after the restore; the reader's old cursor gets 1 change set after it, exactly that note$/,
    ];

    it('runs on a fresh clone against a local s3rver it starts itself, and shows the data restored', async () => {
      const { code, stdout, stderr } = await runExample('s3-durability');
      expect(code, stderr).to.equal(0);
      const lines = stdout.trimEnd().split('\n');
      expect(lines[0]).to.match(/^archiving to s3:\/\/sync-example\/ at http:\/\/127\.0\.0\.1:\d+ \(a local s3rver; set S3_BUCKET to use your own bucket\)$/);
      expect(lines[1]).to.match(/^wrote 3 notes to example:notes; a reader's cursor is \S+$/);
      expect(lines.slice(2)).to.have.length(restored.length);
      restored.forEach((pattern, i) => expect(lines[2 + i]).to.match(pattern));
      // Not even the AWS SDK's Node version warning.
      expect(stderr).to.equal('');
    });

    describe('with S3_* set', () => {
      let s3: S3TestServer;
      const sdkWarning = process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED;
      before(async () => {
        // This process lists the bucket with the SDK; the example's own stderr is what is checked.
        process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
        s3 = await startS3Server('example-bucket');
      });
      after(async () => {
        await s3?.close();
        if (sdkWarning === undefined) delete process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED;
        else process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = sdkWarning;
      });

      it('archives to that bucket, under a fresh prefix it leaves behind', async () => {
        const { code, stdout, stderr } = await runExample('s3-durability', {
          S3_BUCKET: s3.bucket, S3_ENDPOINT: s3.endpoint, S3_REGION: s3.region, S3_FORCE_PATH_STYLE: 'true',
          S3_ACCESS_KEY_ID: s3.accessKeyId, S3_SECRET_ACCESS_KEY: s3.secretAccessKey, S3_KEY_PREFIX: 'runs/',
        });
        expect(code, stderr).to.equal(0);
        const lines = stdout.trimEnd().split('\n');
        const archive = new RegExp(`^archiving to (s3://example-bucket/(runs/sync-coordinator-example-[0-9a-f-]{36}/) at ${s3.endpoint.replace(/\./g, '\\.')})$`).exec(lines[0]!);
        expect(archive, lines[0]).to.not.equal(null);
        restored.forEach((pattern, i) => expect(lines[2 + i]).to.match(pattern));
        expect(lines.at(-1)).to.equal(`the archive stays at ${archive![1]} (delete it when done)`);
        expect(stderr).to.equal('');

        const bucket = new S3Archive(s3.archiveOptions());
        try {
          const keys: string[] = [];
          for await (const object of bucket.list(archive![2]!)) keys.push(object.key);
          expect(keys.some((key) => /\/batches\/[0-9a-f]+-[0-9a-f]+\.json\.gz$/.test(key)), keys.join(', ')).to.equal(true);
        } finally {
          await bucket.close();
        }
      });
    });
  });
});

/** The token format of examples/custom-hooks.ts, computed independently. */
function signedToken(secret: string, userId: string, role: string): string {
  return `${userId}.${role}.${createHmac('sha256', secret).update(`${userId}.${role}`).digest('base64url')}`;
}
