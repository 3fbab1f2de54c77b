import { EventEmitter } from 'node:events';
import type WebSocket from 'ws';
import type {
  ApplyResultMessage, ChangeSet, ChangesMessage, ErrorMessage, HandshakeAckMessage, ServerMessage, SnapshotChunk, SnapshotCheckpoint,
} from '../protocol/messages.js';
import { requirePackage } from '../require-package.js';

const WebSocketClient = requirePackage('ws') as typeof WebSocket;

/** Options of a SyncClient connection (the fields of its handshake, docs/protocol.md §4). */
export interface SyncClientOptions {
  /** WebSocket URL of the coordinator: `<mount>/ws`, e.g. `ws://127.0.0.1:3000/sync/ws`. */
  url: string;
  /** Database to open: 1-128 characters of `[A-Za-z0-9_:.-]`, not starting with `.`, e.g. `acme:notes-42`. */
  databaseId: string;
  /**
   * This replica's site id: 22 base64url characters (16 bytes, e.g. from
   * `siteIdToWire(randomSiteId())`). Keep it for the life of the replica and
   * never share it: the server never returns a site's own change sets to it
   * (docs/protocol.md §5).
   */
  siteId: string;
  /** Sent as `token` in the handshake when set; needed when the server requires tokens. */
  token?: string;
  /** Sent as `protocolVersion`; anything but 1 is refused (PROTOCOL_VERSION_MISMATCH, close 4003). @default 1 */
  protocolVersion?: number;
  /** How long `connect`, `apply`, `getChanges`, `snapshot`, `ping` and `expect` wait for their reply, in ms. @default 30000 */
  timeoutMs?: number;
  /**
   * Sends `"clientPaging": true` in the handshake: the server then answers
   * each `get_changes` with exactly one page, and `catchUp` pages by
   * itself. With false, the server sends every page after one `get_changes`
   * on its own (docs/protocol.md §9): `getChanges` resolves with the first page
   * and the later ones arrive only as 'message' events (type `changes`).
   * @default true
   */
  clientPaging?: boolean;
}

/**
 * An `error` frame from the server (docs/protocol.md §4), as the rejection of the
 * request it answered or as an 'error' event.
 */
export class SyncClientError extends Error {
  /** The stable error code, e.g. `INVALID_HLC`, `SNAPSHOT_REQUIRED`. */
  readonly code: string;
  /** True when retrying cannot help (the client should stop reconnecting). */
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
 * A small client of the WebSocket protocol (docs/protocol.md, docs/client.md),
 * used by the examples, tests and benchmark. It speaks the wire format and
 * matches replies to requests; it keeps no replica, cursor or outbox, does
 * not reconnect and does not answer `request_changes`: that is the caller's
 * part (docs/protocol.md §8).
 *
 * Replies are matched by type, first come first served: `getChanges` takes
 * the next `changes` frame, `ping` the next `pong`, and so on; `apply`
 * matches its `apply_result` by `requestId`. An `error` frame rejects one
 * pending call: a waiter of `expect('error')` first (resolved with the
 * frame), else the oldest waiter of the reply type asked for first, else the
 * oldest pending `apply`. With several kinds of requests in flight an error
 * may thus reject another call than the one it answers; keep one request
 * outstanding when that matters.
 *
 * Events:
 * - `'message'` (ServerMessage): every frame received, before it is matched.
 * - `'push'` (ChangeSet[]): the change sets of each `push_changes`, each
 *   `hlc` being the coordinator's stamp (docs/protocol.md §5).
 * - `'error'` (SyncClientError): an `error` frame that answered no pending
 *   call; emitted only while someone listens. (Error): a frame that is not
 *   JSON; emitted always, so attach an 'error' listener, or such a frame
 *   throws from the socket's message handler.
 * - `'close'` (code: number, reason: string): the socket closed; every
 *   pending call has been rejected with `Error('socket closed (<code> <reason>)')`.
 */
export class SyncClient extends EventEmitter {
  /** The options given to `connect` or `open`. */
  readonly options: SyncClientOptions;
  /** The underlying `ws` socket (for tests that need raw access). */
  readonly socket: WebSocket;
  /** The server's site id for this database, from `handshake_ack` ('' until `connect` resolves). */
  serverSiteId = '';
  /** The server's id for this connection, from `handshake_ack` ('' until `connect` resolves). */
  connectionId = '';
  /** Close code once the socket has closed. */
  closeCode?: number;
  private readonly waiting = new Map<string, Pending[]>();
  private readonly applies = new Map<string, Pending>();
  private nextRequest = 1;
  private snapshotChunks?: SnapshotChunk[];

  private constructor(options: SyncClientOptions) {
    super();
    this.options = options;
    this.socket = new WebSocketClient(options.url, { perMessageDeflate: false });
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

  /**
   * Opens a socket to `options.url` and completes the handshake.
   * Resolves once `handshake_ack` arrived, with `serverSiteId` and
   * `connectionId` set. Rejects with the socket's Error when it cannot open
   * (refused connection, or an HTTP refusal of the upgrade such as 403, 429
   * or 503); with a SyncClientError when the server refuses the handshake
   * (e.g. AUTH_FAILED, fatal; the server then closes the socket); with
   * `Error('no handshake_ack within timeout')` after `timeoutMs`.
   */
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

  /**
   * Opens a socket without a handshake (for tests of the handshake itself);
   * send one with `handshake()` or `send()`. Rejects like `connect` when the
   * socket cannot open.
   */
  static async open(options: SyncClientOptions): Promise<SyncClient> {
    const client = new SyncClient(options);
    await new Promise<void>((resolve, reject) => {
      client.socket.once('open', () => resolve());
      client.socket.once('error', reject);
    });
    return client;
  }

  /**
   * Sends the handshake built from the options (`clientPaging: true` unless
   * the option is false), with `overrides` merged over it, and resolves with
   * the `handshake_ack`. Rejects with a SyncClientError on a refusal. Does not
   * set `serverSiteId`/`connectionId` (`connect` does).
   */
  handshake(overrides: Record<string, unknown> = {}): Promise<HandshakeAckMessage> {
    const { databaseId, siteId, token, protocolVersion = 1, clientPaging = true } = this.options;
    return this.request('handshake_ack', {
      type: 'handshake', databaseId, siteId, ...(token ? { token } : {}), protocolVersion, ...(clientPaging ? { clientPaging } : {}), ...overrides,
    }) as Promise<HandshakeAckMessage>;
  }

  /**
   * Sends `apply_changes` with `changes` (wire ChangeSets, docs/protocol.md §2) and
   * resolves with its `apply_result` (`applied`, `skipped`, `conflicts`,
   * `transactions`, `rejected`?). `requestId` defaults to `r1`, `r2`, … per
   * client; give distinct ids to calls in flight together. Rejects with a
   * SyncClientError when the server refuses the message (INVALID_CHANGESET,
   * CLOCK_DRIFT, …; nothing of it was stored), with
   * `Error('apply <requestId> timed out')` after `timeoutMs`, or when the
   * socket closes. A `request_changes` the server may send after a batch of
   * 1,000+ changes is not answered: listen for it on 'message'.
   */
  apply(changes: ChangeSet[], requestId = `r${this.nextRequest++}`): Promise<ApplyResultMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.applies.delete(requestId); reject(new Error(`apply ${requestId} timed out`)); }, this.options.timeoutMs ?? 30_000);
      this.applies.set(requestId, { resolve: resolve as (m: ServerMessage) => void, reject, timer });
      this.send({ type: 'apply_changes', requestId, changes });
    });
  }

  /**
   * Sends `get_changes` (from the beginning when `sinceHLC` is undefined) and
   * resolves with the next `changes` frame: `changeSets` (each `hlc` a
   * coordinator stamp) and `hasMore`. Never includes this site's own change
   * sets. Rejects with a SyncClientError (INVALID_HLC, SNAPSHOT_REQUIRED, …)
   * or on timeout. With `clientPaging: false`, later pages arrive only as
   * 'message' events.
   */
  getChanges(sinceHLC?: string): Promise<ChangesMessage> {
    return this.request('changes', sinceHLC === undefined ? { type: 'get_changes' } : { type: 'get_changes', sinceHLC }) as Promise<ChangesMessage>;
  }

  /**
   * Pages through every change after `sinceHLC` with one `get_changes` per
   * page until `hasMore` is false, and returns the change sets and the
   * cursor to store: the last `hlc` received, or `sinceHLC` when there was
   * nothing new. Meant for `clientPaging: true` (the default); with false
   * the server streams the pages itself and this would restart that stream.
   * Rejects like `getChanges`.
   */
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

  /**
   * Downloads a snapshot with `get_snapshot`, or resumes one with
   * `resume_snapshot` when `checkpoint` is given (docs/protocol.md §6), and
   * resolves with every chunk, header first and footer last, once
   * `snapshot_complete` arrives. The whole snapshot is held in memory.
   * Rejects with a SyncClientError (INVALID_CHECKPOINT, SNAPSHOT_REQUIRED,
   * SNAPSHOT_ERROR, …) or on timeout (`timeoutMs` covers the whole download).
   */
  async snapshot(checkpoint?: SnapshotCheckpoint): Promise<SnapshotChunk[]> {
    this.snapshotChunks = [];
    await this.request('snapshot_complete', checkpoint ? { type: 'resume_snapshot', checkpoint } : { type: 'get_snapshot' });
    const chunks = this.snapshotChunks;
    this.snapshotChunks = undefined;
    return chunks;
  }

  /** Sends the protocol's `ping` and resolves with the `pong`. */
  ping(): Promise<ServerMessage> {
    return this.request('pong', { type: 'ping' });
  }

  /**
   * Sends any JSON value (or a string as is) as one text frame. Throws if the
   * socket is still connecting; once it has closed, the frame is dropped.
   */
  send(message: unknown): void {
    this.socket.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  /** Sends a frame and resolves with the next frame of `replyType` (rejects on an error frame, close or timeout). */
  request(replyType: string, message: unknown): Promise<ServerMessage> {
    const promise = this.expect(replyType);
    this.send(message);
    return promise;
  }

  /**
   * Resolves with the next frame of `type` received from now on; rejects on
   * an error frame meant for it, on close, or after `timeoutMs`. With
   * `type` 'error', resolves with the next error frame instead.
   */
  expect(type: string): Promise<ServerMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} within timeout`)), this.options.timeoutMs ?? 30_000);
      const list = this.waiting.get(type) ?? [];
      list.push({ resolve, reject, timer });
      this.waiting.set(type, list);
    });
  }

  /** Resolves with the close code once the socket has closed (at once if it already has; 1006 if unknown). */
  closed(): Promise<number> {
    if (this.socket.readyState === WebSocketClient.CLOSED) return Promise.resolve(this.closeCode ?? 1006);
    return new Promise((resolve) => this.socket.once('close', (code) => resolve(code)));
  }

  /** Closes the socket with 1000 and resolves with the close code once it has closed. */
  close(): Promise<number> {
    const done = this.closed();
    if (this.socket.readyState !== WebSocketClient.CLOSED) this.socket.close(1000);
    return done;
  }

  private onFrame(text: string): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(text);
    } catch {
      // An 'error' event without a listener would throw out of the socket's handler.
      if (this.listenerCount('error') > 0) this.emit('error', new Error(`unparseable frame: ${text.slice(0, 80)}`));
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
