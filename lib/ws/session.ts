import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { RawData, WebSocket } from 'ws';
import { SyncError, ErrorCode, CloseCode, dispositionOf, isSyncError, messageOf } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { logs } from '../log.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import { validateCursor } from '../protocol/validate.js';
import type { Subscriber } from '../hub/hub.js';
import type { Push } from '../delivery/push.js';
import { DeliveryStream } from '../delivery/stream.js';
import { backlogRequest } from '../delivery/backlog.js';
import { RefusedWrites, isRetryableRefusal } from '../delivery/refused-writes.js';
import type { Caller, Connection, Coordinator, SubmittedChanges } from '../service/coordinator.js';
import type { ClientInfo } from '../config/hooks.js';
import { TokenBucket, exceedsJsonDepth, type Limits } from '../service/limits.js';
import { FrameGate, type InboundMeter } from './inbound.js';
import { Outbound } from './outbound.js';

const log = logs.ws;

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
 * One WebSocket = one database (docs/protocol.md §4): lifecycle and dispatch.
 * Messages are handled in arrival order; one bad message gets an error
 * reply and never ends the session unless the protocol calls it fatal.
 * Writes and backpressure live in `Outbound`, what the client is sent of
 * the database's changes in its `DeliveryStream`, the handshake's checks in
 * `Coordinator.connect`.
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
  private connection?: Connection;
  private delivery?: DeliveryStream;
  /** Pulls this client's writes again after a transient refusal (real clients do not retry). */
  private refusedWrites?: RefusedWrites;
  private readonly out: Outbound;
  private queue: Promise<void> = Promise.resolve();
  /** Replies of applies submitted but not yet answered, in submission order. */
  private applyTail: Promise<void> = Promise.resolve();
  private appliesInFlight = 0;
  private readonly gate: FrameGate;
  private handshakeTimer?: NodeJS.Timeout;
  private closeTimer?: NodeJS.Timeout;
  private readonly bucket?: TokenBucket;
  private readonly deps: SessionDeps;
  /** The upgrade request's headers, for the handshake's hooks only: dropped when the handshake starts, so an idle socket keeps nothing of its request. */
  private headers?: IncomingMessage['headers'];

  constructor(socket: WebSocket, req: IncomingMessage, deps: SessionDeps) {
    this.socket = socket;
    this.deps = deps;
    this.headers = req.headers;
    this.remoteAddress = deps.address;
    const { config } = deps;
    this.gate = new FrameGate(socket, config.maxMessageBytes, deps.inbound);
    this.out = new Outbound(socket, config, (queued) => {
      log('session %s: %d bytes still queued after %d ms; closing', this.connectionId, queued, config.sendHardLimitMs);
      deps.limits.refused('send_buffer');
      this.close(CloseCode.TryAgainLater, 'Send buffer over limit');
    });
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

  /**
   * Takes the frame's rate tokens on arrival, then queues it: frames are
   * handled one at a time, in order, so replies come back in request order.
   */
  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.state === 'closed') return;
    const bytes = rawBytes(data);
    const refusal = this.rateRefusal();
    this.gate.received(bytes.length);
    this.queue = this.queue
      .then(() => this.handleFrame(bytes, isBinary, refusal))
      .catch((err) => {
        log('session %s: unexpected failure: %s', this.connectionId, messageOf(err));
        this.sendError(ErrorCode.Internal, messageOf(err), false);
      })
      .finally(() => this.gate.handled(bytes.length));
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
    await this.out.writable();
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
    if (this.state !== 'open' || !this.connection) {
      this.sendError(ErrorCode.NotAuthenticated, 'Must handshake first', false);
      return;
    }
    // Only applies overlap (to share commits); anything else waits for the
    // applies before it, so it sees their effects and replies stay in order.
    if (type !== 'apply_changes') await this.applyTail;
    switch (type) {
      case 'ping':
        this.out.send('{"type":"pong"}');
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
      this.fail(new SyncError(ErrorCode.ProtocolVersionMismatch, `Sync protocol version mismatch: server speaks v${PROTOCOL_VERSION}, ${client}`, { fatal: true }));
      return;
    }
    if (message.databaseId === undefined || message.databaseId === null || message.databaseId === '') {
      this.fail(new SyncError(ErrorCode.MissingDatabaseId, 'databaseId is required', { fatal: true }));
      return;
    }
    // A well-formed handshake arrived: opening the database may take a while
    // (a restore from the archive), which is not the client's delay.
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    // Every way out of this handshake either opens the session or closes the socket: nothing needs them after it.
    const headers = this.headers;
    this.headers = undefined;
    const clientPaging = message.clientPaging;
    if (clientPaging !== undefined && typeof clientPaging !== 'boolean') {
      this.fail(new SyncError(ErrorCode.InvalidMessage, `clientPaging: expected true or false, got ${JSON.stringify(clientPaging)?.slice(0, 40)}`, { fatal: true }), CloseCode.PolicyViolation);
      return;
    }
    let connection: Connection;
    try {
      connection = await coordinator.connect({
        databaseId: message.databaseId, siteId: message.siteId, token: message.token,
        connectionId: this.connectionId, remoteAddress: this.remoteAddress, headers: headers ?? {},
      });
    } catch (err) {
      log('session %s: handshake refused: %s', this.connectionId, messageOf(err));
      this.fail(err);
      return;
    }
    if (this.state !== 'handshake') {
      connection.lease.release();
      return;
    }
    const { caller } = connection;
    this.connection = connection;
    this.databaseId = caller.databaseId;
    this.siteId = caller.siteId;
    this.state = 'open';
    clearTimeout(this.handshakeTimer);
    const start = coordinator.subscribe(this, connection);
    this.delivery = new DeliveryStream(this.out, coordinator.changeFeed(caller), {
      pushHighWaterBytes: config.pushHighWaterBytes,
      clientPaging: clientPaging === true,
      onFailure: (err) => {
        log('session %s: delivery from the log failed: %s', this.connectionId, messageOf(err));
        this.close(dispositionOf(isSyncError(err) ? err.code : ErrorCode.Internal).close ?? CloseCode.InternalError, 'Delivery failed; reconnect');
      },
      onLag: () => {
        this.deps.limits.lagged();
        log('session %s lags (%d bytes queued); it gets what it misses from the log once it drains', this.connectionId, this.out.bufferedBytes);
      },
    }, start);
    this.out.send(JSON.stringify({
      type: 'handshake_ack', databaseId: caller.databaseId, serverSiteId: connection.serverSiteId, connectionId: this.connectionId, protocolVersion: PROTOCOL_VERSION,
    }));
    log('session %s: %s joined %s', this.connectionId, caller.siteId, caller.databaseId);
  }

  private get caller(): Caller {
    return this.connection!.caller;
  }

  /**
   * Answers with the first page, then the delivery stream sends the rest on
   * its own (unless the client pages itself) and goes live (docs/protocol.md §9).
   */
  private async onGetChanges(message: Record<string, unknown>): Promise<void> {
    try {
      const cursor = validateCursor(message.sinceHLC);
      await this.deps.coordinator.authorize(this.caller, 'get_changes');
      await this.delivery!.catchUp(cursor);
    } catch (err) {
      this.replyError(err, ErrorCode.GetChangesError);
    }
  }

  /**
   * Submits the message to its replica and moves on to the next frame
   * without waiting for the commit: consecutive applies of one client are
   * then committed together. Replies (results and errors) still go out in
   * message order through `applyTail`; after a full client batch, the reply
   * is followed by a `request_changes` that pulls the next one (§9).
   */
  private async onApplyChanges(message: Record<string, unknown>): Promise<void> {
    const { coordinator } = this.deps;
    const requestId = message.requestId;
    const inboundDone = this.deps.inbound?.keep();
    if (this.appliesInFlight >= MAX_APPLIES_IN_FLIGHT) await this.applyTail;
    this.appliesInFlight++;
    let submitted: SubmittedChanges | undefined;
    let failure: unknown;
    try {
      if (requestId !== undefined && (typeof requestId !== 'string' || requestId.length > 256)) {
        throw new SyncError(ErrorCode.InvalidMessage, `requestId: expected a string of at most 256 characters, got ${JSON.stringify(requestId)?.slice(0, 80)}`);
      }
      await coordinator.authorize(this.caller, 'apply_changes');
      submitted = await coordinator.submitChanges(this.caller, message.changes);
    } catch (err) {
      failure = err;
    }
    this.applyTail = this.applyTail.then(async () => {
      try {
        if (!submitted) throw failure;
        const result = await submitted.done.catch((err: unknown) => {
          // Nothing of it was stored and a real client will not resend it: pull it later (§9).
          if (this.state === 'open' && isSyncError(err) && isRetryableRefusal(err.code) && submitted!.firstHlc) this.pullsOfRefused().refused(submitted!.firstHlc);
          throw err;
        });
        this.refusedWrites?.accepted(submitted.firstHlc);
        this.out.send(JSON.stringify(requestId === undefined ? { type: 'apply_result', ...result } : { type: 'apply_result', requestId, ...result }));
        const pull = backlogRequest(submitted.changeCount, submitted.lastHlc, this.connection!.serverSiteId);
        if (pull) this.out.send(pull);
      } catch (err) {
        this.replyError(err, ErrorCode.ApplyChangesError);
      } finally {
        inboundDone?.();
        this.appliesInFlight--;
      }
    });
  }

  /** The socket's RefusedWrites, made at its first transient refusal (most sockets never meet one). */
  private pullsOfRefused(): RefusedWrites {
    const { coordinator } = this.deps;
    const { databaseId } = this.caller;
    this.refusedWrites ??= new RefusedWrites({
      send: (frame) => this.out.send(frame),
      serverSiteId: this.connection!.serverSiteId,
      writable: () => coordinator.writable(databaseId),
    });
    return this.refusedWrites;
  }

  /** Resolves when every frame received so far has been handled and answered. */
  settled(): Promise<void> {
    return this.queue.then(() => this.applyTail);
  }

  private async onSnapshot(checkpoint: unknown): Promise<void> {
    const { coordinator } = this.deps;
    let started = false;
    try {
      await coordinator.authorize(this.caller, 'get_snapshot');
      for await (const chunk of coordinator.snapshot(this.caller, checkpoint)) {
        await this.out.writable();
        if (this.state === 'closed') return;
        started = true;
        this.out.send(`{"type":"snapshot_chunk","chunk":${chunk}}`);
      }
      this.out.send('{"type":"snapshot_complete"}');
    } catch (err) {
      if (this.state === 'closed') return;
      if (started) this.sendError(ErrorCode.SnapshotError, messageOf(err), false);
      else this.replyError(err, ErrorCode.SnapshotError);
    }
  }

  /** Bytes handed to the socket and not yet flushed (metrics). */
  get bufferedBytes(): number {
    return this.out.bufferedBytes;
  }

  /** Subscriber: whether its delivery stream is sending the stored log rather than live pushes. */
  get catchingUp(): boolean {
    return this.delivery?.catchingUp ?? false;
  }

  /** Offers a committed push from another site to this socket's delivery stream. */
  offer(push: Push): boolean {
    if (this.state !== 'open' || !this.delivery) return false;
    return this.delivery.offer(push);
  }

  private sendError(code: string, message: string, fatal: boolean): void {
    this.deps.metrics.errorsTotal.inc({ code });
    this.out.send(JSON.stringify({ type: 'error', code, message, fatal }));
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

  /**
   * Ends the session with an error, as the table in errors.ts says: refusals
   * are fatal (the client stops retrying), server faults are transient and
   * closed with a code that lets the client come back.
   */
  private fail(err: unknown, closeCode?: number): void {
    const code = isSyncError(err) ? err.code : ErrorCode.Internal;
    const disposition = dispositionOf(code);
    const fatal = (isSyncError(err) && err.fatal) || disposition.fatal;
    this.sendError(code, isSyncError(err) ? err.message : 'internal error', fatal);
    this.close(closeCode ?? disposition.close ?? (fatal ? CloseCode.AuthFailed : CloseCode.InternalError), closeReason(code));
  }

  /**
   * Closes the socket (the session ends on its close event), and destroys it
   * if the client has not answered the close frame within CLOSE_GRACE_MS.
   */
  close(code: number, reason: string): void {
    if (this.socket.readyState === this.socket.OPEN || this.socket.readyState === this.socket.CONNECTING) {
      this.gate.openForClose();
      this.socket.close(code, reason);
    }
    if (!this.closeTimer && this.socket.readyState !== this.socket.CLOSED) {
      this.closeTimer = setTimeout(() => this.socket.terminate(), CLOSE_GRACE_MS);
      this.closeTimer.unref();
    }
  }

  private info(): ClientInfo {
    return { databaseId: this.databaseId, siteId: this.siteId, connectionId: this.connectionId, remoteAddress: this.remoteAddress };
  }

  private async end(): Promise<void> {
    if (this.state === 'closed') return;
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.closeTimer);
    // Nothing more will flush; wake the message or stream waiting for a drain.
    this.out.end();
    this.delivery?.close();
    this.refusedWrites?.close();
    this.deps.metrics.wsConnectionsActive.dec();
    this.deps.coordinator.hub.leave(this);
    // Let the message in progress finish before the database may close.
    await this.settled();
    this.connection?.lease.release();
    if (wasOpen && this.deps.config.hooks.onClientDisconnect) {
      try {
        await this.deps.config.hooks.onClientDisconnect(this.caller.identity, this.info());
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

const CLOSE_REASONS: Record<string, string> = {
  [ErrorCode.ProtocolVersionMismatch]: 'Protocol version mismatch',
  [ErrorCode.MissingDatabaseId]: 'Missing databaseId',
  [ErrorCode.AuthFailed]: 'Authentication failed',
  [ErrorCode.Forbidden]: 'Authentication failed',
  [ErrorCode.ShuttingDown]: 'Server shutting down',
  [ErrorCode.InvalidMessage]: 'Malformed handshake',
};

function closeReason(code: string): string {
  return CLOSE_REASONS[code] ?? 'Internal error; try again';
}

function rawBytes(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
