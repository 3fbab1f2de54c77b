import { expect } from 'chai';
import { once } from 'node:events';
import WebSocket from 'ws';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket, type Received } from '../helpers/raw-socket.js';
import { ReferenceClient, countRows, expectedState, readServerState, settle } from '../helpers/reference-client.js';
import { eventually } from '../helpers/coordinator-process.js';
import { compareHlc, encodeHlc, hlcFromWire, hlcToWire } from '../../lib/protocol/hlc.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';

const DB = 'acme:delivery';

type Frame = Received & { changeSets?: ChangeSet[]; hasMore?: boolean; code?: string; fatal?: boolean; message?: string; siteId?: string; sinceHLC?: string; serverSiteId?: string };

/** Writes `n` one-row transactions from `site` over HTTP, `per` per request. */
async function write(server: TestServer, site: TestSite, n: number, per = 500, from = 0): Promise<ChangeSet[]> {
  const all: ChangeSet[] = [];
  for (let i = 0; i < n; i += per) {
    const sets = Array.from({ length: Math.min(per, n - i) }, (_, k) => site.txn([{ pk: [from + i + k], column: 'v', value: `row ${from + i + k}` }]));
    const res = await fetch(`${server.baseUrl}/${DB}/changes`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-site-id': site.wire }, body: JSON.stringify({ changes: sets }),
    });
    expect(res.status).to.equal(200);
    all.push(...sets);
  }
  return all;
}

/** Reads frames until `done` says stop; returns them. */
async function collect(socket: RawSocket, done: (frames: Frame[]) => boolean): Promise<Frame[]> {
  const frames: Frame[] = [];
  while (!done(frames)) frames.push(await socket.next() as Frame);
  return frames;
}

describe('delivery over WebSocket (docs/protocol.md §9)', () => {
  let server: TestServer;
  const sockets: RawSocket[] = [];
  beforeEach(async () => { server = await startTestServer({ batchSize: 100 }); });
  afterEach(async () => {
    await Promise.all(sockets.splice(0).map((s) => s.close()));
    await server.close();
  });

  async function connect(site: TestSite, extra: Record<string, unknown> = {}): Promise<{ socket: RawSocket; ack: Frame }> {
    const { socket, reply } = await RawSocket.handshake(server.wsUrl, DB, site.wire, extra);
    sockets.push(socket);
    expect(reply.type).to.equal('handshake_ack');
    return { socket, ack: reply as Frame };
  }

  it('answers ONE get_changes with every page, in stamp order, hasMore on all but the last', async () => {
    const writer = new TestSite();
    const written = await write(server, writer, 2500);
    const { socket } = await connect(new TestSite());
    socket.send(JSON.stringify({ type: 'get_changes' }));
    const frames = await collect(socket, (f) => f.length > 0 && f.at(-1)!.hasMore === false);
    expect(frames.every((f) => f.type === 'changes')).to.equal(true);
    expect(frames.length).to.equal(25);
    expect(frames.slice(0, -1).every((f) => f.hasMore === true)).to.equal(true);
    const sets = frames.flatMap((f) => f.changeSets!);
    expect(sets.map((s) => s.transactionId)).to.deep.equal(written.map((s) => s.transactionId));
    for (let i = 1; i < sets.length; i++) expect(compareHlc(hlcFromWire(sets[i]!.hlc), hlcFromWire(sets[i - 1]!.hlc))).to.equal(1);
    // Then live: nothing more until another write, which comes as a push.
    const more = await write(server, writer, 1, 1, 5000);
    const push = await socket.next() as Frame;
    expect(push.type).to.equal('push_changes');
    expect(push.changeSets!.map((s) => s.transactionId)).to.deep.equal([more[0]!.transactionId]);
  });

  it('sends later writes to a socket whose get_changes cursor is ahead of every stamp of the log (a watermark from the future)', async () => {
    const writer = new TestSite();
    await write(server, writer, 3, 1);
    const { socket } = await connect(new TestSite());
    // Ten years ahead: no stamp of this server reaches it for a decade.
    const ahead = hlcToWire(encodeHlc({ wallTime: Date.now() + 10 * 365 * 86_400_000, counter: 0, siteId: Buffer.alloc(16, 7), opSeq: 0 }));
    socket.send(JSON.stringify({ type: 'get_changes', sinceHLC: ahead }));
    const first = await socket.next() as Frame;
    expect(first.type).to.equal('changes');
    expect(first.changeSets).to.deep.equal([]);
    const more = await write(server, writer, 2, 1, 10);
    const pushed: ChangeSet[] = [];
    while (pushed.length < 2) {
      const frame = await socket.next(5000) as Frame;
      expect(frame.type, JSON.stringify(frame).slice(0, 200)).to.equal('push_changes');
      pushed.push(...frame.changeSets!);
    }
    expect(pushed.map((set) => set.transactionId)).to.deep.equal(more.map((set) => set.transactionId));
  });

  it('misses no write committed around a get_changes whose cursor is ahead of the log, under concurrent writes', async () => {
    const writers = [new TestSite(), new TestSite()];
    let stop = false;
    let next = 100;
    // Single-row transactions, two writers with two requests in flight each, until stopped.
    const writing = writers.flatMap((site) => [0, 1].map(async () => {
      while (!stop) await write(server, site, 1, 1, next++);
    }));
    const ahead = hlcToWire(encodeHlc({ wallTime: Date.now() + 10 * 365 * 86_400_000, counter: 0, siteId: Buffer.alloc(16, 7), opSeq: 0 }));
    const received: string[][] = [];
    try {
      for (let i = 0; i < 12; i++) {
        const { socket } = await connect(new TestSite());
        socket.send(JSON.stringify({ type: 'get_changes', sinceHLC: ahead }));
        const stamps: string[] = [];
        const until = Date.now() + 150;
        while (Date.now() < until) {
          const frame = await socket.next(1000).catch(() => undefined) as Frame | undefined;
          if (frame?.changeSets) stamps.push(...frame.changeSets.map((set) => set.hlc));
        }
        received.push(stamps);
      }
    } finally {
      stop = true;
      await Promise.all(writing);
    }
    // The whole log, page by page.
    const all: string[] = [];
    for (let hasMore = true; hasMore;) {
      const query = all.length > 0 ? `?sinceHLC=${encodeURIComponent(all.at(-1)!)}` : '';
      const res = await fetch(`${server.baseUrl}/${DB}/changes${query}`, { headers: { 'x-site-id': new TestSite().wire } });
      const page = ((await res.json()) as { data: { changes: ChangeSet[]; hasMore: boolean } }).data;
      all.push(...page.changes.map((set) => set.hlc));
      hasMore = page.hasMore;
    }
    const gaps: string[] = [];
    for (const [i, stamps] of received.entries()) {
      if (stamps.length === 0) continue;
      const got = new Set(stamps);
      const from = all.indexOf(stamps[0]!);
      const to = all.indexOf(stamps.at(-1)!);
      for (let k = from; k <= to; k++) if (!got.has(all[k]!)) gaps.push(`socket ${i}: log entry ${k}`);
    }
    expect(received.some((stamps) => stamps.length > 0), 'the sockets got writes').to.equal(true);
    expect(gaps, 'every write between the first and the last one a socket got reached it').to.deep.equal([]);
  });

  it('gives a client that says clientPaging one page per get_changes', async () => {
    await write(server, new TestSite(), 250);
    const { socket } = await connect(new TestSite(), { clientPaging: true });
    const page = await socket.request({ type: 'get_changes' }, ['changes']) as Frame;
    expect(page.changeSets).to.have.length(100);
    expect(page.hasMore).to.equal(true);
    expect((await socket.request({ type: 'ping' }, ['pong', 'changes'])).type, 'no second page unasked').to.equal('pong');
  });

  it('pushes carry the coordinator stamp, the same hlc a later get_changes returns', async () => {
    const writer = new TestSite();
    const { socket: reader } = await connect(new TestSite());
    const { socket: w } = await connect(writer);
    const set = writer.txn([{ pk: [1], value: 'a' }]);
    expect((await w.request({ type: 'apply_changes', requestId: 'x', changes: [set] }, ['apply_result'])).type).to.equal('apply_result');
    const push = await reader.until(['push_changes']) as Frame;
    expect(push.changeSets![0]!.transactionId).to.equal(set.transactionId);
    expect(push.changeSets![0]!.hlc, 'not the origin HLC').to.not.equal(set.hlc);
    const { socket: late } = await connect(new TestSite());
    const page = await late.request({ type: 'get_changes' }, ['changes']) as Frame;
    expect(page.changeSets![0]!.hlc).to.equal(push.changeSets![0]!.hlc);
    expect(page.changeSets![0]!.changes).to.deep.equal(set.changes);
  });

  it('sends every frame as text, pushes too (a browser hands a binary frame to the app as a Blob, not JSON text)', async () => {
    const writer = new TestSite();
    const reader = new WebSocket(server.wsUrl, { perMessageDeflate: false });
    const frames: { type: string; binary: boolean }[] = [];
    const pushed = new Promise<void>((resolve) => reader.on('message', (data: Buffer, isBinary: boolean) => {
      const type = (JSON.parse(data.toString('utf8')) as { type: string }).type;
      frames.push({ type, binary: isBinary });
      if (type === 'push_changes') resolve();
    }));
    try {
      await once(reader, 'open');
      reader.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: new TestSite().wire, protocolVersion: 1 }));
      const { socket: w } = await connect(writer);
      await w.request({ type: 'get_changes' }, ['changes']);
      // Two subscribers share one push frame: the reader's copy is the one every socket gets.
      const { socket: other } = await connect(new TestSite());
      expect((await w.request({ type: 'apply_changes', requestId: 'x', changes: [writer.txn([{ pk: [1], value: 'a' }])] }, ['apply_result'])).type).to.equal('apply_result');
      await pushed;
      expect((await other.until(['push_changes'])).type).to.equal('push_changes');
      expect(frames.map((f) => f.type)).to.include.members(['handshake_ack', 'push_changes']);
      expect(frames.filter((f) => f.binary), 'binary frames').to.deep.equal([]);
    } finally {
      reader.close();
    }
  });

  it('pulls a client backlog: request_changes after a batch of 1,000+ changes, none after a smaller one', async () => {
    const client = new TestSite();
    const { socket, ack } = await connect(client);
    const batch = Array.from({ length: 100 }, (_, i) => client.txn(Array.from({ length: 10 }, (_, j) => ({ pk: [i], column: `c${j}`, value: j }))));
    socket.send(JSON.stringify({ type: 'apply_changes', requestId: 'apply-1', changes: batch }));
    const reply = await socket.next() as Frame;
    expect(reply).to.include({ type: 'apply_result', requestId: 'apply-1' });
    const pull = await socket.next() as Frame;
    const largest = batch.map((s) => s.hlc).sort((a, b) => compareHlc(hlcFromWire(a), hlcFromWire(b))).at(-1);
    expect(pull).to.deep.equal({ type: 'request_changes', siteId: ack.serverSiteId, sinceHLC: largest });
    // The client answers with its next batch (no requestId); a small one ends the pull.
    const rest = [client.txn([{ pk: [1000], value: 'last' }])];
    socket.send(JSON.stringify({ type: 'apply_changes', changes: rest }));
    const last = await socket.next() as Frame;
    expect(last.type).to.equal('apply_result');
    expect(last).to.not.have.property('requestId');
    expect((await socket.request({ type: 'ping' }, ['pong', 'request_changes'])).type).to.equal('pong');
  });

  it('answers a store that cannot open with a transient error and close 1011, never AUTH_FAILED or a file path', async () => {
    // A file where the database's directory should be: LevelDB cannot open it.
    const dir = databaseDirectory(server.dataDir, DB);
    await mkdir(dirname(dir), { recursive: true });
    await writeFile(dir, 'not a database');
    const { socket, reply } = await RawSocket.handshake(server.wsUrl, DB, new TestSite().wire);
    sockets.push(socket);
    const error = reply as Frame;
    expect(error).to.include({ type: 'error', code: 'INTERNAL_ERROR', fatal: false });
    expect(error.message).to.not.contain(server.dataDir);
    expect(await socket.closed).to.equal(1011);
    const http = await fetch(`${server.baseUrl}/${DB}/changes`, { headers: { 'x-site-id': new TestSite().wire } });
    expect(http.status).to.equal(500);
    expect(await http.text()).to.not.contain(server.dataDir);
  });
});

describe('writes refused by a rate limit (docs/protocol.md §9)', () => {
  it('pulls back the writes it refused with RATE_LIMITED from a real client that then went quiet', async () => {
    // Two messages a second: the handshake, get_changes and the first push take the burst.
    const server = await startTestServer({ messagesPerSecond: 2, messageBurst: 3, messagesPerSecondPerIp: 0 });
    const client = new ReferenceClient({ url: server.wsUrl, databaseId: DB, debounceMs: 0 });
    try {
      client.start();
      await client.whenReady();
      for (let i = 0; i < 8; i++) {
        client.write({ pk: [i], values: { v: `row ${i}` } });
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      // A real client pushes again only on its next commit or reconnect (§8); there is none:
      // the server holds every row only if it asks for the refused ones.
      const reader = new TestSite().wire;
      const storedRows = async (): Promise<unknown[]> => {
        const res = await fetch(`${server.baseUrl}/${DB}/changes`, { headers: { 'x-site-id': reader } });
        const sets = ((await res.json()) as { data: { changes: ChangeSet[] } }).data.changes;
        return [...new Set(sets.flatMap((set) => set.changes.map((c) => (c as { pk: unknown[] }).pk[0])))].sort();
      };
      expect(client.errors.map((e) => e.code), 'the load was over the limit').to.include('RATE_LIMITED');
      expect(await eventually(async () => (await storedRows()).length === 8, 300, 100), `stored: ${JSON.stringify(await storedRows())}`).to.equal(true);
      expect(await storedRows()).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7]);
    } finally {
      await client.stop();
      await server.close();
    }
  });
});

describe('a refused transaction of several facts, pulled back (docs/protocol.md §8, §9)', () => {
  it('gets every fact of a refused multi-column transaction back from a real client, not only its last', async () => {
    // The handshake and get_changes take the burst: the client's first push is refused with RATE_LIMITED.
    const server = await startTestServer({ messagesPerSecond: 1, messageBurst: 2, messagesPerSecondPerIp: 0 });
    const client = new ReferenceClient({ url: server.wsUrl, databaseId: DB, debounceMs: 0 });
    try {
      client.write({ table: 'items', pk: [1], values: { a: 'A', b: 'B', c: 'C' } });
      client.start();
      await client.whenReady();
      const expected = expectedState([client]);
      const held = async (): Promise<boolean> => (await readServerState(server.baseUrl, DB)).model.sameAs(expected);
      expect(await eventually(held, 100, 100), `server: ${JSON.stringify((await readServerState(server.baseUrl, DB)).model.diff(expected))}`).to.equal(true);
      expect(client.errors.map((e) => e.code), 'the push was refused').to.include('RATE_LIMITED');
    } finally {
      await client.stop();
      await server.close();
    }
  });
});

describe('reads over a rate limit (docs/protocol.md §4, limits)', () => {
  /** POSTs rows `from`..`from + n - 1` in one request, again after a 429 (the per-address limit covers HTTP too). */
  async function writeRows(server: TestServer, site: TestSite, n: number, from: number): Promise<void> {
    const body = JSON.stringify({ changes: Array.from({ length: n }, (_, k) => site.txn([{ pk: [from + k], column: 'v', value: `row ${from + k}` }])) });
    const stored = await eventually(async () => (await fetch(`${server.baseUrl}/${DB}/changes`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-site-id': site.wire }, body,
    })).status === 200, 100, 100);
    expect(stored, 'the write went through').to.equal(true);
  }

  /** Rows 0..n-1 of the writer, as the device holds them. */
  function rowsOf(device: ReferenceClient, n: number): number {
    return countRows(device.model, Array.from({ length: n }, (_, i) => [i]), 'notes');
  }

  // Per socket one message a second with a burst of one: the handshake takes it, so the one
  // get_changes of a device with local rows (no snapshot) comes over the rate.
  it('delays, and does not drop, the one get_changes of a real client that came over the per-socket rate', async () => {
    const server = await startTestServer({ messagesPerSecond: 1, messageBurst: 1, messagesPerSecondPerIp: 0 });
    const writer = new TestSite();
    const device = new ReferenceClient({ url: server.wsUrl, databaseId: DB, reconnectDelayMs: 20, record: true, offline: true });
    try {
      await writeRows(server, writer, 5, 0);
      device.start();
      device.write({ pk: [1000], values: { v: 'written offline' } });
      device.goOnline();
      await device.whenReady();
      await writeRows(server, writer, 5, 5);
      expect(await settle([device], () => rowsOf(device, 10) === 10, { quietMs: 3000, maxMs: 20_000 }), `holds ${rowsOf(device, 10)} of 10 rows (${device.errorSummary()})`).to.equal(true);
      expect(device.sent().map((m) => m.type).filter((t) => t !== 'apply_changes'), 'a real client asks once').to.deep.equal(['handshake', 'get_changes']);
      // Its push may still be refused (and pulled later): only writes are.
      expect(device.errors.filter((e) => e.code !== 'RATE_LIMITED'), 'no other error').to.deep.equal([]);
      expect(device.connections, 'on its first connection').to.equal(1);
    } finally {
      await device.stop();
      await server.close();
    }
  });

  // Per address two a second with a burst of one: the upgrade takes it, so the
  // handshake, get_snapshot and get_changes all come over the rate.
  it('delays the handshake, get_snapshot and get_changes of a real client over the per-address rate', async () => {
    const server = await startTestServer({ messagesPerSecond: 0, messagesPerSecondPerIp: 2, messageBurstPerIp: 1 });
    const writer = new TestSite();
    const device = new ReferenceClient({ url: server.wsUrl, databaseId: DB, reconnectDelayMs: 20 });
    try {
      await writeRows(server, writer, 5, 0);
      device.start();
      await device.whenReady();
      await writeRows(server, writer, 5, 5);
      expect(await settle([device], () => rowsOf(device, 10) === 10, { quietMs: 3000, maxMs: 20_000 }), `holds ${rowsOf(device, 10)} of 10 rows (${device.errorSummary()})`).to.equal(true);
      // Its push of what the snapshot brought may still be refused (and pulled later): only writes are.
      expect(device.errors.filter((e) => e.code !== 'RATE_LIMITED'), 'no other error').to.deep.equal([]);
      expect(device.connections, 'on its first connection').to.equal(1);
    } finally {
      await device.stop();
      await server.close();
    }
  });
});

describe('real clients on a database past its retention floor (docs/protocol.md §5, §9)', () => {
  let server: TestServer;
  const clients: ReferenceClient[] = [];
  const writer = new TestSite();
  beforeEach(async () => {
    // Pages of 10 changes; every tombstone is swept at once.
    server = await startTestServer({ retentionHorizonMs: 1, sweepIntervalMs: 50, batchSize: 10 });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) await c.stop();
    await server.close();
  });

  /** 30 rows, row 0 deleted and its tombstone swept (the floor then stands above the first 30 stamps), 10 more rows. */
  async function historyPastTheFloor(): Promise<void> {
    await write(server, writer, 30, 1);
    const first = ((await (await fetch(`${server.baseUrl}/${DB}/changes`, { headers: { 'x-site-id': new TestSite().wire } })).json()) as { data: { changes: ChangeSet[] } }).data.changes[0]!.hlc;
    const res = await fetch(`${server.baseUrl}/${DB}/changes`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-site-id': writer.wire }, body: JSON.stringify({ changes: [writer.txn([{ pk: [0], delete: true }])] }),
    });
    expect(res.status).to.equal(200);
    const expired = async (): Promise<boolean> => (await fetch(`${server.baseUrl}/${DB}/changes?sinceHLC=${encodeURIComponent(first)}`, { headers: { 'x-site-id': new TestSite().wire } })).status === 410;
    expect(await eventually(expired), 'the sweep raised the floor past the first stamps').to.equal(true);
    await write(server, writer, 10, 1, 30);
  }

  function client(options: { offline?: boolean } = {}): ReferenceClient {
    const c = new ReferenceClient({ url: server.wsUrl, databaseId: DB, reconnectDelayMs: 20, ...options });
    clients.push(c);
    return c;
  }

  it('brings a device whose first get_changes has no watermark (local rows, no snapshot) every change, however many pages', async () => {
    await historyPastTheFloor();
    const device = client({ offline: true });
    device.start();
    device.write({ pk: [1000], values: { v: 'written offline' } });
    device.goOnline();
    const { model } = await readServerState(server.baseUrl, DB);
    expect(await settle([device], async () => device.model.sameAs((await readServerState(server.baseUrl, DB)).model), { quietMs: 500, maxMs: 20_000 }), `${device.errorSummary()}`).to.equal(true);
    expect(device.errors.map((e) => e.code)).to.deep.equal([]);
    expect(model.rows.size).to.be.greaterThan(30);
  });

  it('sends a device whose watermark is older than the floor SNAPSHOT_REQUIRED, then every live change after it', async () => {
    // A row first, so that the device's replica is not empty: it then asks for changes from its watermark, not for a snapshot.
    await write(server, writer, 1, 1, 500);
    const device = client();
    device.start();
    await device.whenReady();
    expect(await settle([device], () => device.model.rows.size === 1, { quietMs: 500, maxMs: 20_000 })).to.equal(true);
    device.goOffline();
    await historyPastTheFloor();
    device.goOnline();
    expect(await settle([device], async () => device.model.sameAs((await readServerState(server.baseUrl, DB)).model), { quietMs: 500, maxMs: 20_000 }), `${device.errorSummary()}`).to.equal(true);
    expect(device.errors.map((e) => e.code), 'told, for a client that would bootstrap again').to.include('SNAPSHOT_REQUIRED');
  });
});
