import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import type {
  ApplyResultMessage, ChangeSet, ChangesMessage, ErrorMessage, HandshakeAckMessage, ServerMessage, SnapshotChunk, SnapshotCheckpoint,
} from '../protocol/messages.js';

/** Options of a SyncClient connection. */
export interface SyncClientOptions {
  /** e.g. ws://127.0.0.1:3000/sync/ws */
  url: string;
  databaseId: string;
  /** base64url site id of this client. */
  siteId: string;
  token?: string;
  /** @default 1 */
  protocolVersion?: number;
  /** Reject a pending request after this many ms. @default 30000 */
  timeoutMs?: number;
  /**
   * Ask for one page per `get_changes` (handshake `"clientPaging": true`):
   * this client pages by itself with `catchUp`. With false, the server sends
   * every page after one `get_changes` on its own (PROTOCOL.md §9) and the
   * extra pages arrive as 'changes' events. @default true
   */
  clientPaging?: boolean;
}

/** An `error` frame as a rejection. */
export class SyncClientError extends Error {
  readonly code: string;
  readonly fatal: boolean;
  constructor(message: ErrorMessage) {
    super(message.message);
    this.name = 'SyncClientError';
    this.code = message.code;
    this.fatal = message.fatal;
  }
}

interface Pending {
  resolve(message: ServerMessage): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * A small client of the WebSocket protocol, used by the examples, tests and
 * benchmark. One request of each kind at a time is matched to its reply in
 * order; `apply` matches by requestId. Pushes arrive as 'push' events.
 *
 * Events: 'push' (ChangeSet[]), 'error' (SyncClientError for unsolicited
 * errors), 'close' (code, reason).
 */
export class SyncClient extends EventEmitter {
  readonly options: SyncClientOptions;
  readonly socket: WebSocket;
  serverSiteId = '';
  connectionId = '';
  closeCode?: number;
  private readonly waiting = new Map<string, Pending[]>();
  private readonly applies = new Map<string, Pending>();
  private nextRequest = 1;
  private snapshotChunks?: SnapshotChunk[];

  private constructor(options: SyncClientOptions) {
    super();
    this.options = options;
    this.socket = new WebSocket(options.url, { perMessageDeflate: false });
    this.socket.on('message', (data) => this.onFrame(data.toString()));
    this.socket.on('close', (code, reason) => {
      this.closeCode = code;
      const err = new Error(`socket closed (${code} ${reason.toString()})`);
      for (const list of this.waiting.values()) for (const p of list) { clearTimeout(p.timer); p.reject(err); }
      for (const p of this.applies.values()) { clearTimeout(p.timer); p.reject(err); }
      this.waiting.clear();
      this.applies.clear();
      this.emit('close', code, reason.toString());
    });
    this.socket.on('error', () => { /* surfaced through close */ });
  }

  /** Opens a socket and completes the handshake. */
  static async connect(options: SyncClientOptions): Promise<SyncClient> {
    const client = new SyncClient(options);
    await new Promise<void>((resolve, reject) => {
      client.socket.once('open', () => resolve());
      client.socket.once('error', reject);
    });
    const ack = await client.handshake();
    client.serverSiteId = ack.serverSiteId;
    client.connectionId = ack.connectionId;
    return client;
  }

  /** Opens a socket without a handshake (for tests of the handshake itself). */
  static async open(options: SyncClientOptions): Promise<SyncClient> {
    const client = new SyncClient(options);
    await new Promise<void>((resolve, reject) => {
      client.socket.once('open', () => resolve());
      client.socket.once('error', reject);
    });
    return client;
  }

  handshake(overrides: Record<string, unknown> = {}): Promise<HandshakeAckMessage> {
    const { databaseId, siteId, token, protocolVersion = 1, clientPaging = true } = this.options;
    return this.request('handshake_ack', {
      type: 'handshake', databaseId, siteId, ...(token ? { token } : {}), protocolVersion, ...(clientPaging ? { clientPaging } : {}), ...overrides,
    }) as Promise<HandshakeAckMessage>;
  }

  /** Sends change sets; resolves with the apply_result. */
  apply(changes: ChangeSet[], requestId = `r${this.nextRequest++}`): Promise<ApplyResultMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.applies.delete(requestId); reject(new Error(`apply ${requestId} timed out`)); }, this.options.timeoutMs ?? 30_000);
      this.applies.set(requestId, { resolve: resolve as (m: ServerMessage) => void, reject, timer });
      this.send({ type: 'apply_changes', requestId, changes });
    });
  }

  /** One page of changes after `sinceHLC`. */
  getChanges(sinceHLC?: string): Promise<ChangesMessage> {
    return this.request('changes', sinceHLC === undefined ? { type: 'get_changes' } : { type: 'get_changes', sinceHLC }) as Promise<ChangesMessage>;
  }

  /** Pages through every change after `sinceHLC`; returns them and the final cursor. */
  async catchUp(sinceHLC?: string): Promise<{ changeSets: ChangeSet[]; cursor?: string }> {
    const all: ChangeSet[] = [];
    let cursor = sinceHLC;
    for (;;) {
      const page = await this.getChanges(cursor);
      all.push(...page.changeSets);
      if (page.changeSets.length > 0) cursor = page.changeSets[page.changeSets.length - 1]!.hlc;
      if (!page.hasMore) return { changeSets: all, cursor };
    }
  }

  /** Downloads a whole snapshot (or resumes one). */
  async snapshot(checkpoint?: SnapshotCheckpoint): Promise<SnapshotChunk[]> {
    this.snapshotChunks = [];
    await this.request('snapshot_complete', checkpoint ? { type: 'resume_snapshot', checkpoint } : { type: 'get_snapshot' });
    const chunks = this.snapshotChunks;
    this.snapshotChunks = undefined;
    return chunks;
  }

  ping(): Promise<ServerMessage> {
    return this.request('pong', { type: 'ping' });
  }

  /** Sends any JSON value (or raw text) as one frame. */
  send(message: unknown): void {
    this.socket.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  /** Sends a frame and waits for the next reply of `replyType` (or an error). */
  request(replyType: string, message: unknown): Promise<ServerMessage> {
    const promise = this.expect(replyType);
    this.send(message);
    return promise;
  }

  /** Waits for the next frame of `type` (or the next error). */
  expect(type: string): Promise<ServerMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} within timeout`)), this.options.timeoutMs ?? 30_000);
      const list = this.waiting.get(type) ?? [];
      list.push({ resolve, reject, timer });
      this.waiting.set(type, list);
    });
  }

  /** Waits until the server closes the socket; resolves with the close code. */
  closed(): Promise<number> {
    if (this.socket.readyState === WebSocket.CLOSED) return Promise.resolve(this.closeCode ?? 1006);
    return new Promise((resolve) => this.socket.once('close', (code) => resolve(code)));
  }

  close(): Promise<number> {
    const done = this.closed();
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close(1000);
    return done;
  }

  private onFrame(text: string): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(text);
    } catch {
      this.emit('error', new Error(`unparseable frame: ${text.slice(0, 80)}`));
      return;
    }
    this.emit('message', message);
    switch (message.type) {
      case 'push_changes':
        this.emit('push', message.changeSets);
        return;
      case 'snapshot_chunk':
        this.snapshotChunks?.push(message.chunk);
        return;
      case 'apply_result': {
        const pending = message.requestId !== undefined ? this.applies.get(message.requestId) : undefined;
        if (pending) {
          this.applies.delete(message.requestId!);
          clearTimeout(pending.timer);
          pending.resolve(message);
          return;
        }
        break;
      }
      case 'error': {
        const err = new SyncClientError(message);
        // An error answers the oldest outstanding request of any kind.
        const errWaiters = this.waiting.get('error');
        if (errWaiters && errWaiters.length > 0) {
          const p = errWaiters.shift()!;
          clearTimeout(p.timer);
          p.resolve(message);
          return;
        }
        for (const [type, list] of this.waiting) {
          if (list.length > 0) {
            const p = list.shift()!;
            if (list.length === 0) this.waiting.delete(type);
            clearTimeout(p.timer);
            p.reject(err);
            return;
          }
        }
        const [id, apply] = this.applies.entries().next().value ?? [];
        if (apply) {
          this.applies.delete(id!);
          clearTimeout(apply.timer);
          apply.reject(err);
          return;
        }
        if (this.listenerCount('error') > 0) this.emit('error', err);
        return;
      }
    }
    const list = this.waiting.get(message.type);
    if (list && list.length > 0) {
      const p = list.shift()!;
      clearTimeout(p.timer);
      p.resolve(message);
    }
  }
}
