import { expect } from 'chai';
import { request } from 'node:http';
import { TestSite } from '../helpers/changes.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, eventually, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket, type Received } from '../helpers/raw-socket.js';

const DB = 'limits:db';

/** POST <baseUrl><path> with a raw body on a fresh connection. */
function post(proc: CoordinatorProcess, path: string, body: string | Buffer, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${proc.baseUrl}${path}`, { method: 'POST', agent: false, headers: { connection: 'close', 'content-type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
    });
    // The server may answer (413) and close before it read the whole body.
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : reject(err)));
    req.end(body);
  });
}

function errorOf(m: Received): { code: string; message: string; fatal: boolean } {
  expect(m.type, JSON.stringify(m).slice(0, 200)).to.equal('error');
  return m as unknown as { code: string; message: string; fatal: boolean };
}

describe('hardening: limits (against a coordinator process)', function () {
  this.timeout(60_000);
  after(() => cleanupCoordinatorProcesses());

  describe('per-connection and size limits', () => {
    let proc: CoordinatorProcess;
    const site = new TestSite();
    const reader = new TestSite();
    before(async () => {
      proc = await startCoordinatorProcess({
        router: {
          messagesPerSecond: 5, messageBurst: 5, messagesPerSecondPerIp: 0,
          maxMessageBytes: 64 * 1024, maxChangesPerMessage: 10, maxConnectionsPerIp: 4, handshakeTimeoutMs: 500,
        },
      });
    });
    after(() => proc?.cleanup());
    afterEach(() => expect(proc.alive(), 'the process is still running').to.equal(true));

    async function connect(): Promise<RawSocket> {
      const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, site.wire);
      expect(reply.type).to.equal('handshake_ack');
      return socket;
    }

    /** Sends pings until one is answered with pong (the bucket refills at 5/s). */
    async function pongs(socket: RawSocket): Promise<boolean> {
      return eventually(async () => (await socket.request({ type: 'ping' }, ['pong', 'error'])).type === 'pong', 40, 250);
    }

    it('answers messages over the per-connection rate with RATE_LIMITED and keeps the session', async () => {
      const socket = await connect();
      for (let i = 0; i < 20; i++) socket.send('{"type":"ping"}');
      const replies: Received[] = [];
      for (let i = 0; i < 20; i++) replies.push(await socket.next());
      const limited = replies.filter((m) => m.type === 'error');
      expect(replies.filter((m) => m.type === 'pong').length).to.be.at.least(1);
      expect(limited.length).to.be.at.least(10);
      for (const m of limited) {
        expect(errorOf(m)).to.include({ code: 'RATE_LIMITED', fatal: false });
        expect(errorOf(m).message).to.match(/retry in \d+ ms/);
      }
      expect(await pongs(socket)).to.equal(true);
      await socket.close();
    });

    it('delays get_changes over the per-connection rate instead of refusing it (a real client asks once), in order with the frames after it', async () => {
      const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, reader.wire, { clientPaging: true });
      expect(reply.type).to.equal('handshake_ack');
      // The handshake took one of the burst of 5: four of these come over the rate.
      for (let i = 0; i < 8; i++) socket.send('{"type":"get_changes"}');
      socket.send('{"type":"ping"}');
      const replies: Received[] = [];
      for (let i = 0; i < 9; i++) replies.push(await socket.next());
      expect(replies.map((m) => m.type)).to.deep.equal([...Array<string>(8).fill('changes'), 'error']);
      expect(errorOf(replies[8]!).code, 'a ping over the rate is still refused').to.equal('RATE_LIMITED');
      expect(await pongs(socket)).to.equal(true);
      await socket.close();
    });

    it('ends the wait of a delayed get_changes when its socket closes, and keeps serving', async () => {
      const { socket } = await RawSocket.handshake(proc.wsUrl, DB, reader.wire, { clientPaging: true });
      for (let i = 0; i < 40; i++) socket.send('{"type":"get_changes"}');
      await socket.close();
      const again = await connect();
      expect(await pongs(again)).to.equal(true);
      await again.close();
    });

    it('closes a frame over maxMessageBytes with 1009, and the process keeps serving', async () => {
      const socket = await connect();
      socket.send(JSON.stringify({ type: 'apply_changes', changes: [site.txn([{ pk: [1], value: 'x'.repeat(70 * 1024) }])] }));
      expect(await socket.closed).to.equal(1009);
      const again = await connect();
      expect((await again.request({ type: 'ping' }, ['pong'])).type).to.equal('pong');
      await again.close();
    });

    it('answers an HTTP body over maxMessageBytes with 413 PAYLOAD_TOO_LARGE', async () => {
      const body = JSON.stringify({ changes: [site.txn([{ pk: [1], value: 'x'.repeat(70 * 1024) }])] });
      const res = await post(proc, `/${DB}/changes`, body, { 'x-site-id': site.wire });
      expect(res.status).to.equal(413);
      expect(JSON.parse(res.body).error.code).to.equal('PAYLOAD_TOO_LARGE');
    });

    it('refuses more than maxChangesPerMessage whole, over WebSocket (session kept) and HTTP (413)', async () => {
      const socket = await connect();
      const eleven = [site.txn(Array.from({ length: 6 }, (_, i) => ({ pk: [100 + i], value: 'a' }))), site.txn(Array.from({ length: 5 }, (_, i) => ({ pk: [200 + i], value: 'b' })))];
      const err = errorOf(await socket.request({ type: 'apply_changes', requestId: 'big', changes: eleven }, ['apply_result', 'error']));
      expect(err).to.include({ code: 'PAYLOAD_TOO_LARGE', fatal: false });
      expect(err.message).to.contain('maxChangesPerMessage');
      expect(await pongs(socket)).to.equal(true);
      const res = await post(proc, `/${DB}/changes`, JSON.stringify({ changes: eleven }), { 'x-site-id': site.wire });
      expect(res.status).to.equal(413);
      expect(JSON.parse(res.body).error.code).to.equal('PAYLOAD_TOO_LARGE');
      // Nothing of either was stored.
      const read = await proc.get(`/${DB}/changes`, { 'x-site-id': reader.wire });
      expect(JSON.parse(read.body).data.changes).to.deep.equal([]);
      await socket.close();
    });

    it('refuses JSON nested deeper than maxJsonDepth with INVALID_MESSAGE, however deep', async () => {
      const socket = await connect();
      const deep = (n: number): string => `{"type":"apply_changes","changes":${'['.repeat(n)}${']'.repeat(n)}}`;
      for (const depth of [40, 30_000]) {
        const err = errorOf(await socket.request(deep(depth), ['pong', 'error']));
        expect(err).to.include({ code: 'INVALID_MESSAGE', fatal: false });
        expect(err.message).to.contain('maxJsonDepth');
        const res = await post(proc, `/${DB}/changes`, `{"changes":${'['.repeat(depth)}${']'.repeat(depth)}}`, { 'x-site-id': site.wire });
        expect(res.status).to.equal(400);
        expect(JSON.parse(res.body).error.code).to.equal('INVALID_MESSAGE');
      }
      // Brackets inside strings are not nesting.
      const inString = { type: 'apply_changes', requestId: 's', changes: [site.txn([{ pk: [1], value: '['.repeat(100) }])] };
      expect((await socket.request(inString, ['apply_result', 'error'])).type).to.equal('apply_result');
      await socket.close();
    });

    it('answers a binary frame with INVALID_MESSAGE and closes a text frame of invalid UTF-8 with 1007', async () => {
      const socket = await connect();
      socket.send(Buffer.from('{"type":"ping"}'), true);
      expect(errorOf(await socket.next())).to.include({ code: 'INVALID_MESSAGE', fatal: false });
      expect(await pongs(socket)).to.equal(true);
      socket.send(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d]));
      expect(await socket.closed).to.equal(1007);
    });

    it('refuses upgrades over maxConnectionsPerIp with 429 and takes them again once one closes', async () => {
      const open = await Promise.all([1, 2, 3, 4].map(() => connect()));
      const refused = await RawSocket.open(proc.wsUrl).then(() => undefined, (err: { status?: number; headers?: Record<string, string>; body?: string }) => err);
      expect(refused?.status).to.equal(429);
      expect(Number(refused?.headers?.['retry-after'])).to.be.at.least(1);
      expect(JSON.parse(refused!.body!).error.code).to.equal('RATE_LIMITED');
      await open[0]!.close();
      expect(await eventually(async () => {
        const socket = await RawSocket.open(proc.wsUrl).catch(() => undefined);
        await socket?.close();
        return socket !== undefined;
      })).to.equal(true);
      await Promise.all(open.slice(1).map((s) => s.close()));
    });

    it('closes a socket that never handshakes with 1008 after handshakeTimeoutMs', async () => {
      const socket = await RawSocket.open(proc.wsUrl);
      expect(await socket.closed).to.equal(1008);
    });
  });

  describe('per-address rate', () => {
    let proc: CoordinatorProcess;
    const site = new TestSite();
    before(async () => {
      proc = await startCoordinatorProcess({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 10, messageBurstPerIp: 10 } });
    });
    after(() => proc?.cleanup());

    /** Waits until the address bucket lets a request through again. */
    function refilled(): Promise<boolean> {
      return eventually(async () => (await proc.get(`/${DB}/changes`, { 'x-site-id': site.wire })).status === 200, 40, 250);
    }

    it('answers HTTP requests over the rate with 429, Retry-After and RATE_LIMITED; /status stays exempt', async () => {
      const results = [];
      for (let i = 0; i < 40; i++) results.push(await proc.get(`/${DB}/changes`, { 'x-site-id': site.wire }));
      const limited = results.filter((r) => r.status === 429);
      expect(limited.length).to.be.at.least(5);
      for (const r of limited) {
        expect(Number(r.headers['retry-after'])).to.be.at.least(1);
        expect(JSON.parse(r.body).error.code).to.equal('RATE_LIMITED');
      }
      expect((await proc.get('/status')).status).to.equal(200);
      expect(await refilled()).to.equal(true);
    });

    it('counts WebSocket frames and upgrades from the same address', async () => {
      expect(await refilled()).to.equal(true);
      // Let the bucket fill up again (10/s, burst 10) for the upgrade and the handshake.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, site.wire);
      expect(reply.type).to.equal('handshake_ack');
      for (let i = 0; i < 20; i++) socket.send('{"type":"ping"}');
      const replies: Received[] = [];
      for (let i = 0; i < 20; i++) replies.push(await socket.next());
      expect(replies.filter((m) => m.type === 'error').map((m) => errorOf(m).code)).to.include('RATE_LIMITED');
      const refused = await RawSocket.open(proc.wsUrl).then((s) => s.close().then(() => undefined), (err: { status?: number }) => err);
      expect(refused?.status).to.equal(429);
      // The session survives and works once the bucket refills.
      expect(await eventually(async () => (await socket.request({ type: 'ping' }, ['pong', 'error'])).type === 'pong', 40, 250)).to.equal(true);
      await socket.close();
      expect(proc.alive()).to.equal(true);
    });
  });

  describe('a handshake delayed by the per-address rate', () => {
    let proc: CoordinatorProcess;
    before(async () => {
      // Two a second, a burst of four: four upgrades take the burst, and their handshakes
      // wait about 0.5, 1, 1.5 and 2 s for a token, longer than handshakeTimeoutMs.
      proc = await startCoordinatorProcess({ router: { messagesPerSecond: 0, messagesPerSecondPerIp: 2, messageBurstPerIp: 4, handshakeTimeoutMs: 400 } });
    });
    after(() => proc?.cleanup());

    it('is not closed by the handshake timeout: it came in time, only the limit held it', async () => {
      const sockets = await Promise.all([1, 2, 3, 4].map(() => RawSocket.open(proc.wsUrl)));
      try {
        for (const socket of sockets) socket.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: new TestSite().wire, protocolVersion: 1 }));
        const replies = await Promise.all(sockets.map((socket) => socket.next(10_000)));
        expect(replies.map((m) => m.type)).to.deep.equal(['handshake_ack', 'handshake_ack', 'handshake_ack', 'handshake_ack']);
      } finally {
        await Promise.all(sockets.map((socket) => socket.close()));
      }
    });
  });
});
