import { isUtf8 } from 'node:buffer';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import cors from 'cors';
import { SyncError, ErrorCode, isSyncError } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { logs } from '../log.js';
import { siteIdFromWire } from '../protocol/site-id.js';
import { validateDatabaseId } from '../storage/database-id.js';
import { messageOf, type Caller, type Coordinator } from '../service/coordinator.js';
import type { Operation } from '../service/hooks.js';
import { clientAddress, exceedsJsonDepth, type Limits } from '../service/limits.js';
import type { InboundBudget } from '../ws/inbound.js';

const log = logs.http;

const STATUS_BY_CODE: Record<string, number> = {
  [ErrorCode.InvalidMessage]: 400,
  [ErrorCode.InvalidChangeSet]: 400,
  [ErrorCode.InvalidHlc]: 400,
  [ErrorCode.InvalidSiteId]: 400,
  [ErrorCode.InvalidDatabaseId]: 400,
  [ErrorCode.InvalidBody]: 400,
  [ErrorCode.InvalidCheckpoint]: 400,
  [ErrorCode.ClockDrift]: 400,
  [ErrorCode.MessageError]: 400,
  [ErrorCode.AuthFailed]: 401,
  [ErrorCode.Forbidden]: 403,
  [ErrorCode.NotFound]: 404,
  [ErrorCode.SnapshotRequired]: 410,
  [ErrorCode.PayloadTooLarge]: 413,
  [ErrorCode.RateLimited]: 429,
  [ErrorCode.ShuttingDown]: 503,
};

/** HTTP status for an error code (PROTOCOL.md §7). */
export function httpStatusOf(code: string): number {
  return STATUS_BY_CODE[code] ?? 500;
}

/** The 404 JSON of §7 for a route nobody serves (also the standalone app's last handler). */
export function notFound(req: Request, res: Response): void {
  res.status(404).json({ ok: false, error: { code: ErrorCode.NotFound, message: `No route for ${req.method} ${req.originalUrl}` } });
}

interface RouteDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
  limits: Limits;
  /** The router's inbound budget, shared with its WebSockets (§9). */
  inbound: InboundBudget;
}

/** What the router needs to stop the HTTP side. */
export interface HttpRoutes {
  /** Ends the snapshot streams in progress (their clients see the connection close). */
  close(): void;
}

/** Adds the HTTP routes of §7 to `router`, relative to wherever it is mounted. */
export function mountRoutes(router: Router, { config, coordinator, metrics, limits, inbound }: RouteDeps): HttpRoutes {
  const streams = new Set<Response>();
  router.use(function countRequests(req: Request, res: Response, next: NextFunction) {
    res.on('finish', () => {
      const route = req.route?.path ? String(req.route.path) : 'unmatched';
      metrics.httpRequestsTotal.inc({ route, status: String(res.statusCode) });
    });
    next();
  });
  router.use(cors({ origin: config.corsOrigin }));

  router.get('/status', function getStatus(_req: Request, res: Response) {
    res.json({ ok: true, data: coordinator.status() });
  });

  router.get('/metrics', async function getMetrics(_req: Request, res: Response) {
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  const addressOf = (req: Request): string => clientAddress(req.headers['x-forwarded-for'], req.socket.remoteAddress, config.trustProxy);

  // After /status and /metrics: health checks and scrapes often share the
  // address of a proxy with every client, and must not fail when clients are busy.
  router.use(function rateLimit(req: Request, res: Response, next: NextFunction) {
    const refusal = limits.takeAddress(addressOf(req), 'requests');
    if (!refusal) return next();
    res.set('Retry-After', String(Math.max(1, Math.ceil(refusal.waitMs / 1000))));
    next(new SyncError(ErrorCode.RateLimited, refusal.message));
  });

  async function callerOf(req: Request, action: Operation['action']): Promise<Caller> {
    const databaseId = validateDatabaseId(req.params.databaseId);
    const header = req.get('x-site-id');
    if (header === undefined || header === '') throw new SyncError(ErrorCode.AuthFailed, 'X-Site-Id: header required');
    siteIdFromWire(header, 'X-Site-Id');
    const auth = req.get('authorization');
    const token = auth && /^Bearer /i.test(auth) ? auth.slice(7).trim() : undefined;
    const identity = await coordinator.authenticate({
      databaseId, siteId: header, token, transport: 'http', remoteAddress: addressOf(req), headers: req.headers,
    });
    const caller: Caller = { databaseId, siteId: header, identity };
    await coordinator.authorize(caller, action);
    return caller;
  }

  router.get('/:databaseId/changes', async function getChanges(req: Request, res: Response) {
    const caller = await callerOf(req, 'get_changes');
    const since = req.query.sinceHLC;
    if (since !== undefined && typeof since !== 'string') {
      throw new SyncError(ErrorCode.InvalidHlc, 'sinceHLC: expected one base64 HLC in the query string');
    }
    const page = await coordinator.getChanges(caller, since);
    res.type('application/json').send(`{"ok":true,"data":{"changes":${page.json},"hasMore":${page.hasMore}}}`);
  });

  const readBody = express.raw({ limit: config.maxMessageBytes, type: () => true });
  /**
   * Reads the body once the inbound budget has room for it (§9), and keeps
   * it counted until the reply has gone. The claim is the declared length,
   * or maxMessageBytes when none is declared; a declared length over the
   * limit is refused by the reader without reading, so it claims nothing.
   */
  function readBodyWithinBudget(req: Request, res: Response, next: NextFunction): void {
    const declared = req.get('content-length') === undefined ? config.maxMessageBytes : Number(req.get('content-length'));
    if (!(declared <= config.maxMessageBytes)) return readBody(req, res, next);
    const claim = inbound.reserve(declared);
    res.once('close', () => claim.close());
    void claim.ready.then((granted) => {
      if (granted) readBody(req, res, (err?: unknown) => { claim.received(); next(err); });
    });
  }
  /** Parses the body as JSON after the checks JSON.parse does not make: charset, UTF-8, nesting depth. */
  function parseJson(req: Request, _res: Response, next: NextFunction): void {
    const body: unknown = req.body;
    if (!Buffer.isBuffer(body) || body.length === 0) return next(new SyncError(ErrorCode.InvalidBody, 'body: required, {"changes": ChangeSet[]}'));
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.get('content-type') ?? '')?.[1];
    if (charset !== undefined && !/^utf-?8$/i.test(charset)) return next(new SyncError(ErrorCode.InvalidBody, `body: JSON must be UTF-8, got charset ${JSON.stringify(charset.slice(0, 40))}`));
    if (!isUtf8(body)) return next(new SyncError(ErrorCode.InvalidBody, 'body: not valid UTF-8'));
    if (exceedsJsonDepth(body, config.maxJsonDepth)) {
      limits.refused('json_depth');
      return next(new SyncError(ErrorCode.InvalidMessage, `body: JSON nested deeper than ${config.maxJsonDepth} levels (maxJsonDepth)`));
    }
    try {
      req.body = JSON.parse(body.toString('utf8'));
    } catch (err) {
      return next(new SyncError(ErrorCode.InvalidBody, `body: not valid JSON (${messageOf(err)})`));
    }
    next();
  }
  // Authentication comes before the body is read, so an unknown client cannot make the server read megabytes.
  async function authorizeApply(req: Request, res: Response, next: NextFunction): Promise<void> {
    res.locals.caller = await callerOf(req, 'apply_changes');
    next();
  }
  router.post('/:databaseId/changes', authorizeApply, readBodyWithinBudget, parseJson, async function postChanges(req: Request, res: Response) {
    const caller = res.locals.caller as Caller;
    const body = req.body as { changes?: unknown } | undefined;
    if (typeof body !== 'object' || body === null || !Array.isArray(body.changes)) {
      throw new SyncError(ErrorCode.InvalidBody, 'changes: request body must be {"changes": ChangeSet[]}');
    }
    const result = await coordinator.applyChanges(caller, body.changes);
    res.json({ ok: true, data: result });
  });

  router.get('/:databaseId/snapshot', async function getSnapshot(req: Request, res: Response) {
    const caller = await callerOf(req, 'get_snapshot');
    const stream = coordinator.snapshot(caller);
    let aborted = false;
    res.on('close', () => { aborted = !res.writableFinished; });
    // The first chunk decides the status: errors before it are plain JSON errors.
    let next = await stream.next();
    res.status(200).type('application/x-ndjson');
    streams.add(res);
    try {
      while (!next.done) {
        if (aborted) break;
        // Wait for the client to read; one that stops for sendHardLimitMs loses the connection.
        if (!res.write(`${next.value}\n`) && !(await drained(res, config.sendHardLimitMs))) {
          log('snapshot of %s: client stopped reading; closing', caller.databaseId);
          limits.refused('send_buffer');
          res.destroy();
          break;
        }
        next = await stream.next();
      }
    } catch (err) {
      log('snapshot of %s failed midway: %s', caller.databaseId, messageOf(err));
      if (!aborted) res.write(`${JSON.stringify({ error: messageOf(err) })}\n`);
    } finally {
      streams.delete(res);
      await stream.return(undefined);
    }
    res.end();
  });

  router.use(notFound);

  router.use(function sendError(err: unknown, req: Request, res: Response, _next: NextFunction) {
    let code: string;
    let message: string;
    const bodyError = err as { type?: string; status?: number } | undefined;
    if (isSyncError(err)) {
      code = err.code;
      message = err.message;
    } else if (bodyError?.type === 'entity.too.large') {
      code = ErrorCode.PayloadTooLarge;
      message = `body: larger than the limit of ${config.maxMessageBytes} bytes`;
    } else if (bodyError?.type === 'entity.parse.failed') {
      code = ErrorCode.InvalidBody;
      message = `body: not valid JSON (${messageOf(err)})`;
    } else if (bodyError?.status && bodyError.status >= 400 && bodyError.status < 500) {
      code = ErrorCode.InvalidBody;
      message = messageOf(err);
    } else {
      code = ErrorCode.Internal;
      message = 'internal error';
      log('%s %s failed: %s', req.method, req.originalUrl, (err as Error)?.stack ?? String(err));
    }
    if (res.headersSent) {
      res.end();
      return;
    }
    res.status(httpStatusOf(code)).json({ ok: false, error: { code, message } });
  });

  return {
    close() {
      for (const res of streams) res.destroy();
      streams.clear();
    },
  };
}

/** Resolves true when `res` drains or closes, false when `timeoutMs` (0: never) passes first. */
function drained(res: Response, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (ok: boolean): void => {
      res.off('drain', onDrain);
      res.off('close', onDrain);
      clearTimeout(timer);
      resolve(ok);
    };
    const onDrain = (): void => done(true);
    res.on('drain', onDrain);
    res.on('close', onDrain);
    if (timeoutMs > 0) timer = setTimeout(() => done(false), timeoutMs);
  });
}
