import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket } from '../helpers/raw-socket.js';
import type { SyncClientError } from '../../lib/client/sync-client.js';
import { parseOptions, DEFAULTS } from '../../lib/config/options.js';
import { exceedsJsonDepth, TokenBucket, AddressRateLimiter, ConnectionCounter, clientAddress } from '../../lib/service/limits.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';

const DB = 'edge:db';
/** The largest possible HLC: wallTime 2^64-1. */
const MAX_HLC = '/'.repeat(40);

type Mutate = (sets: ChangeSet[]) => void;

/** Bad messages, each with a valid change set first, and what they must be refused with. */
const CASES: [string, Mutate, string, RegExp][] = [
  ['a change HLC at the largest value', (s) => { s[1]!.changes[0]!.hlc = MAX_HLC; }, 'CLOCK_DRIFT', /^changes\[1\]\.changes\[0\]\.hlc/],
  ['a priorHlc far ahead', (s) => { Object.assign(s[1]!.changes[0]!, { priorValue: 'old', priorHlc: MAX_HLC }); }, 'CLOCK_DRIFT', /^changes\[1\]\.changes\[0\]\.priorHlc/],
  ['a change set HLC far ahead', (s) => { s[1]!.hlc = MAX_HLC; }, 'CLOCK_DRIFT', /^changes\[1\]\.hlc/],
  ['a migration HLC far ahead', (s) => { s[1]!.schemaMigrations = [{ type: 'create_table', schema: 'main', table: 't', ddl: 'create table t (id)', hlc: MAX_HLC, schemaVersion: 1 }]; }, 'CLOCK_DRIFT', /^changes\[1\]\.schemaMigrations\[0\]\.hlc/],
  ['a junk change type', (s) => { (s[1]!.changes[0] as { type: string }).type = 'update'; }, 'INVALID_CHANGESET', /^changes\[1\]\.changes\[0\]\.type/],
  ['an unknown migration type', (s) => { s[1]!.schemaMigrations = [{ type: 'truncate_table' as never, schema: 'main', table: 't', ddl: '', hlc: s[1]!.hlc, schemaVersion: 1 }]; }, 'INVALID_CHANGESET', /^changes\[1\]\.schemaMigrations\[0\]\.type/],
  ['a number where a table name is expected', (s) => { (s[1]!.changes[0] as { table: unknown }).table = 5; }, 'INVALID_CHANGESET', /^changes\[1\]\.changes\[0\]\.table/],
  ['an array where a column name is expected', (s) => { (s[1]!.changes[0] as { column: unknown }).column = ['title']; }, 'INVALID_CHANGESET', /^changes\[1\]\.changes\[0\]\.column/],
  ['an HLC of 29 bytes', (s) => { s[1]!.changes[0]!.hlc = 'AAAA'.repeat(9) + 'AAA='; }, 'INVALID_HLC', /^changes\[1\]\.changes\[0\]\.hlc/],
  ['a site id of the wrong length', (s) => { s[1]!.siteId = 'abc'; }, 'INVALID_SITE_ID', /^changes\[1\]\.siteId/],
];

/** Replaces the JSON text of the marker string with `raw` (values JSON.stringify cannot write). */
function withRaw(body: unknown, marker: string, raw: string): string {
  return JSON.stringify(body).replace(JSON.stringify(marker), raw);
}

describe('hardening: validation at the edge', () => {
  let server: TestServer;
  const site = new TestSite();
  const reader = new TestSite();

  beforeEach(async () => { server = await startTestServer(); });
  afterEach(() => server.close());

  function batch(): ChangeSet[] {
    return [site.txn([{ pk: [1], value: 'kept?' }]), site.txn([{ pk: [2], column: 'title', value: 'x' }])];
  }

  async function storedNothing(): Promise<void> {
    const res = await fetch(`${server.baseUrl}/${DB}/changes`, { headers: { 'x-site-id': reader.wire } });
    expect((await res.json() as { data: { changes: unknown[] } }).data.changes).to.deep.equal([]);
  }

  for (const [what, mutate, code, path] of CASES) {
    it(`refuses a message with ${what} whole (${code}), stores nothing of it and keeps the session`, async () => {
      const client = await server.connect(DB, { siteId: site.wire });
      const sets = batch();
      mutate(sets);
      const err = await client.request('error', { type: 'apply_changes', requestId: 'x', changes: sets }) as unknown as { code: string; message: string; fatal: boolean };
      expect(err).to.include({ code, fatal: false });
      expect(err.message).to.match(path);
      await client.ping();
      const res = await fetch(`${server.baseUrl}/${DB}/changes`, { method: 'POST', headers: { 'x-site-id': site.wire }, body: JSON.stringify({ changes: sets }) });
      expect(res.status).to.equal(400);
      expect((await res.json() as { error: { code: string } }).error.code).to.equal(code);
      await storedNothing();
    });
  }

  it('refuses non-finite numbers (1e999) in values, keys and schema versions', async () => {
    const client = await server.connect(DB, { siteId: site.wire });
    const value = withRaw({ type: 'apply_changes', changes: [site.txn([{ pk: [1], value: 'MARK' }])] }, 'MARK', '1e999');
    const pk = withRaw({ type: 'apply_changes', changes: [site.txn([{ pk: ['MARK'], value: 1 }])] }, 'MARK', '-1e999');
    const version = withRaw({ type: 'apply_changes', changes: [site.txn([], [{ table: 't', schemaVersion: 'MARK' as never }])] }, 'MARK', '1e999');
    for (const [frame, field] of [[value, '.value'], [pk, '.pk[0]'], [version, '.schemaVersion']] as const) {
      const err = await client.request('error', frame) as unknown as { code: string; message: string };
      expect(err.code).to.equal('INVALID_CHANGESET');
      expect(err.message).to.contain(field);
    }
    await storedNothing();
  });

  it('checks HTTP headers, query parameters and body encodings', async () => {
    const url = `${server.baseUrl}/${DB}/changes`;
    const codeOf = async (res: Response): Promise<[number, string]> => [res.status, (await res.json() as { error: { code: string } }).error.code];
    expect(await codeOf(await fetch(`${url}?sinceHLC=a&sinceHLC=b`, { headers: { 'x-site-id': reader.wire } }))).to.deep.equal([400, 'INVALID_HLC']);
    expect(await codeOf(await fetch(url, { headers: { 'x-site-id': 'abc' } }))).to.deep.equal([400, 'INVALID_SITE_ID']);
    expect(await codeOf(await fetch(url, { headers: { 'x-site-id': `${reader.wire}, ${site.wire}` } }))).to.deep.equal([400, 'INVALID_SITE_ID']);
    const body = JSON.stringify({ changes: batch() });
    expect(await codeOf(await fetch(url, { method: 'POST', headers: { 'x-site-id': site.wire, 'content-type': 'application/json; charset=utf-16' }, body }))).to.deep.equal([400, 'INVALID_BODY']);
    const invalidUtf8 = Buffer.concat([Buffer.from(body.slice(0, -2)), Buffer.from([0xc3, 0x28]), Buffer.from(body.slice(-2))]);
    expect(await codeOf(await fetch(url, { method: 'POST', headers: { 'x-site-id': site.wire }, body: invalidUtf8 }))).to.deep.equal([400, 'INVALID_BODY']);
    expect(await codeOf(await fetch(url, { method: 'POST', headers: { 'x-site-id': site.wire } }))).to.deep.equal([400, 'INVALID_BODY']);
    expect(await codeOf(await fetch(url, { method: 'POST', headers: { 'x-site-id': site.wire }, body: '{"changes": [' }))).to.deep.equal([400, 'INVALID_BODY']);
    // Identity is checked before the body is read.
    expect(await codeOf(await fetch(url, { method: 'POST', body: '{"changes": [' }))).to.deep.equal([401, 'AUTH_FAILED']);
    await storedNothing();
  });

  it('refuses an empty, null or non-string sinceHLC in get_changes with INVALID_HLC and keeps the session', async () => {
    const writer = await server.connect(DB, { siteId: site.wire });
    await writer.apply([site.txn([{ pk: [1], value: 'x' }])]);
    const client = await server.connect(DB, { siteId: reader.wire });
    for (const sinceHLC of ['', null, 0, false, {}]) {
      // Answered with `changes` (the whole history) before the fix, so this fails at once rather than timing out.
      const err = await client.getChanges(sinceHLC as never).then(() => expect.fail(`${JSON.stringify(sinceHLC)}: should refuse`), (e: SyncClientError) => e);
      expect(err, JSON.stringify(sinceHLC)).to.include({ code: 'INVALID_HLC', fatal: false });
      expect(err.message).to.match(/^sinceHLC: /);
    }
    // Only an absent sinceHLC reads from the beginning.
    expect((await client.getChanges()).changeSets).to.have.length(1);
  });

  describe('upgrades', () => {
    it('refuses browsers from origins outside corsOrigin with 403, and lets other clients in', async () => {
      await server.close();
      server = await startTestServer({ corsOrigin: ['https://app.example.com'] });
      const evil = await RawSocket.open(server.wsUrl, { headers: { origin: 'https://evil.example.com' } }).then(() => undefined, (err: { status?: number }) => err);
      expect(evil?.status).to.equal(403);
      for (const headers of [{ origin: 'https://app.example.com' }, {}] as Record<string, string>[]) {
        const socket = await RawSocket.open(server.wsUrl, { headers });
        await socket.close();
      }
    });

    it('keys connection limits by X-Forwarded-For only with trustProxy', async () => {
      for (const trustProxy of [false, true]) {
        await server.close();
        server = await startTestServer({ maxConnectionsPerIp: 1, trustProxy });
        const first = await RawSocket.open(server.wsUrl, { headers: { 'x-forwarded-for': '203.0.113.1' } });
        const second = await RawSocket.open(server.wsUrl, { headers: { 'x-forwarded-for': 'spoofed, 203.0.113.2' } }).then((s) => s, (err: { status?: number }) => err);
        if (trustProxy) {
          expect(second).to.be.instanceOf(RawSocket);
          const third = await RawSocket.open(server.wsUrl, { headers: { 'x-forwarded-for': '203.0.113.1' } }).then(() => undefined, (err: { status?: number }) => err);
          expect(third?.status).to.equal(429);
          await (second as RawSocket).close();
        } else {
          expect((second as { status?: number }).status).to.equal(429);
        }
        await first.close();
      }
    });
  });
});

describe('hardening: limit building blocks', () => {
  describe('options', () => {
    it('documents a default for every limit and refuses out-of-range values with TypeError', () => {
      const config = parseOptions({});
      for (const key of ['maxChangesPerMessage', 'maxJsonDepth', 'maxConnections', 'maxConnectionsPerIp', 'messagesPerSecond', 'messageBurst', 'messagesPerSecondPerIp', 'messageBurstPerIp', 'pushHighWaterBytes', 'sendHighWaterBytes', 'sendHardLimitBytes', 'sendHardLimitMs', 'trustProxy'] as const) {
        expect(config[key], key).to.equal(DEFAULTS[key]);
      }
      expect(() => parseOptions({ maxJsonDepth: 2 })).to.throw(TypeError, /maxJsonDepth/);
      expect(() => parseOptions({ sendHardLimitMs: 2 ** 31 })).to.throw(TypeError, /sendHardLimitMs/);
      expect(() => parseOptions({ handshakeTimeoutMs: 2 ** 40 })).to.throw(TypeError, /handshakeTimeoutMs/);
      expect(() => parseOptions({ messageBurst: 0 })).to.throw(TypeError, /messageBurst/);
      expect(() => parseOptions({ trustProxy: 'yes' as never })).to.throw(TypeError, /trustProxy/);
    });

    it('takes frames of a real 1,000-change batch (64 MiB) and bounds inbound bytes at twice that unless told otherwise', () => {
      expect(parseOptions({}).maxMessageBytes).to.equal(64 * 1024 * 1024);
      expect(parseOptions({}).maxInboundBytes).to.equal(DEFAULTS.maxInboundBytes).and.to.equal(128 * 1024 * 1024);
      expect(parseOptions({ maxMessageBytes: 4096 }).maxInboundBytes, 'follows maxMessageBytes').to.equal(8192);
      expect(parseOptions({ maxMessageBytes: 4096, maxInboundBytes: 4096 }).maxInboundBytes).to.equal(4096);
      expect(() => parseOptions({ maxMessageBytes: 4096, maxInboundBytes: 4095 })).to.throw(TypeError, 'Option "maxInboundBytes" must be at least maxMessageBytes (4096) so one largest message fits, got 4095');
    });
  });

  describe('#exceedsJsonDepth', () => {
    const depth = (text: string, max: number): boolean => exceedsJsonDepth(Buffer.from(text), max);
    it('counts arrays and objects, not brackets inside strings or after escaped quotes', () => {
      expect(depth('[[[1]]]', 3)).to.equal(false);
      expect(depth('[[[[1]]]]', 3)).to.equal(true);
      expect(depth('{"a":{"b":{"c":[1]}}}', 3)).to.equal(true);
      expect(depth(`["${'['.repeat(50)}"]`, 3)).to.equal(false);
      expect(depth(`["\\"${'['.repeat(50)}"]`, 3)).to.equal(false);
      expect(depth(`["\\\\",${'['.repeat(5)}]`, 3)).to.equal(true);
      expect(depth(`"${'{'.repeat(50)}`, 3)).to.equal(false);
    });
  });

  describe('TokenBucket', () => {
    it('grants a burst, then refills at the rate', () => {
      const bucket = new TokenBucket(10, 3, 0);
      expect([bucket.take(0), bucket.take(0), bucket.take(0)]).to.deep.equal([0, 0, 0]);
      expect(bucket.take(0)).to.equal(100);
      expect(bucket.take(100)).to.equal(0);
      expect(bucket.take(10_000)).to.equal(0);
      expect([bucket.take(10_000), bucket.take(10_000), bucket.take(10_000)]).to.deep.equal([0, 0, 100]);
    });
  });

  describe('AddressRateLimiter', () => {
    it('keeps one bucket per address and forgets the least recently seen beyond its bound', () => {
      const limiter = new AddressRateLimiter(1, 1, 2);
      expect(limiter.take('a', 0)).to.equal(0);
      expect(limiter.take('a', 0)).to.be.greaterThan(0);
      expect(limiter.take('b', 0)).to.equal(0);
      expect(limiter.take('c', 0)).to.equal(0);
      expect(limiter.size).to.equal(2);
      // "a" was forgotten: it starts again with a full bucket.
      expect(limiter.take('a', 0)).to.equal(0);
    });
  });

  describe('ConnectionCounter', () => {
    it('refuses over the total and per-address limits and counts closes', () => {
      const counter = new ConnectionCounter(3, 2);
      counter.opened('a');
      counter.opened('a');
      expect(counter.check('a')).to.equal('address');
      counter.opened('b');
      expect(counter.check('c')).to.equal('total');
      counter.closed('a');
      expect(counter.check('a')).to.equal(undefined);
      counter.closed('zzz');
      expect(counter.size).to.equal(2);
    });
  });

  describe('#clientAddress', () => {
    it('takes the last X-Forwarded-For entry only when the proxy is trusted', () => {
      expect(clientAddress('1.1.1.1, 2.2.2.2', '127.0.0.1', false)).to.equal('127.0.0.1');
      expect(clientAddress('1.1.1.1, 2.2.2.2', '127.0.0.1', true)).to.equal('2.2.2.2');
      expect(clientAddress(undefined, '127.0.0.1', true)).to.equal('127.0.0.1');
      expect(clientAddress(' , ', '127.0.0.1', true)).to.equal('127.0.0.1');
    });
  });
});
