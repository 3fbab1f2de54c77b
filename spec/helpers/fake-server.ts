import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

/** One client socket as the scripted server sees it. */
export class FakeConnection {
  readonly url: string;
  readonly closed: Promise<number>;
  private readonly inbox: Record<string, unknown>[] = [];
  private readonly waiters: ((m: Record<string, unknown>) => void)[] = [];

  constructor(readonly ws: WebSocket, req: IncomingMessage) {
    this.url = req.url ?? '';
    ws.on('message', (data: Buffer) => {
      const message = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
      const waiter = this.waiters.shift();
      if (waiter) waiter(message);
      else this.inbox.push(message);
    });
    this.closed = new Promise((resolve) => ws.once('close', (code) => {
      resolve(code);
      for (const waiter of this.waiters.splice(0)) waiter({ type: '#closed', code });
    }));
  }

  /** The next client message (or `{type:'#closed'}`), waiting at most `timeoutMs`. */
  next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve(queued);
    if (this.ws.readyState === this.ws.CLOSED) return Promise.resolve({ type: '#closed' });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const at = this.waiters.indexOf(waiter);
        if (at >= 0) this.waiters.splice(at, 1);
        reject(new Error(`no client frame within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (m: Record<string, unknown>): void => {
        clearTimeout(timer);
        resolve(m);
      };
      this.waiters.push(waiter);
    });
  }

  send(message: unknown): void {
    this.ws.send(JSON.stringify(message));
  }

  close(code = 1000): Promise<number> {
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(code);
    return this.closed;
  }
}

/**
 * A scripted WebSocket server on 127.0.0.1, port 0: each test plays the
 * server's side by hand, so client behaviour the real coordinator never
 * provokes (request_changes, SNAPSHOT_ERROR, unsolicited `changes`, fatal
 * errors) can be checked frame by frame.
 */
export class FakeServer {
  readonly connections: FakeConnection[] = [];
  private readonly waiters: ((c: FakeConnection) => void)[] = [];

  private constructor(readonly wss: WebSocketServer, readonly url: string) {
    wss.on('connection', (ws, req) => {
      const conn = new FakeConnection(ws, req);
      this.connections.push(conn);
      this.waiters.shift()?.(conn);
    });
  }

  static async start(): Promise<FakeServer> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
    const { port } = wss.address() as AddressInfo;
    return new FakeServer(wss, `ws://127.0.0.1:${port}/sync/ws`);
  }

  /** The `n`-th connection (0-based), waiting for it. */
  connection(n: number, timeoutMs = 10_000): Promise<FakeConnection> {
    if (this.connections[n]) return Promise.resolve(this.connections[n]!);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection #${n} within ${timeoutMs} ms`)), timeoutMs);
      const check = (): void => {
        if (this.connections[n]) {
          clearTimeout(timer);
          resolve(this.connections[n]!);
        } else {
          this.waiters.push(check);
        }
      };
      this.waiters.push(check);
    });
  }

  async close(): Promise<void> {
    for (const c of this.connections) c.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}
