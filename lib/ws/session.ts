import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { RawData, WebSocket } from 'ws';
import { SyncError, ErrorCode, CloseCode, isSyncError } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { logs } from '../log.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import { siteIdFromWire } from '../protocol/site-id.js';
import type { Replica } from '../replica/replica.js';
import { validateDatabaseId } from '../storage/database-id.js';
import type { Lease } from '../storage/replica-pool.js';
import type { Subscriber } from '../hub/hub.js';
import { messageOf, type Caller, type Coordinator } from '../service/coordinator.js';
import type { ClientInfo } from '../service/hooks.js';

const log = logs.ws;

/** Above this many buffered bytes a stream waits for the socket to drain. */
const STREAM_HIGH_WATER = 1024 * 1024;
/** Above this many buffered bytes pushes are not queued; the session lags and catches up by cursor. */
const PUSH_HIGH_WATER = 8 * 1024 * 1024;

/** What a session needs from the router. */
export interface SessionDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
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
  private handshakeTimer?: NodeJS.Timeout;
  private readonly deps: SessionDeps;
  private readonly headers: IncomingMessage['headers'];

  constructor(socket: WebSocket, req: IncomingMessage, deps: SessionDeps) {
    this.socket = socket;
    this.deps = deps;
    this.headers = req.headers;
    this.remoteAddress = req.socket.remoteAddress;
    deps.metrics.wsConnectionsTotal.inc();
    deps.metrics.wsConnectionsActive.inc();
    socket.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    socket.on('pong', () => { this.alive = true; });
    socket.on('close', () => void this.end());
    socket.on('error', (err) => log('socket %s error: %s', this.connectionId, err.message));
    if (deps.config.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => {
        if (this.state === 'handshake') this.close(CloseCode.PolicyViolation, 'Handshake timeout');
      }, deps.config.handshakeTimeoutMs);
      this.handshakeTimer.unref();
    }
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.state === 'closed') return;
    if (isBinary) {
      this.sendError(ErrorCode.InvalidMessage, 'frames must be JSON text, got a binary frame', false);
      return;
    }
    let message: unknown;
    try {
      message = JSON.parse(rawText(data));
    } catch (err) {
      this.sendError(ErrorCode.MessageError, messageOf(err), false);
      return;
    }
    const type = typeof message === 'object' && message !== null && !Array.isArray(message) ? (message as { type?: unknown }).type : undefined;
    this.queue = this.queue.then(() => this.dispatch(type, message as Record<string, unknown>)).catch((err) => {
      log('session %s: unexpected failure: %s', this.connectionId, messageOf(err));
      this.sendError(ErrorCode.Internal, messageOf(err), false);
    });
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
      this.send(JSON.stringify({ type: 'changes', changeSets: page.changeSets, hasMore: page.hasMore }));
    } catch (err) {
      this.replyError(err, ErrorCode.GetChangesError);
    }
  }

  private async onApplyChanges(message: Record<string, unknown>): Promise<void> {
    const { coordinator } = this.deps;
    const requestId = message.requestId;
    try {
      if (requestId !== undefined && (typeof requestId !== 'string' || requestId.length > 256)) {
        throw new SyncError(ErrorCode.InvalidMessage, `requestId: expected a string of at most 256 characters, got ${JSON.stringify(requestId)?.slice(0, 80)}`);
      }
      await coordinator.authorize(this.caller!, 'apply_changes');
      const result = await coordinator.applyChanges(this.caller!, message.changes);
      this.send(JSON.stringify(requestId === undefined ? { type: 'apply_result', ...result } : { type: 'apply_result', requestId, ...result }));
    } catch (err) {
      this.replyError(err, ErrorCode.ApplyChangesError);
    }
  }

  private async onSnapshot(checkpoint: unknown): Promise<void> {
    const { coordinator } = this.deps;
    let started = false;
    try {
      await coordinator.authorize(this.caller!, 'get_snapshot');
      for await (const chunk of coordinator.snapshot(this.caller!, checkpoint)) {
        if (this.state === 'closed') return;
        started = true;
        await this.sendStreaming(`{"type":"snapshot_chunk","chunk":${chunk}}`);
      }
      this.send('{"type":"snapshot_complete"}');
    } catch (err) {
      if (this.state === 'closed') return;
      if (started) this.sendError(ErrorCode.SnapshotError, messageOf(err), false);
      else this.replyError(err, ErrorCode.SnapshotError);
    }
  }

  /** Pushes from other sites; never queued past the high-water mark. */
  push(frame: string): boolean {
    if (this.state !== 'open' || this.socket.readyState !== this.socket.OPEN) return false;
    if (this.lagging) return false;
    if (this.socket.bufferedAmount > PUSH_HIGH_WATER) {
      // The client reads too slowly: stop queueing pushes and, once its buffer
      // drains, tell it to catch up from its cursor so nothing is lost.
      this.lagging = true;
      setTimeout(() => this.recoverFromLag(), 50).unref();
      return false;
    }
    this.socket.send(frame);
    return true;
  }

  private recoverFromLag(): void {
    if (this.state !== 'open') return;
    if (this.socket.bufferedAmount > PUSH_HIGH_WATER / 2) {
      setTimeout(() => this.recoverFromLag(), 50).unref();
      return;
    }
    this.lagging = false;
    this.sendError(ErrorCode.Lagging, 'pushes were skipped while this client read slowly; call get_changes from your cursor', false);
  }

  private async sendStreaming(text: string): Promise<void> {
    if (this.socket.bufferedAmount < STREAM_HIGH_WATER) {
      this.socket.send(text);
      return;
    }
    await new Promise<void>((resolve) => this.socket.send(text, () => resolve()));
  }

  private send(text: string): void {
    if (this.socket.readyState === this.socket.OPEN) this.socket.send(text);
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

  /** Closes the socket (the session ends on its close event). */
  close(code: number, reason: string): void {
    if (this.socket.readyState === this.socket.OPEN || this.socket.readyState === this.socket.CONNECTING) this.socket.close(code, reason);
  }

  private info(databaseId = this.databaseId, siteId = this.siteId): ClientInfo {
    return { databaseId, siteId, connectionId: this.connectionId, remoteAddress: this.remoteAddress };
  }

  private async end(): Promise<void> {
    if (this.state === 'closed') return;
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.deps.metrics.wsConnectionsActive.dec();
    this.deps.coordinator.hub.leave(this);
    // Let the message in progress finish before the database may close.
    await this.queue;
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

function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}
