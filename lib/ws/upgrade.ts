import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { WebSocket, WebSocketServer } from 'ws';
import type * as Ws from 'ws';
import { CloseCode, ErrorCode } from '../errors.js';
import type { Config, CorsOrigin } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Coordinator } from '../service/coordinator.js';
import { clientAddress, type Limits } from '../service/limits.js';
import { logs } from '../log.js';
import { Session, type SessionDeps } from './session.js';
import type { InboundBudget } from './inbound.js';
import { requirePackage } from '../require-package.js';

const log = logs.ws;

/** The WebSocket side of a router. */
export interface UpgradeHandler {
  /** Takes the upgrade if it is for `<path>/ws`; returns false (and leaves the socket alone) otherwise. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Open sessions. */
  readonly sessions: ReadonlySet<Session>;
  /** Closes every session with 1001 and stops the heartbeat. */
  close(): Promise<void>;
}

/**
 * Checks upgrades at the door (path, shutdown, origin, rate and connection
 * limits) before handing them to a `ws` server in noServer mode, and runs the
 * heartbeat that terminates sockets which stop answering pings. A refused
 * upgrade gets a plain HTTP status and the error envelope of §7. Every
 * socket's bytes count against the router's `inbound` budget (§9).
 */
export function createUpgradeHandler(config: Config, coordinator: Coordinator, metrics: Metrics, limits: Limits, inbound: InboundBudget): UpgradeHandler {
  const wsPath = `${config.path === '/' ? '' : config.path}/ws`;
  // ws loads with the first socket: a server nobody has connected to yet does not hold it.
  let wss: WebSocketServer | undefined;
  function webSocketServer(): WebSocketServer {
    if (!wss) {
      const { WebSocketServer } = requirePackage('ws') as typeof Ws;
      wss = new WebSocketServer({ noServer: true, maxPayload: config.maxMessageBytes, perMessageDeflate: false, clientTracking: false });
    }
    return wss;
  }
  const sessions = new Set<Session>();
  metrics.outbound.figures = () => {
    let bufferedBytes = 0;
    for (const session of sessions) bufferedBytes += session.bufferedBytes;
    return { bufferedBytes, catchingUp: coordinator.hub.catchingUp() };
  };
  let closing = false;
  let heartbeat: NodeJS.Timeout | undefined;
  if (config.heartbeatIntervalMs > 0) {
    heartbeat = setInterval(function checkHeartbeats() {
      for (const session of sessions) {
        if (!session.alive) {
          log('session %s missed a heartbeat; terminating', session.connectionId);
          session.socket.terminate();
          continue;
        }
        session.alive = false;
        session.socket.ping();
      }
    }, config.heartbeatIntervalMs);
    heartbeat.unref();
  }

  function handleSyncUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    if ((q === -1 ? url : url.slice(0, q)) !== wsPath) return false;
    if (closing || coordinator.isClosing) {
      refuseUpgrade(socket, 503, ErrorCode.ShuttingDown, 'the server is shutting down');
      return true;
    }
    const address = clientAddress(req.headers['x-forwarded-for'], req.socket.remoteAddress, config.trustProxy);
    if (!originAllowed(req.headers.origin, config.corsOrigin)) {
      limits.refused('origin');
      refuseUpgrade(socket, 403, ErrorCode.Forbidden, `Origin ${JSON.stringify(String(req.headers.origin).slice(0, 200))} is not allowed (corsOrigin)`);
      return true;
    }
    const refusal = limits.takeAddress(address, 'requests');
    if (refusal) {
      refuseUpgrade(socket, 429, ErrorCode.RateLimited, refusal.message, refusal.waitMs);
      return true;
    }
    const full = limits.connections.check(address);
    if (full === 'total') {
      limits.refused('connections_total');
      refuseUpgrade(socket, 503, ErrorCode.RateLimited, `too many connections (limit ${config.maxConnections}, maxConnections)`, 1000);
      return true;
    }
    if (full === 'address') {
      limits.refused('connections_address');
      refuseUpgrade(socket, 429, ErrorCode.RateLimited, `too many connections from this address (limit ${config.maxConnectionsPerIp}, maxConnectionsPerIp)`, 1000);
      return true;
    }
    // ws completes a valid upgrade synchronously, so no other upgrade can
    // pass the checks above before this one is counted.
    webSocketServer().handleUpgrade(req, socket, head, function onSyncSocket(ws) {
      openSession(ws, req, socket, address);
    });
    return true;
  }

  // One object for every session: a session keeps nothing of the upgrade
  // (its request and head) but its headers until the handshake.
  const sessionDeps: SessionDeps = {
    config, coordinator, metrics, limits,
    onEnd: function onSessionEnd(session) {
      sessions.delete(session);
      limits.connections.closed(session.remoteAddress);
    },
  };

  /** Starts the session of an accepted socket, its bytes counted by the inbound budget. */
  function openSession(ws: WebSocket, req: IncomingMessage, socket: Duplex, address: string): void {
    limits.connections.opened(address);
    compactListenerTable(ws);
    sessions.add(new Session(ws, req, sessionDeps, address, inbound.track(ws, socket)));
  }

  async function close(): Promise<void> {
    closing = true;
    if (heartbeat) clearInterval(heartbeat);
    const open = [...sessions];
    // In-flight applies are answered before their socket is closed; a client
    // that stopped reading cannot hold shutdown up for more than a moment.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(open.map((session) => session.settled())),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, SETTLE_TIMEOUT_MS); }),
    ]);
    clearTimeout(timer);
    await Promise.all(open.map((session) => new Promise<void>((resolve) => {
      if (session.socket.readyState === session.socket.CLOSED) return resolve();
      const timer = setTimeout(() => { session.socket.terminate(); resolve(); }, 2000);
      session.socket.once('close', () => { clearTimeout(timer); resolve(); });
      session.close(CloseCode.GoingAway, 'Server shutting down');
    })));
    const started = wss;
    if (started) await new Promise<void>((resolve) => started.close(() => resolve()));
  }

  return { handleUpgrade: handleSyncUpgrade, sessions, close };
}

/** How long shutdown waits for sessions to answer what they have received. */
const SETTLE_TIMEOUT_MS = 2000;


/**
 * Node's EventEmitter keeps listeners in a null-prototype object, which V8
 * stores as a hash table: about 250 bytes per WebSocket once the session and
 * the inbound meter listen on it. An equal object (no keys, null prototype)
 * made in V8's fast mode holds those four events in place instead. The
 * emitter behaves the same; an idle socket is about 200 bytes smaller. Left
 * alone when the emitter already has listeners or keeps them some other way.
 */
function compactListenerTable(emitter: EventEmitter): void {
  const internals = emitter as unknown as { _events?: object; _eventsCount?: number };
  if (internals._eventsCount !== 0 || typeof internals._events !== 'object' || Object.getPrototypeOf(internals._events) !== null) return;
  internals._events = Object.setPrototypeOf({}, null) as object;
}

/** Answers an upgrade with a plain HTTP error (the JSON envelope of §7) and closes the socket once it is written. */
export function refuseUpgrade(socket: Duplex, status: number, code: string, message: string, retryAfterMs?: number): void {
  const body = JSON.stringify({ ok: false, error: { code, message } });
  const retry = retryAfterMs === undefined ? '' : `Retry-After: ${Math.max(1, Math.ceil(retryAfterMs / 1000))}\r\n`;
  socket.once('finish', () => socket.destroy());
  socket.on('error', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\n${retry}Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/**
 * Browsers send Origin on every WebSocket upgrade and apply no same-origin
 * rule to it, so when `corsOrigin` names origins, upgrades from other
 * origins are refused like cross-origin HTTP. Clients without an Origin
 * header (native apps, servers) are not browsers and pass.
 */
function originAllowed(origin: string | undefined, allowed: CorsOrigin): boolean {
  if (origin === undefined || typeof allowed === 'boolean') return true;
  return Array.isArray(allowed) ? allowed.includes(origin) : allowed === origin;
}
