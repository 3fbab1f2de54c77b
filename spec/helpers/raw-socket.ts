import WebSocket from 'ws';

/** A parsed server frame, or the end of the socket. */
export type Received = { type: string; [key: string]: unknown } | { type: '#closed'; code: number };

/**
 * A bare WebSocket for hardening tests: sends any bytes (text or binary),
 * and hands out server frames in order. No protocol logic, so tests see
 * exactly what the server did.
 */
export class RawSocket {
  readonly ws: WebSocket;
  /** Close code once the socket has closed. */
  closeCode?: number;
  readonly closed: Promise<number>;
  private readonly inbox: Received[] = [];
  private readonly waiters: ((m: Received) => void)[] = [];
  private readonly onFrame?: (text: string) => boolean;

  private constructor(url: string, headers: Record<string, string>, onFrame?: (text: string) => boolean) {
    this.onFrame = onFrame;
    this.ws = new WebSocket(url, { perMessageDeflate: false, headers, maxPayload: 256 * 1024 * 1024 });
    this.ws.on('message', (data: Buffer) => {
      const text = data.toString('utf8');
      // A hook that takes the frame keeps it out of the inbox (bulk traffic a test only counts).
      if (this.onFrame?.(text)) return;
      this.deliver(JSON.parse(text) as Received);
    });
    this.ws.on('error', () => { /* seen through close */ });
    this.closed = new Promise((resolve) => this.ws.once('close', (code) => {
      this.closeCode = code;
      this.deliver({ type: '#closed', code });
      resolve(code);
    }));
  }

  /** Opens a socket; rejects with the HTTP status of a refused upgrade (as `err.status`). */
  static open(url: string, options: { headers?: Record<string, string>; onFrame?: (text: string) => boolean } = {}): Promise<RawSocket> {
    const socket = new RawSocket(url, options.headers ?? {}, options.onFrame);
    return new Promise((resolve, reject) => {
      socket.ws.once('open', () => resolve(socket));
      socket.ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk; });
        res.on('end', () => reject(Object.assign(new Error(`upgrade refused with ${res.statusCode}`), { status: res.statusCode, headers: res.headers, body })));
      });
      socket.ws.once('error', reject);
    });
  }

  /** Opens a socket and completes a handshake; resolves with the socket and the server's reply. */
  static async handshake(url: string, databaseId: string, siteId: string, extra: Record<string, unknown> = {}): Promise<{ socket: RawSocket; reply: Received }> {
    const socket = await RawSocket.open(url);
    socket.send(JSON.stringify({ type: 'handshake', databaseId, siteId, protocolVersion: 1, ...extra }));
    return { socket, reply: await socket.next() };
  }

  /** Sends a frame: a string or bytes, as text unless `binary`. */
  send(data: string | Buffer, binary = false): void {
    this.ws.send(data, { binary });
  }

  /** The next server frame (or `#closed`), waiting at most `timeoutMs`. */
  next(timeoutMs = 30_000): Promise<Received> {
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const at = this.waiters.indexOf(waiter);
        if (at >= 0) this.waiters.splice(at, 1);
        reject(new Error(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (m: Received): void => {
        clearTimeout(timer);
        resolve(m);
      };
      this.waiters.push(waiter);
    });
  }

  /** Skips frames until one of `types` (or `#closed`) arrives, and returns it. */
  async until(types: string[], timeoutMs = 30_000): Promise<Received> {
    for (;;) {
      const m = await this.next(timeoutMs);
      if (m.type === '#closed' || types.includes(m.type)) return m;
    }
  }

  /** Sends a frame and returns the first reply of `types` (or `#closed`). */
  async request(frame: unknown, types: string[], timeoutMs = 30_000): Promise<Received> {
    this.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
    return this.until(types, timeoutMs);
  }

  /** Stops reading from the TCP socket, as a client that hangs would. */
  pauseReading(): void {
    (this.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  }

  resumeReading(): void {
    (this.ws as unknown as { _socket: { resume(): void } })._socket.resume();
  }

  /** Closes (or destroys, when `hard`) the socket and waits for the close. */
  async close(hard = false): Promise<number> {
    if (this.ws.readyState === WebSocket.CLOSED) return this.closeCode ?? 1006;
    if (hard || this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
    else this.ws.close(1000);
    // A peer that never answers the close frame must not hold the test.
    const timer = setTimeout(() => this.ws.terminate(), 2000);
    const code = await this.closed;
    clearTimeout(timer);
    return code;
  }

  private deliver(m: Received): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(m);
    else this.inbox.push(m);
  }
}
