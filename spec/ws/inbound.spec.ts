import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import { connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import WebSocket, { WebSocketServer } from 'ws';
import { createInboundBudget, type InboundBudget, type InboundMeter } from '../../lib/ws/inbound.js';
import { eventually } from '../helpers/coordinator-process.js';

/** What the server side of one socket saw, and its meter. */
interface Peer {
  ws: WebSocket;
  meter: InboundMeter;
  messages: Buffer[];
}

/**
 * A real ws server on 127.0.0.1:0 whose sockets are tracked by `budget`.
 * Messages are only recorded: a test releases them (as a session does once
 * it has handled one) with `handled()`, so it decides when bytes free up.
 */
class Harness {
  readonly peers: Peer[] = [];
  readonly clients: (WebSocket | Socket)[] = [];
  private server!: Server;
  private wss!: WebSocketServer;
  private autoRelease = false;
  /** Largest `budget.used` seen after any message arrived. */
  peakUsed = 0;

  constructor(readonly budget: InboundBudget, private readonly maxPayload: number) {}

  async start(): Promise<void> {
    this.server = createServer();
    this.wss = new WebSocketServer({ server: this.server, perMessageDeflate: false, maxPayload: this.maxPayload });
    this.wss.on('connection', (ws, req) => {
      const peer: Peer = { ws, meter: this.budget.track(ws, req.socket), messages: [] };
      ws.on('message', (data: Buffer) => {
        peer.messages.push(data);
        this.peakUsed = Math.max(this.peakUsed, this.budget.used);
        if (this.autoRelease) setImmediate(() => peer.meter.release());
      });
      this.peers.push(peer);
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** From now on every message is released right after it arrives. */
  releaseEveryMessage(): void {
    this.autoRelease = true;
    for (const peer of this.peers) for (let i = 0; i < peer.messages.length; i++) peer.meter.release();
  }

  /** Opens a ws client and resolves with it and the server's view of it. */
  async open(): Promise<{ client: WebSocket; peer: Peer }> {
    const before = this.peers.length;
    const client = new WebSocket(`ws://127.0.0.1:${this.port}`, { perMessageDeflate: false });
    this.clients.push(client);
    await new Promise((resolve, reject) => client.once('open', resolve).once('error', reject));
    await eventually(() => this.peers.length > before);
    return { client, peer: this.peers[before]! };
  }

  /** Opens a bare TCP WebSocket (handshake by hand), to send partial frames. */
  async openRaw(): Promise<{ socket: Socket; peer: Peer }> {
    const before = this.peers.length;
    const socket = netConnect(this.port, '127.0.0.1');
    this.clients.push(socket);
    socket.on('error', () => { /* seen through close */ });
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    await new Promise<void>((resolve) => {
      let text = '';
      const onData = (chunk: Buffer): void => {
        text += chunk.toString('latin1');
        if (!text.includes('\r\n\r\n')) return;
        socket.off('data', onData);
        resolve();
      };
      socket.on('data', onData);
    });
    await eventually(() => this.peers.length > before);
    return { socket, peer: this.peers[before]! };
  }

  async stop(): Promise<void> {
    for (const client of this.clients) {
      if (client instanceof WebSocket) client.terminate();
      else client.destroy();
    }
    for (const peer of this.peers) peer.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A masked client text frame (RFC 6455 §5.2) with a zero mask, so the payload goes as it is. */
function clientFrame(payload: Buffer, fin = true): Buffer {
  const n = payload.length;
  const length = n < 126 ? Buffer.from([0x80 | n]) : n < 65536 ? Buffer.from([0x80 | 126, n >> 8, n & 0xff]) : Buffer.concat([Buffer.from([0x80 | 127, 0, 0, 0, 0]), Buffer.from([n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff])]);
  return Buffer.concat([Buffer.from([(fin ? 0x80 : 0) | 0x1]), length, Buffer.alloc(4), payload]);
}

const text = (bytes: number): string => 'x'.repeat(bytes);

describe('ws/inbound', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.stop();
    harness = undefined;
  });

  async function start(limitBytes: number, maxMessageBytes: number, stallMs?: number): Promise<Harness> {
    harness = new Harness(createInboundBudget({ limitBytes, maxMessageBytes, stallMs }), maxMessageBytes);
    await harness.start();
    return harness;
  }

  describe('createInboundBudget', () => {
    it('refuses a limit below maxMessageBytes, naming both', () => {
      expect(() => createInboundBudget({ limitBytes: 1000, maxMessageBytes: 2000 })).to.throw(TypeError, 'limitBytes (1000) must be at least maxMessageBytes (2000)');
    });
  });

  describe('#track', () => {
    it('counts each message with its frame header and mask, and releases exactly that', async () => {
      const h = await start(10 * 1024 * 1024, 1024 * 1024);
      const { client, peer } = await h.open();
      // 7-bit, 16-bit and 64-bit lengths: 2, 4 and 10 header bytes, plus the 4-byte mask.
      client.send(text(100));
      client.send(text(1000));
      client.send(text(70_000));
      expect(await eventually(() => peer.messages.length === 3)).to.equal(true);
      expect(h.budget.used).to.equal(106 + 1008 + 70_014);
      expect(peer.meter.bytes).to.equal(h.budget.used);
      peer.meter.release();
      expect(h.budget.used).to.equal(1008 + 70_014);
      peer.meter.release();
      peer.meter.release();
      expect(h.budget.used).to.equal(0);
      peer.meter.release();
      expect(h.budget.used, 'a release with nothing to release changes nothing').to.equal(0);
    });

    it('follows frame headers that arrive a byte at a time', async () => {
      const h = await start(1024 * 1024, 128 * 1024);
      const { socket, peer } = await h.openRaw();
      let sent = 0;
      for (const size of [1000, 70_000]) {
        const frame = clientFrame(Buffer.from(text(size)));
        const headerLength = frame.length - size;
        // Each header byte (first two, extended length, mask) in a read of its own, then the payload.
        for (let i = 0; i < headerLength; i++) {
          socket.write(frame.subarray(i, i + 1));
          sent++;
          expect(await eventually(() => h.budget.used === sent)).to.equal(true);
        }
        socket.write(frame.subarray(headerLength));
        sent += size;
      }
      expect(await eventually(() => peer.messages.length === 2)).to.equal(true);
      expect(peer.messages.map((m) => m.length)).to.deep.equal([1000, 70_000]);
      expect(h.budget.used).to.equal(1008 + 70_014);
      peer.meter.release();
      expect(h.budget.used).to.equal(70_014);
      peer.meter.release();
      expect(h.budget.used).to.equal(0);
    });

    it('counts every fragment of a fragmented message until the message is released', async () => {
      const h = await start(1024 * 1024, 64 * 1024);
      const { client, peer } = await h.open();
      client.send(text(10), { fin: false });
      client.send(text(200), { fin: false });
      client.send(text(5), { fin: true });
      expect(await eventually(() => peer.messages.length === 1)).to.equal(true);
      expect(peer.messages[0]!.length).to.equal(215);
      expect(h.budget.used).to.equal(16 + 208 + 11);
      peer.meter.release();
      expect(h.budget.used).to.equal(0);
    });

    it('keeps a message counted past release() until the work that kept it is done', async () => {
      const h = await start(1024 * 1024, 64 * 1024);
      const { client, peer } = await h.open();
      client.send(text(100));
      client.send(text(200));
      expect(await eventually(() => peer.messages.length === 2)).to.equal(true);
      const done = peer.meter.keep();
      peer.meter.release();
      expect(h.budget.used, 'the first message is still counted, once').to.equal(106 + 208);
      peer.meter.release();
      expect(h.budget.used).to.equal(106);
      done();
      done();
      expect(h.budget.used).to.equal(0);
    });

    it('releases control frames (ping, pong) as soon as ws has handled them', async () => {
      const h = await start(1024 * 1024, 64 * 1024);
      const { client, peer } = await h.open();
      let pongs = 0;
      client.on('pong', () => pongs++);
      peer.ws.on('pong', () => pongs++);
      client.ping('abc');
      peer.ws.ping();
      client.send('done');
      expect(await eventually(() => peer.messages.length === 1 && pongs === 2)).to.equal(true);
      expect(h.budget.used, 'only the data message is still counted').to.equal(2 + 4 + 4);
    });

    it('pauses a socket that sends over the limit, keeps the bytes bounded, and resumes it once usage falls', async () => {
      const h = await start(256 * 1024, 256 * 1024);
      const a = await h.open();
      const b = await h.open();
      for (let i = 0; i < 4; i++) a.client.send(text(60_000));
      expect(await eventually(() => a.peer.messages.length === 4)).to.equal(true);
      expect(h.budget.used).to.be.below(h.budget.limit);
      // B's message takes the budget over its limit mid-frame: B is paused with
      // part of it read, and stays so while A's messages are unhandled.
      b.client.send(text(150_000));
      expect(await eventually(() => h.budget.paused === 1)).to.equal(true);
      expect(b.peer.ws.isPaused).to.equal(true);
      expect(b.peer.messages).to.have.length(0);
      expect(h.budget.used).to.be.above(h.budget.limit);
      expect(h.budget.used, 'at most one socket read past the limit').to.be.at.most(h.budget.limit + 64 * 1024);
      h.releaseEveryMessage();
      expect(await eventually(() => b.peer.messages.length === 1)).to.equal(true);
      expect(b.peer.messages[0]!.length).to.equal(150_000);
      expect(await eventually(() => h.budget.used === 0)).to.equal(true);
      expect(h.budget.paused).to.equal(0);
      expect(b.peer.ws.isPaused).to.equal(false);
    });

    it('never deadlocks when every counted byte is part of an unfinished frame', async () => {
      // The limit fits one message: four senders read in parallel until their
      // partial frames alone fill it, and none could finish without being let
      // read. The stall watchdog is kept out of it (10 min): no sender stalls.
      const max = 300 * 1024;
      const h = await start(max, max, 600_000);
      h.releaseEveryMessage();
      const peers = await Promise.all([h.open(), h.open(), h.open(), h.open()]);
      for (const { client } of peers) client.send(text(280 * 1024));
      expect(await eventually(() => peers.every(({ peer }) => peer.messages.length === 1), 400)).to.equal(true);
      expect(h.peakUsed, 'one message beyond the limit, plus a socket read per sender').to.be.at.most(h.budget.limit + max + 4 * 64 * 1024);
      expect(await eventually(() => h.budget.used === 0)).to.equal(true);
    });

    it('lets a held sender read when the one reading stalls mid-frame (slowloris)', async () => {
      const max = 200 * 1024;
      const h = await start(max, max, 100);
      h.releaseEveryMessage();
      // The staller sends most of a frame, then nothing.
      const staller = await h.openRaw();
      const payload = Buffer.from(text(190 * 1024));
      const frame = clientFrame(payload);
      staller.socket.write(frame.subarray(0, 150 * 1024));
      expect(await eventually(() => h.budget.used === 150 * 1024)).to.equal(true);
      // The next sender takes the budget over its limit; the staller has the
      // largest unfinished frame, so it is the one let read, and stalls.
      const sender = await h.open();
      sender.client.send(text(150 * 1024));
      expect(await eventually(() => sender.peer.messages.length === 1, 400)).to.equal(true);
      // The staller still gets its frame through once it sends the rest.
      staller.socket.write(frame.subarray(150 * 1024));
      expect(await eventually(() => staller.peer.messages.length === 1, 400)).to.equal(true);
      expect(staller.peer.messages[0]!.equals(payload)).to.equal(true);
      expect(await eventually(() => h.budget.used === 0)).to.equal(true);
    });

    it('releases everything a socket holds when it closes, partial frames included', async () => {
      const h = await start(1024 * 1024, 512 * 1024);
      const a = await h.open();
      a.client.send(text(1000));
      a.client.send(text(2000));
      const raw = await h.openRaw();
      raw.socket.write(clientFrame(Buffer.from(text(100_000))).subarray(0, 50_000));
      expect(await eventually(() => a.peer.messages.length === 2 && h.budget.used === 1008 + 2008 + 50_000)).to.equal(true);
      expect(h.budget.size).to.equal(2);
      a.client.terminate();
      raw.socket.destroy();
      expect(await eventually(() => h.budget.used === 0 && h.budget.size === 0)).to.equal(true);
      a.peer.meter.release();
      expect(h.budget.used, 'a meter is inert once closed').to.equal(0);
    });

    it('lets a socket read only when neither its owner nor the budget holds it', async () => {
      const h = await start(128 * 1024, 128 * 1024);
      const { client, peer } = await h.open();
      client.send(text(100_000));
      client.send(text(100_000));
      expect(await eventually(() => h.budget.paused === 1)).to.equal(true);
      expect(peer.ws.isPaused).to.equal(true);
      peer.ws.resume();
      expect(peer.ws.isPaused, "the owner's resume does not undo the budget's pause").to.equal(true);
      peer.ws.pause();
      h.releaseEveryMessage();
      expect(await eventually(() => h.budget.paused === 0)).to.equal(true);
      expect(peer.ws.isPaused, "the budget's resume does not undo the owner's pause").to.equal(true);
      expect(peer.messages).to.have.length(1);
      peer.ws.resume();
      expect(await eventually(() => peer.messages.length === 2 && h.budget.used === 0)).to.equal(true);
    });
  });

  describe('#reserve', () => {
    it('grants bodies while under the limit, queues the rest first come first served, and frees room on close', async () => {
      const budget = createInboundBudget({ limitBytes: 100, maxMessageBytes: 100 });
      const first = budget.reserve(80);
      expect(await first.ready).to.equal(true);
      const second = budget.reserve(60);
      expect(await second.ready, 'under the limit when asked: granted even though it overshoots').to.equal(true);
      expect(budget.used).to.equal(140);
      const granted: string[] = [];
      const third = budget.reserve(50);
      const fourth = budget.reserve(10);
      void third.ready.then((ok) => ok && granted.push('third'));
      void fourth.ready.then((ok) => ok && granted.push('fourth'));
      expect(budget.paused).to.equal(2);
      first.received();
      first.close();
      await Promise.resolve();
      expect(budget.used).to.equal(60 + 50);
      expect(granted, 'the waiting body that took usage over the limit stops the queue').to.deep.equal(['third']);
      second.close();
      third.close();
      await fourth.ready;
      expect(granted).to.deep.equal(['third', 'fourth']);
      fourth.close();
      expect(budget.used).to.equal(0);
      expect(budget.paused).to.equal(0);
    });

    it('lets a waiting body read after stallMs when stalled bodies hold the budget at exactly its limit', async () => {
      // Two bodies of unknown length each claim maxMessageBytes and then send nothing more:
      // usage sits exactly at the limit, where no new body is granted.
      const budget = createInboundBudget({ limitBytes: 100, maxMessageBytes: 50, stallMs: 30 });
      const stalled = [budget.reserve(50), budget.reserve(50)];
      expect(await Promise.all(stalled.map((s) => s.ready))).to.deep.equal([true, true]);
      expect(budget.used).to.equal(budget.limit);
      const waiting = budget.reserve(10);
      let granted = false;
      void waiting.ready.then((ok) => { granted = ok; });
      expect(await eventually(() => granted), 'granted once nothing progressed for stallMs').to.equal(true);
      for (const body of [...stalled, waiting]) body.close();
      expect(budget.used).to.equal(0);
      expect(budget.paused).to.equal(0);
    });

    it('answers false to a body whose request ended while it waited', async () => {
      const budget = createInboundBudget({ limitBytes: 100, maxMessageBytes: 100 });
      const held = budget.reserve(100);
      const waiting = budget.reserve(10);
      waiting.close();
      expect(await waiting.ready).to.equal(false);
      held.close();
      expect(budget.used).to.equal(0);
      expect(budget.size).to.equal(0);
    });
  });
});
