import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { RawData, WebSocket } from 'ws';
import { SyncError, ErrorCode, CloseCode, isSyncError } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { logs } from '../log.js';
import { PROTOCOL_VERSION, type ApplyResult } from '../protocol/messages.js';
import { siteIdFromWire } from '../protocol/site-id.js';
import type { Replica } from '../replica/replica.js';
import { validateDatabaseId } from '../storage/database-id.js';
import type { Lease } from '../storage/replica-pool.js';
import type { Subscriber } from '../hub/hub.js';
import { messageOf, type Caller, type Coordinator } from '../service/coordinator.js';
import type { ClientInfo } from '../service/hooks.js';
import { TokenBucket, exceedsJsonDepth, type Limits } from '../service/limits.js';
import type { InboundMeter } from './inbound.js';

const log = logs.ws;

/**
 * Frames received but not yet handled, at most, before the session stops
 * reading its socket. Messages are handled one at a time, so without this a
 * client that sends faster than it is answered (or never reads the answers)
 * would queue parsed messages without limit; paused, TCP pushes back on it.
 */
const MAX_PENDING_FRAMES = 64;
/**
 * Applies of one session submitted but not yet answered. Bounds what one
 * client can queue at its replica (frames past it wait, then TCP pushes back).
 */
const MAX_APPLIES_IN_FLIGHT = 32;
/**
 * How long a closing socket gets to answer the close frame before it is
 * destroyed. A client that stopped reading never answers, and ws would
 * otherwise hold the socket and its buffers for 30 s.
 */
const CLOSE_GRACE_MS = 2000;

/** What a session needs from the router. */
export interface SessionDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
  limits: Limits;
  /** The client address the limits and hooks see (see `trustProxy`). */
  address: string;
  /** This socket's share of the router's inbound budget (§9): told when each message has been handled (an apply: answered); it closes itself with the socket. */
  inbound?: InboundMeter;
  /** Called once when the session has ended. */
  onEnd(session: Session): void;
}

type State = 'handshake' | 'open' | 'closed';

/**
 * One WebSocket = one database (PROTOCOL.md §4). Messages are handled in
 * arrival order; one bad message gets an error reply and never ends the
 * session unless the protocol calls it fatal.
 */
export class Session implements Subscriber {
  readonly connectionId = randomUUID();
  readonly socket: WebSocket;
  readonly remoteAddress?: string;
  databaseId = '';
  siteId = '';
  /** Set by the heartbeat: false until the socket answers the last ping. */
  alive = true;
  private state: State = 'handshake';
  private caller?: Caller;
  private lease?: Lease<Replica>;
  private lagging = false;
  private queue: Promise<void> = Promise.resolve();
  /** Replies of applies submitted but not yet answered, in submission order. */
  private applyTail: Promise<void> = Promise.resolve();
  private appliesInFlight = 0;
  private pendingFrames = 0;
  private pendingBytes = 0;
  private readPaused = false;
  /** Frames handed to ws, and how many of them it has flushed to the kernel (or dropped on close). */
  private sent = 0;
  private flushed = 0;
  private flushWaiters: { target: number; resolve: () => void }[] = [];
  private handshakeTimer?: NodeJS.Timeout;
  private hardLimitTimer?: NodeJS.Timeout;
  private closeTimer?: NodeJS.Timeout;
  private readonly bucket?: TokenBucket;
  private readonly deps: SessionDeps;
  private readonly headers: IncomingMessage['headers'];

  constructor(socket: WebSocket, req: IncomingMessage, deps: SessionDeps) {
    this.socket = socket;
    this.deps = deps;
    this.headers = req.headers;
    this.remoteAddress = deps.address;
    const { config } = deps;
    if (config.messagesPerSecond > 0) this.bucket = new TokenBucket(config.messagesPerSecond, config.messageBurst, deps.limits.now());
    deps.metrics.wsConnectionsTotal.inc();
    deps.metrics.wsConnectionsActive.inc();
    socket.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    socket.on('pong', () => { this.alive = true; });
    socket.on('close', () => void this.end());
    socket.on('error', (err) => log('socket %s error: %s', this.connectionId, err.message));
    if (config.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => {
        if (this.state !== 'handshake') return;
        deps.limits.refused('handshake_timeout');
        this.close(CloseCode.PolicyViolation, 'Handshake timeout');
      }, config.handshakeTimeoutMs);
      this.handshakeTimer.unref();
    }
  }

  /** Flush callback of every send: counts the frame and wakes whoever waits for the buffer to drain. */
  private readonly onFlushed = (): void => {
    this.flushed++;
    while (this.flushWaiters.length > 0 && this.flushWaiters[0]!.target <= this.flushed) this.flushWaiters.shift()!.resolve();
  };

  /**
   * Takes the frame's rate tokens on arrival, then queues it: frames are
   * handled one at a time, in order, so replies come back in request order.
   */
  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.state === 'closed') return;
    const bytes = rawBytes(data);
    const refusal = this.rateRefusal();
    this.pendingFrames++;
    this.pendingBytes += bytes.length;
    if (!this.readPaused && (this.pendingFrames >= MAX_PENDING_FRAMES || this.pendingBytes >= this.deps.config.maxMessageBytes)) {
      this.readPaused = true;
      this.socket.pause();
    }
    this.queue = this.queue
      .then(() => this.handleFrame(bytes, isBinary, refusal))
      .catch((err) => {
        log('session %s: unexpected failure: %s', this.connectionId, messageOf(err));
        this.sendError(ErrorCode.Internal, messageOf(err), false);
      })
      .finally(() => this.frameDone(bytes.length));
  }

  private frameDone(size: number): void {
    this.deps.inbound?.release();
    this.pendingFrames--;
    this.pendingBytes -= size;
    if (this.readPaused && this.state !== 'closed' && this.pendingFrames <= MAX_PENDING_FRAMES / 2 && this.pendingBytes < this.deps.config.maxMessageBytes / 2) {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  /** Why this frame is refused by a rate limit (the text of RATE_LIMITED), or undefined. */
  private rateRefusal(): string | undefined {
    const { config, limits } = this.deps;
    const now = limits.now();
    const wait = this.bucket?.take(now) ?? 0;
    if (wait > 0) {
      limits.refused('rate_connection');
      return `too many messages on this connection (limit ${config.messagesPerSecond}/s, burst ${config.messageBurst}); retry in ${wait} ms`;
    }
    return limits.takeAddress(this.remoteAddress ?? 'unknown', 'messages')?.message;
  }

  private async handleFrame(bytes: Buffer, isBinary: boolean, refusal: string | undefined): Promise<void> {
    // A reply waits while the client has not read earlier ones, so a client
    // that never reads cannot make the server buffer replies without limit.
    await this.writable();
    if (this.state === 'closed') return;
    if (refusal !== undefined) {
      this.sendError(ErrorCode.RateLimited, refusal, false);
      return;
    }
    if (isBinary) {
      this.sendError(ErrorCode.InvalidMessage, 'frames must be JSON text, got a binary frame', false);
      return;
    }
    const { maxJsonDepth } = this.deps.config;
    if (exceedsJsonDepth(bytes, maxJsonDepth)) {
      this.deps.limits.refused('json_depth');
      this.sendError(ErrorCode.InvalidMessage, `message: JSON nested deeper than ${maxJsonDepth} levels (maxJsonDepth)`, false);
      return;
    }
    let message: unknown;
    try {
      message = JSON.parse(bytes.toString('utf8'));
    } catch (err) {
      this.sendError(ErrorCode.MessageError, messageOf(err), false);
      return;
    }
    const type = typeof message === 'object' && message !== null && !Array.isArray(message) ? (message as { type?: unknown }).type : undefined;
    await this.dispatch(type, message as Record<string, unknown>);
  }

  private async dispatch(type: unknown, message: Record<string, unknown>): Promise<void> {
    if (this.state === 'closed') return;
    if (type === 'handshake') return this.onHandshake(message);
    if (!isKnownType(type)) {
      this.sendError(ErrorCode.UnknownMessage, `Unknown message type: ${typeof type === 'string' ? type.slice(0, 64) : String(type)}`, false);
      return;
    }
    if (this.state !== 'open' || !this.caller) {
      this.sendError(ErrorCode.NotAuthenticated, 'Must handshake first', false);
      return;
    }
    // Only applies overlap (to share commits); anything else waits for the
    // applies before it, so it sees their effects and replies stay in order.
    if (type !== 'apply_changes') await this.applyTail;
    switch (type) {
      case 'ping':
        this.send('{"type":"pong"}');
        return;
      case 'get_changes':
        return this.onGetChanges(message);
      case 'apply_changes':
        return this.onApplyChanges(message);
      case 'get_snapshot':
        return this.onSnapshot(undefined);
      case 'resume_snapshot':
        if (message.checkpoint === undefined) {
          this.sendError(ErrorCode.InvalidCheckpoint, 'checkpoint: required for resume_snapshot', false);
          return;
        }
        return this.onSnapshot(message.checkpoint);
    }
  }

  private async onHandshake(message: Record<string, unknown>): Promise<void> {
    if (this.state === 'open') {
      this.sendError(ErrorCode.AlreadyAuthenticated, 'Already authenticated', true);
      return;
    }
    const { coordinator, config } = this.deps;
    // Version first, before anything that depends on the protocol's shapes.
    const version = message.protocolVersion;
    if (version !== PROTOCOL_VERSION) {
      const client = version === undefined ? 'client sent none (pre-versioning client)' : `client speaks v${String(version).slice(0, 32)}`;
      this.fail(ErrorCode.ProtocolVersionMismatch, `Sync protocol version mismatch: server speaks v${PROTOCOL_VERSION}, ${client}`, CloseCode.ProtocolVersionMismatch, 'Protocol version mismatch');
      return;
    }
    if (message.databaseId === undefined || message.databaseId === null || message.databaseId === '') {
      this.fail(ErrorCode.MissingDatabaseId, 'databaseId is required', CloseCode.MissingDatabaseId, 'Missing databaseId');
      return;
    }
    let lease: Lease<Replica> | undefined;
    try {
      const databaseId = validateDatabaseId(message.databaseId);
      siteIdFromWire(message.siteId, 'siteId');
      const siteId = message.siteId as string;
      const token = message.token;
      if (token !== undefined && typeof token !== 'string') throw new SyncError(ErrorCode.AuthFailed, 'token: expected a string');
      const identity = await coordinator.authenticate({
        databaseId, siteId, token, transport: 'websocket', remoteAddress: this.remoteAddress, headers: this.headers,
      });
      const caller: Caller = { databaseId, siteId, identity };
      await coordinator.authorize(caller, 'connect');
      lease = await coordinator.openDatabase(databaseId);
      const hook = config.hooks.onClientConnect;
      if (hook) {
        let allowed: boolean | void;
        try {
          allowed = await hook(identity, this.info(databaseId, siteId));
        } catch (err) {
          throw new SyncError(ErrorCode.Forbidden, messageOf(err));
        }
        if (allowed === false) throw new SyncError(ErrorCode.Forbidden, 'connection refused by onClientConnect');
      }
      if (this.state !== 'handshake') {
        lease.release();
        return;
      }
      this.lease = lease;
      this.caller = caller;
      this.databaseId = databaseId;
      this.siteId = siteId;
      this.state = 'open';
      if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
      coordinator.hub.join(this);
      this.send(JSON.stringify({
        type: 'handshake_ack', databaseId, serverSiteId: lease.resource.siteIdWire, connectionId: this.connectionId, protocolVersion: PROTOCOL_VERSION,
      }));
      log('session %s: %s joined %s', this.connectionId, siteId, databaseId);
    } catch (err) {
      lease?.release();
      if (isSyncError(err) && err.code === ErrorCode.ShuttingDown) {
        this.fail(err.code, err.message, CloseCode.GoingAway, 'Server shutting down');
      } else if (isSyncError(err) && err.code !== ErrorCode.AuthFailed && err.code !== ErrorCode.Forbidden && !isInputError(err.code)) {
        log('session %s: handshake failed: %s', this.connectionId, err.message);
        this.fail(ErrorCode.Internal, err.message, CloseCode.InternalError, 'Internal error');
      } else {
        const code = isSyncError(err) && err.code === ErrorCode.Forbidden ? ErrorCode.Forbidden : ErrorCode.AuthFailed;
        this.fail(code, messageOf(err), CloseCode.AuthFailed, 'Authentication failed');
      }
    }
  }

  private async onGetChanges(message: Record<string, unknown>): Promise<void> {
    const { coordinator } = this.deps;
    try {
      await coordinator.authorize(this.caller!, 'get_changes');
      const page = await coordinator.getChanges(this.caller!, message.sinceHLC);
      // The page is already JSON text; splice it in rather than parse and re-serialize.
      this.send(`{"type":"changes","changeSets":${page.json},"hasMore":${page.hasMore}}`);
    } catch (err) {
      this.replyError(err, ErrorCode.GetChangesError);
    }
  }

  /**
   * Submits the message to its replica and moves on to the next frame
   * without waiting for the commit: consecutive applies of one client are
   * then committed together. Replies (results and errors) still go out in
   * message order through `applyTail`.
   */
  private async onApplyChanges(message: Record<string, unknown>): Promise<void> {
    const { coordinator } = this.deps;
    const requestId = message.requestId;
    const inboundDone = this.deps.inbound?.keep();
    if (this.appliesInFlight >= MAX_APPLIES_IN_FLIGHT) await this.applyTail;
    this.appliesInFlight++;
    let submitted: { done: Promise<ApplyResult> } | undefined;
    let failure: unknown;
    try {
      if (requestId !== undefined && (typeof requestId !== 'string' || requestId.length > 256)) {
        throw new SyncError(ErrorCode.InvalidMessage, `requestId: expected a string of at most 256 characters, got ${JSON.stringify(requestId)?.slice(0, 80)}`);
      }
      await coordinator.authorize(this.caller!, 'apply_changes');
      submitted = await coordinator.submitChanges(this.caller!, message.changes);
    } catch (err) {
      failure = err;
    }
    this.applyTail = this.applyTail.then(async () => {
      try {
        if (!submitted) throw failure;
        const result = await submitted.done;
        this.send(JSON.stringify(requestId === undefined ? { type: 'apply_result', ...result } : { type: 'apply_result', requestId, ...result }));
      } catch (err) {
        this.replyError(err, ErrorCode.ApplyChangesError);
      } finally {
        inboundDone?.();
        this.appliesInFlight--;
      }
    });
  }

  /** Resolves when every frame received so far has been handled and answered. */
  settled(): Promise<void> {
    return this.queue.then(() => this.applyTail);
  }

  private async onSnapshot(checkpoint: unknown): Promise<void> {
    const { coordinator } = this.deps;
    let started = false;
    try {
      await coordinator.authorize(this.caller!, 'get_snapshot');
      for await (const chunk of coordinator.snapshot(this.caller!, checkpoint)) {
        await this.writable();
        if (this.state === 'closed') return;
        started = true;
        this.send(`{"type":"snapshot_chunk","chunk":${chunk}}`);
      }
      this.send('{"type":"snapshot_complete"}');
    } catch (err) {
      if (this.state === 'closed') return;
      if (started) this.sendError(ErrorCode.SnapshotError, messageOf(err), false);
      else this.replyError(err, ErrorCode.SnapshotError);
    }
  }

  /** Pushes from other sites; never queued past the push high-water mark. */
  push(frame: string): boolean {
    if (this.state !== 'open' || this.socket.readyState !== this.socket.OPEN) return false;
    if (this.lagging) return false;
    if (this.socket.bufferedAmount > this.deps.config.pushHighWaterBytes) {
      // The client reads too slowly: stop queueing pushes and, once everything
      // queued so far has drained, tell it to catch up from its cursor, so
      // nothing is lost and its buffer stays bounded.
      this.lagging = true;
      this.deps.limits.lagged();
      log('session %s lags (%d bytes queued); pushes stop until it drains', this.connectionId, this.socket.bufferedAmount);
      void this.drained().then(() => this.recoverFromLag());
      return false;
    }
    this.send(frame);
    return true;
  }

  private recoverFromLag(): void {
    if (this.state !== 'open') return;
    this.lagging = false;
    this.sendError(ErrorCode.Lagging, 'pushes were skipped while this client read slowly; call get_changes from your cursor', false);
  }

  /** Resolves when the socket's buffer is under the send high-water mark (at once if it is). */
  private writable(): Promise<void> {
    if (this.state === 'closed' || this.socket.bufferedAmount <= this.deps.config.sendHighWaterBytes) return Promise.resolve();
    return this.drained();
  }

  /** Resolves when every frame sent so far has been flushed (or dropped because the socket closed). */
  private drained(): Promise<void> {
    if (this.flushed >= this.sent || this.state === 'closed') return Promise.resolve();
    return new Promise((resolve) => this.flushWaiters.push({ target: this.sent, resolve }));
  }

  private send(text: string): void {
    if (this.socket.readyState !== this.socket.OPEN) return;
    this.sent++;
    this.socket.send(text, this.onFlushed);
    const { sendHardLimitBytes, sendHardLimitMs } = this.deps.config;
    if (sendHardLimitMs > 0 && !this.hardLimitTimer && this.socket.bufferedAmount > sendHardLimitBytes) {
      // Over the hard limit now; if it still is after sendHardLimitMs the client is not reading.
      this.hardLimitTimer = setTimeout(() => {
        this.hardLimitTimer = undefined;
        if (this.state === 'closed' || this.socket.bufferedAmount <= sendHardLimitBytes) return;
        log('session %s: %d bytes still queued after %d ms; closing', this.connectionId, this.socket.bufferedAmount, sendHardLimitMs);
        this.deps.limits.refused('send_buffer');
        this.close(CloseCode.TryAgainLater, 'Send buffer over limit');
      }, sendHardLimitMs);
      this.hardLimitTimer.unref();
    }
  }

  private sendError(code: string, message: string, fatal: boolean): void {
    this.send(JSON.stringify({ type: 'error', code, message, fatal }));
  }

  /** Replies with the SyncError's own code, or `fallback` for anything else. */
  private replyError(err: unknown, fallback: string): void {
    if (isSyncError(err) && err.code !== ErrorCode.Internal) {
      this.sendError(err.code, err.message, false);
    } else {
      log('session %s: %s', this.connectionId, messageOf(err));
      this.sendError(fallback, messageOf(err), false);
    }
  }

  private fail(code: string, message: string, closeCode: number, reason: string): void {
    this.sendError(code, message, true);
    this.close(closeCode, reason);
  }

  /**
   * Closes the socket (the session ends on its close event), and destroys it
   * if the client has not answered the close frame within CLOSE_GRACE_MS.
   */
  close(code: number, reason: string): void {
    if (this.socket.readyState === this.socket.OPEN || this.socket.readyState === this.socket.CONNECTING) {
      // Read again, or the client's answering close frame is never seen.
      if (this.readPaused) this.socket.resume();
      this.socket.close(code, reason);
    }
    if (!this.closeTimer && this.socket.readyState !== this.socket.CLOSED) {
      this.closeTimer = setTimeout(() => this.socket.terminate(), CLOSE_GRACE_MS);
      this.closeTimer.unref();
    }
  }

  private info(databaseId = this.databaseId, siteId = this.siteId): ClientInfo {
    return { databaseId, siteId, connectionId: this.connectionId, remoteAddress: this.remoteAddress };
  }

  private async end(): Promise<void> {
    if (this.state === 'closed') return;
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.hardLimitTimer);
    clearTimeout(this.closeTimer);
    // Nothing more will flush; wake the message or stream waiting for a drain.
    for (const waiter of this.flushWaiters.splice(0)) waiter.resolve();
    this.deps.metrics.wsConnectionsActive.dec();
    this.deps.coordinator.hub.leave(this);
    // Let the message in progress finish before the database may close.
    await this.settled();
    this.lease?.release();
    this.lease = undefined;
    if (wasOpen && this.deps.config.hooks.onClientDisconnect) {
      try {
        await this.deps.config.hooks.onClientDisconnect(this.caller!.identity, this.info());
      } catch (err) {
        log('onClientDisconnect failed: %s', messageOf(err));
      }
    }
    this.deps.onEnd(this);
  }
}

const KNOWN_TYPES = new Set(['ping', 'get_changes', 'apply_changes', 'get_snapshot', 'resume_snapshot']);

function isKnownType(type: unknown): type is 'ping' | 'get_changes' | 'apply_changes' | 'get_snapshot' | 'resume_snapshot' {
  return typeof type === 'string' && KNOWN_TYPES.has(type);
}

function isInputError(code: string): boolean {
  return code === ErrorCode.InvalidDatabaseId || code === ErrorCode.InvalidSiteId;
}

function rawBytes(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
