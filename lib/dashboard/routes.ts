import { createRequire } from 'node:module';
import type { Request, Response, NextFunction, Router } from 'express';
import type { Config } from '../config/options.js';
import type { DashboardAuthHook } from '../config/hooks.js';
import type { Coordinator } from '../service/coordinator.js';
import type { Metrics } from '../metrics/metrics.js';
import { ErrorCode, SyncError, httpStatusOf, messageOf } from '../errors.js';
import { TokenList } from '../service/tokens.js';
import { logs } from '../log.js';
import { packageVersion } from '../version.js';
import { DashboardSampler } from './sampler.js';
import { PAGE_CSS, PAGE_HTML, PAGE_SCRIPT } from './page.js';

const log = logs.http;

/** Event streams open at once at most; more get 429 (each costs a socket and a write per second). */
const MAX_STREAMS = 64;
/** A stream whose client has this many bytes unread is cut (about 15 minutes of samples). */
const MAX_UNREAD_BYTES = 1024 * 1024;
/** How long a browser waits before reconnecting a dropped stream, in ms (the SSE `retry` field). */
const RECONNECT_MS = 3000;

/**
 * Policy of the page and its stream: no script, style or connection but
 * this server's (uPlot included), no framing, no referrer (the URL may hold
 * a token).
 */
const PAGE_HEADERS = Object.freeze({
  'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'Referrer-Policy': 'no-referrer',
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
});

/** What the dashboard routes read. */
export interface DashboardDeps {
  config: Config;
  coordinator: Coordinator;
  metrics: Metrics;
  /** The client address of a request (limits.ts's rule, with trustProxy). */
  addressOf(req: Request): string;
  /** The token of an `Authorization: Bearer` header, if any. */
  bearerToken(req: Request): string | undefined;
}

/** What the router needs to stop the dashboard. */
export interface DashboardRoutes {
  readonly sampler: DashboardSampler;
  /** Ends every event stream and stops sampling. */
  close(): void;
}

/**
 * Adds the status page (README "Dashboard", routes in docs/protocol.md §7)
 * to `router`, relative to its mount: `GET /dashboard` (the page), `/dashboard/app.js`, `app.css`,
 * `uplot.js`, `uplot.css` (its assets, public: they hold no figures) and
 * `/dashboard/events` (Server-Sent Events: a `hello` event with the fixed
 * facts, the chart history and the last sample, then one sample every
 * second; see DashboardSample). The page and the stream are guarded by
 * `dashboardAuth`: 401 AUTH_FAILED without an accepted token; the stream
 * answers 429 RATE_LIMITED past 64 open pages and 503 SHUTTING_DOWN once
 * the router closes. Other methods get 405. uPlot's files
 * are located in its npm package here, when the router is built; throws an
 * Error when the package cannot be found.
 */
export function mountDashboard(router: Router, deps: DashboardDeps): DashboardRoutes {
  const { config, metrics } = deps;
  const uplot = locateUplot();
  const sampler = new DashboardSampler({ coordinator: deps.coordinator, metrics, config, version: packageVersion() });
  const streams = new Set<Response>();
  const guard = accessGuard(config, deps);

  router.get('/dashboard', guard, function dashboardPage(req: Request, res: Response) {
    // From ".../dashboard/" the page's relative URLs would point one level too deep.
    if (req.path.endsWith('/')) {
      const query = req.originalUrl.indexOf('?');
      res.redirect(302, `../dashboard${query === -1 ? '' : req.originalUrl.slice(query)}`);
      return;
    }
    res.set(PAGE_HEADERS).type('html').send(PAGE_HTML);
  });
  router.get('/dashboard/app.js', function dashboardScript(_req: Request, res: Response) {
    res.set('Cache-Control', 'no-cache').type('js').send(PAGE_SCRIPT);
  });
  router.get('/dashboard/app.css', function dashboardStyle(_req: Request, res: Response) {
    res.set('Cache-Control', 'no-cache').type('css').send(PAGE_CSS);
  });
  router.get('/dashboard/uplot.js', function uplotScript(_req: Request, res: Response, next: NextFunction) {
    res.sendFile(uplot.script, { headers: { 'Cache-Control': 'no-cache', 'Content-Type': 'text/javascript; charset=utf-8' } }, (err) => err && next(err));
  });
  router.get('/dashboard/uplot.css', function uplotStyle(_req: Request, res: Response, next: NextFunction) {
    res.sendFile(uplot.style, { headers: { 'Cache-Control': 'no-cache', 'Content-Type': 'text/css; charset=utf-8' } }, (err) => err && next(err));
  });

  router.get('/dashboard/events', guard, function dashboardEvents(req: Request, res: Response) {
    if (deps.coordinator.isClosing) throw new SyncError(ErrorCode.ShuttingDown, 'dashboard: the server is shutting down');
    if (streams.size >= MAX_STREAMS) {
      res.set('Retry-After', String(RECONNECT_MS / 1000));
      throw new SyncError(ErrorCode.RateLimited, `dashboard: ${MAX_STREAMS} pages are open already; close one or try again later`);
    }
    res.status(200).set({
      ...PAGE_HEADERS,
      'Content-Type': 'text/event-stream; charset=utf-8',
      // nginx and its kin buffer responses unless told not to, which would hold samples back.
      'X-Accel-Buffering': 'no',
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    res.flushHeaders();
    // A compression middleware of the host app holds writes back until told to flush.
    const send = (text: string): void => {
      res.write(text);
      (res as Response & { flush?: () => void }).flush?.();
    };
    send(`retry: ${RECONNECT_MS}\nevent: hello\ndata: ${JSON.stringify({ info: sampler.info, ...sampler.history() })}\n\n`);
    streams.add(res);
    const unsubscribe = sampler.subscribe(function sendSample(text: string) {
      if (res.writableLength > MAX_UNREAD_BYTES) {
        log('dashboard stream from %s stopped reading; closing it', deps.addressOf(req));
        res.destroy();
        return;
      }
      send(`data: ${text}\n\n`);
    });
    res.on('close', () => {
      streams.delete(res);
      unsubscribe();
    });
  });

  const paths = ['/dashboard', '/dashboard/app.js', '/dashboard/app.css', '/dashboard/uplot.js', '/dashboard/uplot.css', '/dashboard/events'];
  router.all(paths, function dashboardMethodNotAllowed(req: Request, res: Response) {
    res.set('Allow', 'GET, HEAD');
    res.status(httpStatusOf(ErrorCode.MethodNotAllowed)).json({ ok: false, error: { code: ErrorCode.MethodNotAllowed, message: `${req.method} is not allowed on ${req.originalUrl.split('?')[0]}; use GET, HEAD` } });
  });

  return {
    sampler,
    close() {
      sampler.close();
      for (const res of streams) res.end();
      streams.clear();
    },
  };
}

/**
 * The middleware `dashboardAuth` asks for: nothing (`'off'`), a token of
 * `authTokens` or `statusTokens` from `?token=` or `Authorization: Bearer`
 * (`'token'`), or the function's yes. A refusal is 401 AUTH_FAILED and
 * counts as an authentication failure; the message never holds the token.
 */
function accessGuard(config: Config, deps: DashboardDeps): (req: Request, res: Response, next: NextFunction) => Promise<void> {
  const mode = config.dashboardAuth;
  const tokens = new TokenList([...config.authTokens, ...config.statusTokens]);
  return async function dashboardAuth(req: Request, res: Response, next: NextFunction): Promise<void> {
    if (mode === 'off') return next();
    const token = queryToken(req.originalUrl) ?? deps.bearerToken(req);
    let refusal: string | undefined;
    if (typeof mode === 'function') {
      refusal = await askHook(mode, { token, remoteAddress: deps.addressOf(req), headers: req.headers });
    } else if (tokens.empty) {
      refusal = 'dashboard: no token can open it, since authTokens and statusTokens are empty; set statusTokens, or dashboardAuth to a function or "off"';
    } else if (token === undefined || token === '') {
      refusal = 'dashboard: token required (?token=<token> or Authorization: Bearer <token>)';
    } else if (!tokens.accepts(token)) {
      refusal = 'dashboard: token not accepted';
    }
    if (refusal === undefined) return next();
    deps.metrics.authFailuresTotal.inc();
    res.set('WWW-Authenticate', 'Bearer realm="sync-coordinator dashboard"');
    next(new SyncError(ErrorCode.AuthFailed, refusal));
  };
}

/** Undefined when the hook said yes; else why not. */
async function askHook(hook: DashboardAuthHook, ctx: Parameters<DashboardAuthHook>[0]): Promise<string | undefined> {
  try {
    return (await hook(ctx)) === true ? undefined : 'dashboard: refused by dashboardAuth';
  } catch (err) {
    return `dashboard: ${messageOf(err)}`;
  }
}

/** The `token` query parameter of a URL, read from the raw query (the host app's query parser may differ). */
function queryToken(url: string): string | undefined {
  const at = url.indexOf('?');
  if (at === -1) return undefined;
  return new URLSearchParams(url.slice(at + 1)).get('token') ?? undefined;
}

/** Where uPlot's browser build and style sheet are, from its npm package. */
function locateUplot(): { script: string; style: string } {
  const require = createRequire(import.meta.url);
  try {
    return { script: require.resolve('uplot/dist/uPlot.iife.min.js'), style: require.resolve('uplot/dist/uPlot.min.css') };
  } catch (err) {
    throw new Error(`The dashboard needs the "uplot" package (a dependency of @quereus/sync-coordinator), which cannot be found: ${messageOf(err)}. Reinstall, or pass dashboard: false`, { cause: err });
  }
}

