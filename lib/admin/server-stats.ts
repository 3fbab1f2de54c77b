/**
 * `sync-coordinator stats`: the figures of a RUNNING server, read over HTTP
 * from its `GET <path>/status` (README "Metrics") and `GET <path>/metrics`,
 * so that an operator gets them without curl and jq. Nothing here keeps a
 * connection open: each request has its own socket, closed with it.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { ArchiveStatus } from '../durability/durability.js';
import { parsePrometheusText, sumOf, type PrometheusSample } from './prometheus-text.js';

/** Why the figures could not be had; stable, for callers that branch on it. */
export type StatsErrorCode =
  /** The connection failed (refused, unknown host, reset) or no answer came in time. */
  | 'UNREACHABLE'
  /** The server answered `/status` with an HTTP error (401 without the right token, 404 under a wrong mount path ...). */
  | 'HTTP_ERROR'
  /** The answer was not a sync coordinator's `/status`. */
  | 'NOT_A_COORDINATOR';

/** A failure of {@link fetchServerStats}; `message` is one line naming the URL asked, never the token. */
export class StatsError extends Error {
  readonly code: StatsErrorCode;
  /** The URL that failed. */
  readonly url: string;
  /** The HTTP status, for HTTP_ERROR. */
  readonly status?: number;

  constructor(code: StatsErrorCode, url: string, message: string, options: { status?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StatsError';
    this.code = code;
    this.url = url;
    if (options.status !== undefined) this.status = options.status;
  }
}

/** The `archive` section of `/status` (with an S3 archive), as the server sends it. */
export type ArchiveSection = Omit<ArchiveStatus, 'mode'> & { mode: string };

/** The `cluster` section of `/status` (in a cluster; lib/cluster/cluster.ts). */
export interface ClusterSection {
  node: string;
  /** The largest lag over the open databases, in seconds. */
  lagSeconds: number;
  logRetentionMs: number;
  databases: Record<string, { position: string; lagSeconds: number | null; following: boolean }>;
}

/** The `data` of `GET <path>/status`, as the server sent it (fields a newer server adds are kept). */
export interface ServerStatus {
  /** Seconds since the server started. */
  uptime: number;
  /** Open databases. */
  openStores: number;
  /** Connected WebSocket clients. */
  connectedClients: number;
  /** The package version, when the server reports it. */
  version?: string;
  archive?: ArchiveSection;
  cluster?: ClusterSection;
  [field: string]: unknown;
}

/** Figures taken from `/metrics`; each absent when the server does not export it. */
export interface ServerMetrics {
  /** The Node.js version the server runs on (`sync_nodejs_version_info`). */
  nodeVersion?: string;
  /** When the process started, ms since the epoch. */
  processStartedAt?: number;
  residentMemoryBytes?: number;
  heapUsedBytes?: number;
  /** User and system CPU time since start, in seconds. */
  cpuSeconds?: number;
  openFileDescriptors?: number;
  eventLoopLagSeconds?: number;
  /** WebSocket connections accepted since start. */
  connectionsTotal?: number;
  /** Changes received in valid messages, applied (they changed state) and refused, since start. */
  changesReceived?: number;
  changesApplied?: number;
  changesRejected?: number;
  /** Change sets pushed to other clients since start. */
  changesPushed?: number;
  /** Messages of changes applied, and the mean time one took, in seconds. */
  applyMessages?: number;
  applyMeanSeconds?: number;
  snapshotRequests?: number;
  authFailures?: number;
  /** Messages, requests and connections refused by a limit, since start. */
  limitRefusals?: number;
  /** Times a socket stopped getting pushes because it read too slowly. */
  laggingSessions?: number;
}

/** What {@link fetchServerStats} assembled: what `stats --json` prints. */
export interface ServerStats {
  /** The base URL asked (the mount path included), without a trailing slash. */
  url: string;
  /** When `/status` answered, ISO 8601. */
  fetchedAt: string;
  /** `/status`'s `data`, exactly as fetched. */
  status: ServerStatus;
  /** Figures of `/metrics`; absent when it could not be read (see metricsError). */
  metrics?: ServerMetrics;
  /** Why `/metrics` could not be read. */
  metricsError?: string;
}

/** Options of {@link fetchServerStats}. */
export interface FetchStatsOptions {
  /** Base URL of the router, mount path included: `http://127.0.0.1:3000/sync`. */
  url: string;
  /** Bearer token for a server with `statusTokens`. */
  token?: string;
  /** Give up on a request after this long, in ms. @default 10000 */
  timeoutMs?: number;
  /** Wall clock, for fetchedAt. @default Date.now */
  now?: () => number;
}

/** Most bytes read of one answer: /metrics of a busy server is tens of KiB; anything far larger is not ours. */
const MAX_BODY_BYTES = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 10_000;

/** Text of the system error codes a person is most likely to meet here. */
const ERRNO_TEXT: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused: is the server running, on this port?',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed',
  ECONNRESET: 'connection reset',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ETIMEDOUT: 'connection timed out',
  EPROTO: 'TLS handshake failed (an https URL for a plain-http server?)',
};

/**
 * Checks a base URL for {@link fetchServerStats}: http or https, no query
 * or fragment; returns it without trailing slashes. Throws TypeError naming
 * `field` and the value otherwise.
 */
export function parseBaseUrl(value: string, field = 'url'): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new TypeError(`${field}: expected the server's base URL with its mount path, like http://127.0.0.1:3000/sync, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`${field}: expected an http or https URL, got ${JSON.stringify(value)}`);
  if (url.search !== '' || url.hash !== '') throw new TypeError(`${field}: expected a base URL without a query or fragment, got ${JSON.stringify(value)}`);
  if (url.username !== '' || url.password !== '') throw new TypeError(`${field}: put no credentials in the URL (pass a bearer token instead), got a URL with ${url.password !== '' ? 'a password' : 'a user name'}`);
  return url.href.replace(/\/+$/, '');
}

/**
 * GETs `<url>/status` and `<url>/metrics` of a running coordinator (at the
 * same time) and assembles them. `/status` must answer; `/metrics` failing
 * leaves `metrics` out with the reason in `metricsError`.
 *
 * Throws TypeError for a malformed `url`; StatsError UNREACHABLE when the
 * server cannot be reached or does not answer within `timeoutMs` (the
 * message names the URL and the system error code), HTTP_ERROR for an HTTP
 * error status (with the server's error code and message when it sent
 * them), NOT_A_COORDINATOR for an answer that is not a coordinator's status.
 */
export async function fetchServerStats(options: FetchStatsOptions): Promise<ServerStats> {
  const base = parseBaseUrl(options.url);
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const headers: Record<string, string> = { accept: 'application/json, text/plain;q=0.9' };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  const metrics: Promise<{ samples?: PrometheusSample[]; error?: string }> = get(`${base}/metrics`, headers, timeoutMs).then(
    (answer) => {
      if (answer.status !== 200) return { error: `${base}/metrics answered ${httpProblem(answer)}` };
      return { samples: parsePrometheusText(answer.body) };
    },
    (err: unknown) => ({ error: (err as Error).message }),
  ).catch((err: unknown) => ({ error: (err as Error).message }));
  const statusUrl = `${base}/status`;
  const answer = await get(statusUrl, headers, timeoutMs);
  const fetchedAt = new Date((options.now ?? Date.now)()).toISOString();
  if (answer.status !== 200) {
    const hint = answer.status === 401 ? (options.token === undefined ? "; pass one of the server's statusTokens with --token" : '; the token given was not accepted')
      : answer.status === 404 ? "; is the mount path right? The URL is the router's base, e.g. http://127.0.0.1:3000/sync"
        : answer.status >= 300 && answer.status < 400 && typeof answer.location === 'string' ? `; use the URL it points to (${answer.location})` : '';
    throw new StatsError('HTTP_ERROR', statusUrl, `${statusUrl} answered ${httpProblem(answer)}${hint}`, { status: answer.status });
  }
  const status = statusData(statusUrl, answer.body);
  const read = await metrics;
  return {
    url: base,
    fetchedAt,
    status,
    ...(read.samples ? { metrics: metricsOf(read.samples) } : { metricsError: read.error ?? 'no figures' }),
  };
}

interface Answer {
  status: number;
  body: string;
  location?: string;
}

/** One GET on its own connection (no agent, so no socket outlives it). */
function get(url: string, headers: Record<string, string>, timeoutMs: number): Promise<Answer> {
  const request = url.startsWith('https:') ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const unreachable = (err: NodeJS.ErrnoException): StatsError => {
      const code = err.code ?? err.name;
      const text = ERRNO_TEXT[code ?? ''];
      return new StatsError('UNREACHABLE', url, `cannot reach ${url}: ${code ?? err.message}${text ? ` (${text})` : ''}`, { cause: err });
    };
    const req = request(url, { agent: false, headers: { ...headers, connection: 'close' } }, (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > MAX_BODY_BYTES) {
          req.destroy(new StatsError('NOT_A_COORDINATOR', url, `${url} sent more than ${MAX_BODY_BYTES} bytes: not a sync coordinator`));
          return;
        }
        chunks.push(chunk);
      });
      res.on('end', () => resolve({
        status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'),
        ...(typeof res.headers.location === 'string' ? { location: res.headers.location } : {}),
      }));
      res.on('error', (err) => reject(err instanceof StatsError ? err : unreachable(err)));
    });
    req.setTimeout(timeoutMs, () => {
      req.destroy(new StatsError('UNREACHABLE', url, `cannot reach ${url}: ETIMEDOUT (no answer within ${timeoutMs} ms)`));
    });
    req.on('error', (err: NodeJS.ErrnoException) => reject(err instanceof StatsError ? err : unreachable(err)));
    req.end();
  });
}

/** `401 AUTH_FAILED: <message>` from a coordinator's error body, else the status and the start of the body. */
function httpProblem(answer: Answer): string {
  try {
    const body = JSON.parse(answer.body) as { error?: { code?: unknown; message?: unknown } };
    if (typeof body.error?.code === 'string') {
      return `${answer.status} ${body.error.code}${typeof body.error.message === 'string' ? `: ${body.error.message}` : ''}`;
    }
  } catch {
    // Not a coordinator's error: fall through.
  }
  const text = answer.body.trim().replace(/\s+/g, ' ');
  return `${answer.status}${text === '' ? '' : ` (${JSON.stringify(text.length > 60 ? `${text.slice(0, 60)}...` : text)})`}`;
}

/** The `data` of a `/status` answer, checked to be a coordinator's. */
function statusData(url: string, body: string): ServerStatus {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new StatsError('NOT_A_COORDINATOR', url, `${url} answered 200 with something other than JSON: not a sync coordinator's /status (is the mount path right?)`);
  }
  const data = (parsed as { ok?: unknown; data?: unknown } | null)?.data as Record<string, unknown> | undefined;
  const numeric = (key: string): boolean => typeof data?.[key] === 'number';
  if ((parsed as { ok?: unknown }).ok !== true || typeof data !== 'object' || data === null || !numeric('uptime') || !numeric('openStores') || !numeric('connectedClients')) {
    throw new StatsError('NOT_A_COORDINATOR', url, `${url} answered JSON without ok, uptime, openStores and connectedClients: not a sync coordinator's /status`);
  }
  return data as ServerStatus;
}

/** The figures `stats` shows, out of every sample (summed over labels, e.g. a cluster's `node`). */
function metricsOf(samples: readonly PrometheusSample[]): ServerMetrics {
  const out: ServerMetrics = {};
  const put = <K extends keyof ServerMetrics>(key: K, value: ServerMetrics[K] | undefined): void => {
    if (value !== undefined) out[key] = value;
  };
  put('nodeVersion', samples.find((s) => s.name === 'sync_nodejs_version_info')?.labels.version);
  const started = sumOf(samples, 'sync_process_start_time_seconds');
  put('processStartedAt', started === undefined ? undefined : started * 1000);
  put('residentMemoryBytes', sumOf(samples, 'sync_process_resident_memory_bytes'));
  put('heapUsedBytes', sumOf(samples, 'sync_nodejs_heap_size_used_bytes'));
  put('cpuSeconds', sumOf(samples, 'sync_process_cpu_seconds_total'));
  put('openFileDescriptors', sumOf(samples, 'sync_process_open_fds'));
  put('eventLoopLagSeconds', sumOf(samples, 'sync_nodejs_eventloop_lag_seconds'));
  put('connectionsTotal', sumOf(samples, 'sync_websocket_connections_total'));
  put('changesReceived', sumOf(samples, 'sync_changes_received_total'));
  put('changesApplied', sumOf(samples, 'sync_changes_applied_total'));
  put('changesRejected', sumOf(samples, 'sync_changes_rejected_total'));
  put('changesPushed', sumOf(samples, 'sync_changes_broadcast_total'));
  const messages = sumOf(samples, 'sync_apply_changes_duration_seconds_count');
  const seconds = sumOf(samples, 'sync_apply_changes_duration_seconds_sum');
  put('applyMessages', messages);
  put('applyMeanSeconds', messages && seconds !== undefined ? seconds / messages : undefined);
  put('snapshotRequests', sumOf(samples, 'sync_snapshot_requests_total'));
  put('authFailures', sumOf(samples, 'sync_auth_failures_total'));
  put('limitRefusals', sumOf(samples, 'sync_limit_refusals_total'));
  put('laggingSessions', sumOf(samples, 'sync_lagging_sessions_total'));
  return out;
}
