import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { CloseCode } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Coordinator } from '../service/coordinator.js';
import { logs } from '../log.js';
import { Session } from './session.js';

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
 * Checks upgrades at the door (path, shutdown) before handing them to a
 * `ws` server in noServer mode, and runs the heartbeat that terminates
 * sockets which stop answering pings.
 */
export function createUpgradeHandler(config: Config, coordinator: Coordinator, metrics: Metrics): UpgradeHandler {
  const wsPath = `${config.path === '/' ? '' : config.path}/ws`;
  const wss = new WebSocketServer({ noServer: true, maxPayload: config.maxMessageBytes, perMessageDeflate: false, clientTracking: false });
  const sessions = new Set<Session>();
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
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return true;
    }
    wss.handleUpgrade(req, socket, head, function onSyncSocket(ws) {
      const session = new Session(ws, req, {
        config, coordinator, metrics,
        onEnd: (s) => { sessions.delete(s); },
      });
      sessions.add(session);
    });
    return true;
  }

  async function close(): Promise<void> {
    closing = true;
    if (heartbeat) clearInterval(heartbeat);
    const open = [...sessions];
    await Promise.all(open.map((session) => new Promise<void>((resolve) => {
      if (session.socket.readyState === session.socket.CLOSED) return resolve();
      const timer = setTimeout(() => { session.socket.terminate(); resolve(); }, 2000);
      session.socket.once('close', () => { clearTimeout(timer); resolve(); });
      session.close(CloseCode.GoingAway, 'Server shutting down');
    })));
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  }

  return { handleUpgrade: handleSyncUpgrade, sessions, close };
}
