import { isUtf8 } from 'node:buffer';
import type Express from 'express';
import type { NextFunction, Request, Response, Router } from 'express';
import type Cors from 'cors';
import { SyncError, ErrorCode, describeValue, isSyncError, httpStatusOf, messageOf } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { logs } from '../log.js';
import { siteIdFromWire } from '../protocol/site-id.js';
import { validateDatabaseId } from '../storage/database-id.js';
import type { Caller, Coordinator } from '../service/coordinator.js';
import type { Operation } from '../config/hooks.js';
import { clientAddress, exceedsJsonDepth, type Limits } from '../service/limits.js';
import { TokenList } from '../service/tokens.js';
import { packageVersion } from '../version.js';
import type { InboundBudget } from '../ws/inbound.js';
import { requirePackage } from '../require-package.js';

const express = requirePackage('express') as typeof Express;
const cors = requirePackage('cors') as typeof Cors;

const log = logs.http;

/** The 404 JSON of §7 for a route nobody serves (also the standalone app's last handler). */
export function notFound(req: Request, res: Response): void {
  res.status(httpStatusOf(ErrorCode.NotFound)).json({ ok: false, error: { code: ErrorCode.NotFound, message: `No route for ${req.method} ${req.originalUrl}` } });
}

interface RouteDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
  limits: Limits;
  /** The router's inbound budget, shared with its WebSockets (§9). */
  inbound: InboundBudget;
  /** Routes of other modules (the dashboard), added after the rate limit and before the 404. */
  extraRoutes?: (router: Router, helpers: { addressOf(req: Request): string; bearerToken(req: Request): string | undefined }) => void;
}

/** What the router needs to stop the HTTP side. */
export interface HttpRoutes {
  /** Ends the snapshot streams in progress (their clients see the connection close). */
  close(): void;
}

/** Adds the HTTP routes of §7 to `router`, relative to wherever it is mounted. */
export function mountRoutes(router: Router, { config, coordinator, metrics, limits, inbound, extraRoutes }: RouteDeps): HttpRoutes {
  const streams = new Set<Response>();
  router.use(function countRequests(req: Request, res: Response, next: NextFunction) {
    res.on('finish', () => {
      const route = req.route?.path ? String(req.route.path) : 'unmatched';
      metrics.httpRequestsTotal.inc({ route, status: String(res.statusCode) });
    });
    next();
  });
  router.use(cors({ origin: config.corsOrigin }));

  const statusTokens = new TokenList(config.statusTokens);
  /** With `statusTokens`, /status and /metrics need one of them as a bearer token. */
  function statusAuth(req: Request, _res: Response, next: NextFunction): void {
    if (statusTokens.empty) return next();
    const token = bearerToken(req) ?? '';
    if (statusTokens.accepts(token)) return next();
    metrics.authFailuresTotal.inc();
    next(new SyncError(ErrorCode.AuthFailed, `Authorization: ${token ? 'token not accepted' : 'Bearer token required'} for ${req.baseUrl} (statusTokens)`));
  }
  router.use(['/status', '/metrics'], statusAuth);

  const version = packageVersion();
  router.get('/status', function getStatus(_req: Request, res: Response) {
    res.json({ ok: true, data: { version, ...coordinator.status() } });
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
  extraRoutes?.(router, { addressOf, bearerToken });

  async function callerOf(req: Request, action: Operation['action']): Promise<Caller> {
    const databaseId = validateDatabaseId(req.params.databaseId);
    const header = req.get('x-site-id');
    if (header === undefined || header === '') {
      // Refused before authentication runs, but an authentication failure all the same.
      metrics.authAttemptsTotal.inc();
      metrics.authFailuresTotal.inc();
      throw new SyncError(ErrorCode.AuthFailed, 'X-Site-Id: header required');
    }
    siteIdFromWire(header, 'X-Site-Id');
    const token = bearerToken(req);
    const identity = await coordinator.authenticate({
      databaseId, siteId: header, token, transport: 'http', remoteAddress: addressOf(req), headers: req.headers,
    });
    const caller: Caller = { databaseId, siteId: header, identity };
    await coordinator.authorize(caller, action);
    return caller;
  }

  router.get('/:databaseId/changes', async function getChanges(req: Request, res: Response) {
    const caller = await callerOf(req, 'get_changes');
    const page = await coordinator.getChanges(caller, sinceOf(req.url));
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
  // ---- Parse step: from whatever reached the router to a JSON value for postChanges. ----
  let warnedPreparsed = false;
  /**
   * Leaves the parsed body in `req.body`. Usually it is the Buffer readBody
   * read, checked for what JSON.parse does not check: charset, UTF-8 and
   * nesting depth (maxJsonDepth). A host app that runs a body parser before
   * the router (`app.use(express.json())` ahead of the mount is common) has
   * consumed the request already, so readBody passes on what that parser
   * made: a parsed value is kept (its depth checked without recursion, since
   * JSON.parse accepts any depth), a string (express.text) is parsed like
   * the Buffer. That parser's size limit then applied instead of
   * maxMessageBytes; a Content-Length above maxMessageBytes is still
   * PAYLOAD_TOO_LARGE here. Errors: INVALID_BODY (missing, not UTF-8, not
   * JSON), INVALID_MESSAGE (too deep), PAYLOAD_TOO_LARGE.
   */
  function parseJson(req: Request, _res: Response, next: NextFunction): void {
    const body: unknown = req.body;
    if (Buffer.isBuffer(body)) return next(parseBytes(req, body, true));
    if (body === undefined || body === null) return next(new SyncError(ErrorCode.InvalidBody, 'body: required, {"changes": ChangeSet[]}'));
    warnPreparsed(req);
    const declared = Number(req.get('content-length'));
    if (declared > config.maxMessageBytes) {
      return next(new SyncError(ErrorCode.PayloadTooLarge, `body: larger than the limit of ${config.maxMessageBytes} bytes (maxMessageBytes)`));
    }
    if (typeof body === 'string') return next(parseBytes(req, Buffer.from(body, 'utf8'), false));
    if (exceedsValueDepth(body, config.maxJsonDepth)) return next(tooDeep());
    next();
  }
  /** Parses JSON bytes into `req.body`; returns the error, or undefined. `checkCharset` is false when an upstream parser decoded the text already. */
  function parseBytes(req: Request, body: Buffer, checkCharset: boolean): SyncError | undefined {
    if (body.length === 0) return new SyncError(ErrorCode.InvalidBody, 'body: required, {"changes": ChangeSet[]}');
    if (checkCharset) {
      const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.get('content-type') ?? '')?.[1];
      if (charset !== undefined && !/^utf-?8$/i.test(charset)) return new SyncError(ErrorCode.InvalidBody, `body: JSON must be UTF-8, got charset ${JSON.stringify(charset.slice(0, 40))}`);
      if (!isUtf8(body)) return new SyncError(ErrorCode.InvalidBody, 'body: not valid UTF-8');
    }
    if (exceedsJsonDepth(body, config.maxJsonDepth)) return tooDeep();
    try {
      req.body = JSON.parse(body.toString('utf8'));
    } catch (err) {
      return new SyncError(ErrorCode.InvalidBody, `body: not valid JSON (${messageOf(err)})`);
    }
    return undefined;
  }
  function tooDeep(): SyncError {
    limits.refused('json_depth');
    return new SyncError(ErrorCode.InvalidMessage, `body: JSON nested deeper than ${config.maxJsonDepth} levels (maxJsonDepth)`);
  }
  /**
   * Bodies over the upstream parser's limit (100 kB by default for
   * express.json()) get its 413 and never reach the router, so nothing here
   * can explain that 413; this says it once, at the first body that shows
   * such a parser is in front.
   */
  function warnPreparsed(req: Request): void {
    if (warnedPreparsed) return;
    warnedPreparsed = true;
    const mount = req.baseUrl === '' ? '/' : req.baseUrl;
    process.emitWarning(
      `The sync router at ${mount} received a request body already parsed by a body parser that runs before it (app.use(express.json()) ahead of the sync router?). ` +
      `That parser's size limit applies first: bigger pushes get its own 413 "request entity too large" (100kb by default for express.json()) and never reach the sync router, whose limit is maxMessageBytes (${config.maxMessageBytes} bytes). ` +
      `Mount the sync router before express.json(), or give express.json({ limit: ${config.maxMessageBytes} }).`,
      { code: 'SYNC_BODY_PREPARSED' },
    );
  }
  // ---- End of the parse step. ----
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

  // A known route asked with another method: 405 with the methods it takes (RFC 9110 §15.5.6).
  for (const [route, methods] of [['/status', 'GET, HEAD'], ['/metrics', 'GET, HEAD'], ['/:databaseId/changes', 'GET, HEAD, POST'], ['/:databaseId/snapshot', 'GET, HEAD']] as const) {
    router.all(route, function methodNotAllowed(req: Request, res: Response) {
      res.set('Allow', methods);
      res.status(httpStatusOf(ErrorCode.MethodNotAllowed)).json({ ok: false, error: { code: ErrorCode.MethodNotAllowed, message: `${req.method} is not allowed on ${req.originalUrl.split('?')[0]}; use ${methods}` } });
    });
  }
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
    } else if (err instanceof URIError && bodyError?.status === 400) {
      // The router could not percent-decode a path parameter; :databaseId is the only one.
      code = ErrorCode.InvalidDatabaseId;
      message = `databaseId: not valid percent-encoding, got ${describeValue(req.path.split('/')[1] ?? '')}`;
    } else if (bodyError?.type === 'entity.parse.failed') {
      code = ErrorCode.InvalidBody;
      message = `body: not valid JSON (${messageOf(err)})`;
    } else if (bodyError?.status && bodyError.status >= 400 && bodyError.status < 500) {
      // The body parser's other refusals: a corrupt gzip or deflate body, an unknown Content-Encoding, an aborted upload.
      code = ErrorCode.InvalidBody;
      message = `body: ${messageOf(err)}`;
    } else {
      code = ErrorCode.Internal;
      message = 'internal error';
      log('%s %s failed: %s', req.method, req.originalUrl, (err as Error)?.stack ?? String(err));
    }
    metrics.errorsTotal.inc({ code });
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

/**
 * The `sinceHLC` of a `GET /:databaseId/changes` URL (docs/protocol.md §7),
 * undefined when the parameter is absent. Read from the raw query string
 * rather than `req.query`, whose shape depends on the host app's query
 * parser and which has already turned a `+` into a space. Throws
 * INVALID_MESSAGE for any other parameter (a typo must not silently answer
 * the whole history) and INVALID_HLC for a repeated, empty or undecodable
 * `sinceHLC`, or one with a raw `+` (base64 needs it percent-encoded as %2B).
 * What remains is checked as an HLC by validateCursor.
 */
export function sinceOf(url: string): string | undefined {
  const at = url.indexOf('?');
  if (at === -1) return undefined;
  let since: string | undefined;
  for (const part of url.slice(at + 1).split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const rawName = eq === -1 ? part : part.slice(0, eq);
    const rawValue = eq === -1 ? '' : part.slice(eq + 1);
    const name = decodeQueryPart(rawName);
    if (name !== 'sinceHLC') {
      throw new SyncError(ErrorCode.InvalidMessage, `query parameter ${describeValue(name ?? rawName)}: unknown; GET /:databaseId/changes takes only sinceHLC`);
    }
    if (since !== undefined) throw new SyncError(ErrorCode.InvalidHlc, 'sinceHLC: given more than once in the query string; send one base64 HLC');
    if (rawValue.includes('+')) {
      throw new SyncError(ErrorCode.InvalidHlc, `sinceHLC: contains an unencoded "+", which a query string reads as a space; percent-encode the value (+ as %2B, / as %2F, = as %3D), got ${describeValue(rawValue)}`);
    }
    const value = decodeQueryPart(rawValue);
    if (value === undefined) throw new SyncError(ErrorCode.InvalidHlc, `sinceHLC: not valid percent-encoding: ${describeValue(rawValue)}`);
    if (value === '') throw new SyncError(ErrorCode.InvalidHlc, 'sinceHLC: empty in the query string, expected a base64 HLC of 30 bytes; leave the parameter out to read from the beginning');
    since = value;
  }
  return since;
}

/** Percent-decodes one query string part; undefined when its escapes are malformed. */
function decodeQueryPart(raw: string): string | undefined {
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
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

/**
 * True when a parsed JSON value nests arrays and objects deeper than `max`
 * (counted as exceedsJsonDepth counts the text: `[]` is depth 1). Walks with
 * an explicit stack, because a value JSON.parse accepted may be nested far
 * past what a recursive walk survives; stops descending below `max`, so a
 * cyclic value (not JSON, but a host middleware could make one) ends too.
 */
export function exceedsValueDepth(value: unknown, max: number): boolean {
  const stack: { value: object; depth: number }[] = [];
  if (typeof value === 'object' && value !== null) stack.push({ value, depth: 1 });
  while (stack.length > 0) {
    const { value: node, depth } = stack.pop()!;
    if (depth > max) return true;
    for (const child of Array.isArray(node) ? node : Object.values(node)) {
      if (typeof child === 'object' && child !== null) stack.push({ value: child, depth: depth + 1 });
    }
  }
  return false;
}

/** The token of an `Authorization: Bearer <token>` header, if there is one. */
function bearerToken(req: Request): string | undefined {
  const auth = req.get('authorization');
  return auth && /^Bearer /i.test(auth) ? auth.slice(7).trim() : undefined;
}
