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

interface RouteDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
}

/** Adds the HTTP routes of §7 to `router`, relative to wherever it is mounted. */
export function mountRoutes(router: Router, { config, coordinator, metrics }: RouteDeps): void {
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

  async function callerOf(req: Request, action: Operation['action']): Promise<Caller> {
    const databaseId = validateDatabaseId(req.params.databaseId);
    const header = req.get('x-site-id');
    if (header === undefined || header === '') throw new SyncError(ErrorCode.AuthFailed, 'X-Site-Id: header required');
    siteIdFromWire(header, 'X-Site-Id');
    const auth = req.get('authorization');
    const token = auth && /^Bearer /i.test(auth) ? auth.slice(7).trim() : undefined;
    const identity = await coordinator.authenticate({
      databaseId, siteId: header, token, transport: 'http', remoteAddress: req.socket.remoteAddress, headers: req.headers,
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
    res.json({ ok: true, data: { changes: page.changeSets, hasMore: page.hasMore } });
  });

  const parseJson = express.json({ limit: config.maxMessageBytes, strict: true, type: () => true });
  router.post('/:databaseId/changes', parseJson, async function postChanges(req: Request, res: Response) {
    const caller = await callerOf(req, 'apply_changes');
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
    try {
      while (!next.done) {
        if (aborted) break;
        if (!res.write(`${next.value}\n`)) await drained(res);
        next = await stream.next();
      }
    } catch (err) {
      log('snapshot of %s failed midway: %s', caller.databaseId, messageOf(err));
      if (!aborted) res.write(`${JSON.stringify({ error: messageOf(err) })}\n`);
    } finally {
      await stream.return(undefined);
    }
    res.end();
  });

  router.use(function notFound(req: Request, res: Response) {
    res.status(404).json({ ok: false, error: { code: ErrorCode.NotFound, message: `No route for ${req.method} ${req.originalUrl}` } });
  });

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
}

function drained(res: Response): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
