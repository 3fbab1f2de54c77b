import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { RawData, WebSocket } from 'ws';
import { SyncError, ErrorCode, CloseCode, describeValue, dispositionOf, isSyncError, messageOf } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { logs } from '../log.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import { validateCursor } from '../protocol/validate.js';
import type { Subscriber } from '../hub/hub.js';
import type { Push } from '../delivery/push.js';
import { DeliveryStream } from '../delivery/stream.js';
import { backlogRequest } from '../delivery/backlog.js';
import { RefusedWrites, isRetryableRefusal, refusedApplyHlc } from '../delivery/refused-writes.js';
import type { Caller, Connection, Coordinator, SubmittedChanges } from '../service/coordinator.js';
import type { ClientInfo } from '../config/hooks.js';
import { TokenBucket, exceedsJsonDepth, type Limits } from '../service/limits.js';
import type { DeliveryOptions } from '../delivery/stream.js';
import { FrameGate, type InboundMeter } from './inbound.js';
import { Outbound, type OutboundOwner } from './outbound.js';
import { MAX_DELAYED_FRAME_BYTES, RateWait, delayedOverRate } from './rate-wait.js';

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

/** What a session needs from the router: one object, shared by all its sessions. */
export interface SessionDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
  limits: Limits;
  /** Called once when a session has ended. */
  onEnd(session: Session): void;
}

/**
 * Where a socket's listeners find their session: they are the static
 * functions of `Session`, shared by every socket, so that an idle socket
 * keeps no closure of its own.
 */
const kSession = Symbol('sync-coordinator:session');

function sessionOf(socket: WebSocket): Session {
  return (socket as WebSocket & { [kSession]: Session })[kSession];
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
export class Session implements Subscriber, OutboundOwner {
  readonly connectionId = randomUUID();
  readonly socket: WebSocket;
  /** The client address the limits and hooks see (see `trustProxy`). */
  readonly remoteAddress: string;
  /** Set by the heartbeat: false until the socket answers the last ping. */
  alive = true;
  private state: State = 'handshake';
  private connection?: Connection;
  private delivery?: DeliveryStream;
  /** Pulls this client's writes again after a transient refusal (real clients do not retry). */
  private refusedWrites?: RefusedWrites;
  private readonly out: Outbound;
  /** Frames being handled, in order; absent when none is (an idle socket holds no promise). */
  private queue?: Promise<void>;
  /** Replies of applies submitted but not yet answered, in submission order; absent when none is pending. */
  private applyTail?: Promise<void>;
  private appliesInFlight = 0;
  private readonly gate: FrameGate;
  private handshakeTimer?: NodeJS.Timeout;
  private closeTimer?: NodeJS.Timeout;
  private readonly bucket?: TokenBucket;
  /** The wait of a frame delayed by the rate limits, made at the first (most sockets never meet one). */
  private rateWait?: RateWait;
  private readonly deps: SessionDeps;
  /** The upgrade request's headers, for the handshake's hooks only: dropped when the handshake starts, so an idle socket keeps nothing of its request. */
  private headers?: IncomingMessage['headers'];

  /**
   * `address` is the client address the limits and hooks see (see
   * `trustProxy`); `inbound` this socket's share of the router's inbound
   * budget (§9), told when each message has been handled (an apply:
   * answered); it closes itself with the socket.
   */
  constructor(socket: WebSocket, req: IncomingMessage, deps: SessionDeps, address: string, inbound?: InboundMeter) {
    this.socket = socket;
    this.deps = deps;
    this.headers = req.headers;
    this.remoteAddress = address;
    const { config } = deps;
    this.gate = new FrameGate(socket, config.maxMessageBytes, inbound);
    this.out = new Outbound(socket, config, this);
    if (config.messagesPerSecond > 0) this.bucket = new TokenBucket(config.messagesPerSecond, config.messageBurst, deps.limits.now());
    deps.metrics.wsConnectionsTotal.inc();
    deps.metrics.wsConnectionsActive.inc();
    (socket as WebSocket & { [kSession]: Session })[kSession] = this;
    socket.on('message', Session.onSocketMessage);
    socket.on('pong', Session.onSocketPong);
    socket.on('close', Session.onSocketClose);
    socket.on('error', Session.onSocketError);
    if (config.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(Session.onHandshakeTimeout, config.handshakeTimeoutMs, this);
      this.handshakeTimer.unref();
    }
  }

  private static onSocketMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
    sessionOf(this).onMessage(data, isBinary);
  }

  private static onSocketPong(this: WebSocket): void {
    sessionOf(this).alive = true;
  }

  private static onSocketClose(this: WebSocket): void {
    void sessionOf(this).end();
  }

  private static onSocketError(this: WebSocket, err: Error): void {
    log('socket %s error: %s', sessionOf(this).connectionId, err.message);
  }

  private static onHandshakeTimeout(session: Session): void {
    if (session.state !== 'handshake') return;
    session.deps.limits.refused('handshake_timeout');
    session.close(CloseCode.PolicyViolation, 'Handshake timeout');
  }

  /** Database of the session; '' until its handshake is accepted. */
  get databaseId(): string {
    return this.connection?.caller.databaseId ?? '';
  }

  /** Site id (base64url) of the client; '' until its handshake is accepted. */
  get siteId(): string {
    return this.connection?.caller.siteId ?? '';
  }

  /** OutboundOwner: the client stopped reading what it is sent; closes the socket so that it reconnects. */
  sendStalled(queuedBytes: number): void {
    log('session %s: %d bytes still queued after %d ms; closing', this.connectionId, queuedBytes, this.deps.config.sendHardLimitMs);
    this.deps.limits.refused('send_buffer');
    this.close(CloseCode.TryAgainLater, 'Send buffer over limit');
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
    this.queue = (this.queue ?? Promise.resolve())
      .then(() => this.handleFrame(bytes, isBinary, refusal))
      .catch((err) => {
        log('session %s: unexpected failure: %s', this.connectionId, messageOf(err));
        this.sendError(ErrorCode.Internal, messageOf(err), false);
      })
      .finally(() => {
        this.gate.handled(bytes.length);
        // The last frame received is handled: nothing is chained after this one.
        if (this.gate.pending === 0) this.queue = undefined;
      });
  }

  /**
   * Why this frame is over a rate limit (the text of RATE_LIMITED and the ms
   * until a token), or undefined. Counted in sync_limit_refusals_total unless
   * `counted` is false (a delayed frame asking again: it counted once).
   */
  private rateRefusal(counted = true): RateRefusal | undefined {
    const { config, limits } = this.deps;
    const now = limits.now();
    const waitMs = this.bucket?.take(now) ?? 0;
    if (waitMs > 0) {
      if (counted) limits.refused('rate_connection');
      return { waitMs, message: `too many messages on this connection (limit ${config.messagesPerSecond}/s, burst ${config.messageBurst}); retry in ${waitMs} ms` };
    }
    return limits.takeAddress(this.remoteAddress, 'messages', counted);
  }

  private async handleFrame(bytes: Buffer, isBinary: boolean, refusal: RateRefusal | undefined): Promise<void> {
    // A reply waits while the client has not read earlier ones, so a client
    // that never reads cannot make the server buffer replies without limit.
    await this.out.writable();
    if (this.state === 'closed') return;
    if (refusal !== undefined) return this.overRate(bytes, isBinary, refusal);
    if (isBinary) {
      this.sendError(ErrorCode.InvalidMessage, 'frames must be JSON text, got a binary frame', false);
      return;
    }
    const parsed = parseFrame(bytes, this.deps.config.maxJsonDepth);
    if ('error' in parsed) {
      if (parsed.error.code === ErrorCode.InvalidMessage) this.deps.limits.refused('json_depth');
      this.sendError(parsed.error.code, parsed.error.message, false);
      return;
    }
    const { message } = parsed;
    await this.dispatch(typeOf(message), message as Record<string, unknown>);
  }

  /**
   * A frame over the rate. The frames a real client sends once per
   * connection (rate-wait.ts) wait for a token and are then handled as if
   * they had come in time; frames after them wait their turn. Any other is
   * answered RATE_LIMITED and dropped, and a dropped `apply_changes` of an
   * open session is pulled again later (pullRateLimited).
   */
  private async overRate(bytes: Buffer, isBinary: boolean, refusal: RateRefusal): Promise<void> {
    let parsed: ParsedFrame | undefined;
    if (!isBinary && bytes.length <= MAX_DELAYED_FRAME_BYTES) {
      parsed = parseFrame(bytes, this.deps.config.maxJsonDepth);
      const message = 'message' in parsed ? parsed.message : undefined;
      const type = typeOf(message);
      if (delayedOverRate(type)) {
        // A handshake that came in time is held only by the limit: the handshake timeout no longer applies.
        if (type === 'handshake' && this.state === 'handshake') this.stopHandshakeTimer();
        this.rateWait ??= new RateWait();
        const granted = await this.rateWait.until(refusal.waitMs, () => this.rateRefusal(false)?.waitMs ?? 0);
        if (granted && this.state !== 'closed') await this.dispatch(type, message as Record<string, unknown>);
        return;
      }
    }
    this.sendError(ErrorCode.RateLimited, refusal.message, false);
    if (!isBinary) this.pullRateLimited(bytes, parsed);
  }

  private async dispatch(type: unknown, message: Record<string, unknown>): Promise<void> {
    if (this.state === 'closed') return;
    if (type === 'handshake') return this.onHandshake(message);
    if (!isKnownType(type)) {
      this.sendError(ErrorCode.UnknownMessage, `Unknown message type: ${typeof type === 'string' ? type.slice(0, 64) : describeValue(type)}`, false);
      return;
    }
    if (this.state !== 'open' || !this.connection) {
      this.sendError(ErrorCode.NotAuthenticated, 'Must handshake first', false);
      return;
    }
    // Only applies overlap (to share commits); anything else waits for the
    // applies before it, so it sees their effects and replies stay in order.
    if (type !== 'apply_changes' && this.applyTail) await this.applyTail;
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
      const client = version === undefined ? 'client sent none (pre-versioning client)'
        : typeof version === 'number' ? `client speaks v${String(version).slice(0, 32)}`
        : `client sent protocolVersion ${describeValue(version)}`;
      this.fail(new SyncError(ErrorCode.ProtocolVersionMismatch, `Sync protocol version mismatch: server speaks v${PROTOCOL_VERSION}, ${client}`, { fatal: true }));
      return;
    }
    if (message.databaseId === undefined || message.databaseId === null || message.databaseId === '') {
      this.fail(new SyncError(ErrorCode.MissingDatabaseId, 'databaseId is required', { fatal: true }));
      return;
    }
    // A well-formed handshake arrived: opening the database may take a while
    // (a restore from the archive), which is not the client's delay.
    this.stopHandshakeTimer();
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
    this.state = 'open';
    const start = coordinator.subscribe(this, connection);
    const events = new DeliveryEvents(this, this.deps.limits, config.pushHighWaterBytes, clientPaging === true);
    this.delivery = new DeliveryStream(this.out, coordinator.changeFeed(caller), events, start);
    this.out.send(JSON.stringify({
      type: 'handshake_ack', databaseId: caller.databaseId, serverSiteId: connection.serverSiteId, connectionId: this.connectionId, protocolVersion: PROTOCOL_VERSION,
    }));
    log('session %s: %s joined %s', this.connectionId, caller.siteId, caller.databaseId);
  }

  /** The handshake came (or came in time and waits for a rate limit): the handshake timeout no longer applies. */
  private stopHandshakeTimer(): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
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
    const inboundDone = this.gate.meter?.keep();
    if (this.appliesInFlight >= MAX_APPLIES_IN_FLIGHT && this.applyTail) await this.applyTail;
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
    this.applyTail = (this.applyTail ?? Promise.resolve()).then(async () => {
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
        // The last apply in flight is answered: nothing is chained after this reply.
        if (--this.appliesInFlight === 0) this.applyTail = undefined;
      }
    });
  }

  /**
   * A real client does not resend a write refused with RATE_LIMITED either
   * (§8): when the refused frame is an `apply_changes` of an open session,
   * its change sets are pulled later like those of any refused write (§9).
   * `parsed` is the frame as overRate parsed it, if it did. While a pull is
   * already waiting, a frame not yet parsed is not parsed at all: a real
   * client's next push starts where its last acknowledged one ended, so it
   * holds nothing older than what the pull asks for.
   */
  private pullRateLimited(bytes: Buffer, parsed: ParsedFrame | undefined): void {
    if (this.state !== 'open' || this.refusedWrites?.pending) return;
    parsed ??= parseFrame(bytes, this.deps.config.maxJsonDepth);
    const first = 'message' in parsed ? refusedApplyHlc(parsed.message) : undefined;
    if (first) this.pullsOfRefused().refused(first);
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
    return (this.queue ?? Promise.resolve()).then(() => this.applyTail);
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

  /**
   * The cursor of this session's `get_changes` is older than the retention
   * horizon: the client is told (SNAPSHOT_REQUIRED, not fatal) before its
   * delivery stream sends what the log still holds after that cursor.
   */
  cursorExpired(err: unknown): void {
    log('session %s: cursor older than the retention floor; sending the log after it all the same', this.connectionId);
    this.replyError(err, ErrorCode.GetChangesError);
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
    this.rateWait?.cancel();
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

/**
 * A session's delivery stream options, with its callbacks as methods on a
 * prototype: an idle socket keeps this one small object rather than a
 * closure per callback.
 */
class DeliveryEvents implements DeliveryOptions {
  private readonly session: Session;
  private readonly limits: Limits;
  readonly pushHighWaterBytes: number;
  readonly clientPaging: boolean;

  constructor(session: Session, limits: Limits, pushHighWaterBytes: number, clientPaging: boolean) {
    this.session = session;
    this.limits = limits;
    this.pushHighWaterBytes = pushHighWaterBytes;
    this.clientPaging = clientPaging;
  }

  onFailure(err: unknown): void {
    log('session %s: delivery from the log failed: %s', this.session.connectionId, messageOf(err));
    this.session.close(dispositionOf(isSyncError(err) ? err.code : ErrorCode.Internal).close ?? CloseCode.InternalError, 'Delivery failed; reconnect');
  }

  onCursorExpired(err: unknown): void {
    this.session.cursorExpired(err);
  }

  onLag(): void {
    this.limits.lagged();
    log('session %s lags (%d bytes queued); it gets what it misses from the log once it drains', this.session.connectionId, this.session.bufferedBytes);
  }
}

/** A text frame as JSON, or the error it is answered with. */
type ParsedFrame = { message: unknown } | { error: SyncError };

/**
 * A text frame as JSON, or the error it is answered with: INVALID_MESSAGE
 * when nested deeper than `maxJsonDepth` (checked before parsing, since
 * JSON.parse takes any depth), MESSAGE_ERROR when it is not JSON.
 */
function parseFrame(bytes: Buffer, maxJsonDepth: number): ParsedFrame {
  if (exceedsJsonDepth(bytes, maxJsonDepth)) {
    return { error: new SyncError(ErrorCode.InvalidMessage, `message: JSON nested deeper than ${maxJsonDepth} levels (maxJsonDepth)`) };
  }
  try {
    return { message: JSON.parse(bytes.toString('utf8')) as unknown };
  } catch (err) {
    return { error: new SyncError(ErrorCode.MessageError, messageOf(err)) };
  }
}

/** The `type` of a parsed frame when it is an object, else undefined. */
function typeOf(message: unknown): unknown {
  return typeof message === 'object' && message !== null && !Array.isArray(message) ? (message as { type?: unknown }).type : undefined;
}

/** A frame over a rate limit: the RATE_LIMITED text, and the ms until the limit would take it. */
interface RateRefusal {
  waitMs: number;
  message: string;
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
