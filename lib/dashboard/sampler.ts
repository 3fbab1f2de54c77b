import { performance } from 'node:perf_hooks';
import type { Counter, Histogram } from 'prom-client';
import type { Config } from '../config/options.js';
import type { Coordinator } from '../service/coordinator.js';
import type { Metrics } from '../metrics/metrics.js';
import { hlcWallTime } from '../protocol/hlc.js';
import { databaseDirectory } from '../storage/database-id.js';
import { messageOf } from '../errors.js';
import { logs } from '../log.js';
import { Activity, PUSH_LATENCY_BOUNDS_MS } from './activity.js';
import { directoryBytes } from './disk-usage.js';
import { windowPercentiles, type CumulativeBuckets, type Percentiles } from './histogram.js';

const log = logs.server;

/** Rows of the busiest-databases table. */
const TABLE_ROWS = 10;
/** Per-database rates are taken over this many seconds. */
const DATABASE_RATE_SECONDS = 10;
/** Latency percentiles shown as figures cover this many seconds; the chart's points cover LATENCY_POINT_SECONDS. */
const LATENCY_SECONDS = 60;
const LATENCY_POINT_SECONDS = 10;
/** Sizes on disk are read again after this long, in ms (a directory listing and a stat per file). */
const DISK_REFRESH_MS = 10_000;
/** Cluster databases listed at most (those furthest behind). */
const CLUSTER_ROWS = 10;

/** What does not change while the server runs; the first event of every stream. */
export interface DashboardInfo {
  version: string;
  /** This node's id in a cluster; absent on a single node. */
  nodeId?: string;
  /** Whether an archive (S3) is configured, so the page shows its panel. */
  archive: boolean;
  /** ms between samples. */
  intervalMs: number;
  /** Seconds of history the charts and the error counts cover. */
  windowSeconds: number;
}

/** One point of the charts (rates per second; latencies in ms over the last 10 s; null: unknown). */
export interface ChartPoint {
  /** ms since the epoch. */
  at: number;
  applies: number | null;
  pushes: number | null;
  changes: number | null;
  applyP50: number | null;
  applyP99: number | null;
  pushP50: number | null;
  pushP99: number | null;
}

/** A row of the busiest-databases table. */
export interface DatabaseRow {
  id: string;
  /** WebSocket clients subscribed on this node. */
  clients: number;
  /** Changes and migrations committed per second over the last 10 s (null until two samples exist). */
  changesPerSecond: number | null;
  /** Bytes of its LevelDB files; null when not on disk or not measured yet. */
  bytes: number | null;
  /** ms since the epoch of its last commit, as far as this node knows; null when unknown. */
  lastWriteAt: number | null;
}

/**
 * One sample, sent every `intervalMs` as a Server-Sent Event (JSON). Rates
 * are per second over the last interval; "recent" counts cover the last
 * `windowSeconds` (or since the page's first sample after an idle spell,
 * whichever is shorter), "total" counts since the server started.
 */
export interface DashboardSample {
  point: ChartPoint;
  uptimeSeconds: number;
  /** `openStores` of /status. */
  openDatabases: number;
  /** `connectedClients` of /status. */
  clients: number;
  /** Apply and push latency over the last 60 s, in ms (null: nothing to measure). */
  latency: { apply: Percentiles | null; push: Percentiles | null; seconds: number };
  /** Sockets being sent the stored log instead of live pushes: catching up after get_changes, or after reading too slowly. */
  catchingUp: number;
  /**
   * ms since the epoch where "recent" counts start: `windowSeconds` ago, or
   * later when the page has been watched for less (nothing is sampled while
   * nobody watches).
   */
  recentSince: number;
  /** Times a socket fell behind on pushes: recently and in total. */
  lagged: { recent: number; total: number };
  /** Error codes sent to clients, most frequent first. */
  errors: { code: string; recent: number; total: number }[];
  /** Refusals by limit, most frequent first. */
  refusals: { limit: string; recent: number; total: number }[];
  /** The `archive` section of /status, when there is an archive. */
  archive?: object;
  /** This node's view of the cluster (from the `cluster` section of /status). */
  cluster?: {
    node: string;
    lagSeconds: number;
    logRetentionMs: number;
    openDatabases: number;
    notFollowing: number;
    /** Open databases furthest behind their log first, at most 10. */
    databases: { id: string; lagSeconds: number | null; following: boolean }[];
  };
  /** The busiest databases (changes/s, then clients, then last write), at most 10. */
  databases: DatabaseRow[];
  /** Databases open, with subscribers or recently written on this node (the table shows the first 10). */
  databaseCount: number;
}

/** Column-wise chart history, as uPlot takes it. */
export type ChartSeries = { [K in keyof ChartPoint]: ChartPoint[K][] };

/** What `DashboardSampler` reads. */
export interface SamplerSources {
  coordinator: Coordinator;
  metrics: Metrics;
  config: Config;
  /** The package version shown on the page. */
  version: string;
}

/** How a sampler samples. */
export interface SamplerOptions {
  /** ms between samples. @default 1000 */
  intervalMs?: number;
  /** Seconds of chart history kept, and of "recent" counts. @default 300 */
  windowSeconds?: number;
}

/** Cumulative figures at one sample, which rates and windows are differences of. */
interface Snapshot {
  /** performance.now(), for durations. */
  mono: number;
  /** config.now(), for display. */
  at: number;
  applies: number;
  applyBuckets: CumulativeBuckets;
  changes: number;
  pushes: number;
  pushBuckets: CumulativeBuckets;
  errors: Map<string, number>;
  refusals: Map<string, number>;
  lagged: number;
}

/**
 * Samples the coordinator for the status page while someone watches it:
 * the first `subscribe` starts a timer (and the hub observer behind push
 * figures), the last unsubscribe or `close()` stops both, so an unwatched
 * page costs nothing. Each sample is serialized once and handed to every
 * listener as JSON text. Figures come from the router's metrics (applies,
 * apply latency, errors, refusals, lags), `/status` (`coordinator.status()`),
 * the hub (clients, catching up) and the hub's commits (pushes, push
 * latency, per-database activity).
 */
export class DashboardSampler {
  readonly info: DashboardInfo;
  private readonly sources: SamplerSources;
  private readonly intervalMs: number;
  private readonly windowSeconds: number;
  private readonly listeners = new Set<(text: string) => void>();
  private readonly activity: Activity;
  private readonly snapshots: Snapshot[] = [];
  /** Per-database cumulative changes of the last samples, with their times. */
  private readonly databaseChanges: { mono: number; changes: Map<string, number> }[] = [];
  private readonly diskBytes = new Map<string, { bytes: number | null; mono: number }>();
  private readonly series: ChartSeries = { at: [], applies: [], pushes: [], changes: [], applyP50: [], applyP99: [], pushP50: [], pushP99: [] };
  private timer?: NodeJS.Timeout;
  private unobserve?: () => void;
  private ticking = false;
  private measuringDisk = false;
  private latest?: DashboardSample;
  private closed = false;

  constructor(sources: SamplerSources, options: SamplerOptions = {}) {
    this.sources = sources;
    this.intervalMs = options.intervalMs ?? 1000;
    this.windowSeconds = options.windowSeconds ?? 300;
    this.activity = new Activity(sources.config.now);
    const { config } = sources;
    this.info = Object.freeze({
      version: sources.version,
      ...(config.redis ? { nodeId: config.nodeId } : {}),
      archive: config.s3 !== undefined || config.archive !== undefined,
      intervalMs: this.intervalMs,
      windowSeconds: this.windowSeconds,
    });
  }

  /** Whether the timer runs (someone is subscribed). */
  get watched(): boolean {
    return this.timer !== undefined;
  }

  /** Listeners subscribed. */
  get size(): number {
    return this.listeners.size;
  }

  /** The chart history and the last sample, for a page that just connected. */
  history(): { series: ChartSeries; sample: DashboardSample | null } {
    return { series: this.series, sample: this.latest ?? null };
  }

  /**
   * Calls `listener` with the JSON text of every sample from now on; the
   * first listener starts sampling (one sample at once). Returns the
   * function that unsubscribes it. Throws TypeError once closed.
   */
  subscribe(listener: (text: string) => void): () => void {
    if (this.closed) throw new TypeError('DashboardSampler: closed');
    this.listeners.add(listener);
    if (!this.timer) this.start();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.stop();
    };
  }

  /** Stops sampling for good and drops every listener. */
  close(): void {
    this.closed = true;
    this.listeners.clear();
    this.stop();
  }

  private start(): void {
    this.unobserve = this.sources.coordinator.hub.observe(this.activity.record);
    this.timer = setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
    void this.tick();
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.unobserve?.();
    this.unobserve = undefined;
  }

  private async tick(): Promise<void> {
    if (this.ticking || !this.timer) return;
    this.ticking = true;
    try {
      const sample = await this.sample();
      // Stopped while the metrics were read: nobody to tell.
      if (!this.timer) return;
      this.latest = sample;
      const text = JSON.stringify(sample);
      for (const listener of this.listeners) listener(text);
    } catch (err) {
      log('dashboard sample failed: %s', messageOf(err));
    } finally {
      this.ticking = false;
    }
  }

  private async sample(): Promise<DashboardSample> {
    const { coordinator, metrics, config } = this.sources;
    const now = config.now();
    const mono = performance.now();
    const [applyHistogram, changes, errors, refusals, lagged] = await Promise.all([
      histogramBuckets(metrics.applyChangesDuration),
      counterTotal(metrics.changesAppliedTotal),
      counterByLabel(metrics.errorsTotal, 'code'),
      counterByLabel(metrics.limitRefusalsTotal, 'limit'),
      counterTotal(metrics.laggingSessionsTotal),
    ]);
    const current: Snapshot = {
      mono,
      at: now,
      applies: applyHistogram.buckets[applyHistogram.buckets.length - 1] ?? 0,
      applyBuckets: applyHistogram.buckets,
      changes,
      pushes: this.activity.pushes,
      pushBuckets: this.activity.pushLatency.snapshot(),
      errors,
      refusals,
      lagged,
    };
    // After an idle spell the previous sample is too old to give a rate: the charts get a gap.
    const previous = this.snapshots.at(-1);
    const last = previous && mono - previous.mono <= 2.5 * this.intervalMs ? previous : undefined;
    this.remember(current);
    const rate = (key: 'applies' | 'changes' | 'pushes'): number | null => (last ? perSecond(current[key] - last[key], mono - last.mono) : null);
    const since = (seconds: number): Snapshot | undefined => this.snapshots.find((s) => s.mono >= mono - seconds * 1000 - this.intervalMs / 2);
    const latencyFrom = since(LATENCY_SECONDS);
    const pointFrom = since(LATENCY_POINT_SECONDS);
    const windowFrom = this.snapshots[0]!;
    const applyLatency = windowPercentiles(applyHistogram.bounds, current.applyBuckets, latencyFrom?.applyBuckets);
    const pushLatency = windowPercentiles(PUSH_LATENCY_BOUNDS_MS, current.pushBuckets, latencyFrom?.pushBuckets);
    const applyPoint = windowPercentiles(applyHistogram.bounds, current.applyBuckets, pointFrom?.applyBuckets);
    const pushPoint = windowPercentiles(PUSH_LATENCY_BOUNDS_MS, current.pushBuckets, pointFrom?.pushBuckets);
    const point: ChartPoint = {
      at: now,
      applies: rate('applies'),
      pushes: rate('pushes'),
      changes: rate('changes'),
      applyP50: applyPoint?.p50 ?? null,
      applyP99: applyPoint?.p99 ?? null,
      pushP50: pushPoint?.p50 ?? null,
      pushP99: pushPoint?.p99 ?? null,
    };
    this.plot(point);
    const status = coordinator.status();
    const table = this.databases(mono, now);
    return {
      point,
      uptimeSeconds: status.uptime,
      openDatabases: status.openStores,
      clients: status.connectedClients,
      latency: { apply: applyLatency ?? null, push: pushLatency ?? null, seconds: LATENCY_SECONDS },
      catchingUp: coordinator.hub.catchingUp(),
      recentSince: windowFrom.at,
      lagged: { recent: current.lagged - windowFrom.lagged, total: current.lagged },
      errors: windowCounts(errors, windowFrom.errors).map(([code, recent, total]) => ({ code, recent, total })),
      refusals: windowCounts(refusals, windowFrom.refusals).map(([limit, recent, total]) => ({ limit, recent, total })),
      ...(status.archive ? { archive: status.archive } : {}),
      ...(status.cluster ? { cluster: clusterView(status.cluster as ClusterStatus) } : {}),
      databases: table.rows,
      databaseCount: table.count,
    };
  }

  /** Keeps the snapshots of the window (and one more, its start). */
  private remember(snapshot: Snapshot): void {
    this.snapshots.push(snapshot);
    // The window's start is the oldest sample inside it (a sample from before a long idle spell goes).
    const oldest = snapshot.mono - this.windowSeconds * 1000 - this.intervalMs / 2;
    while (this.snapshots.length > 1 && this.snapshots[0]!.mono < oldest) this.snapshots.shift();
  }

  /** Adds a chart point and drops those older than the window. */
  private plot(point: ChartPoint): void {
    const { series } = this;
    for (const key of Object.keys(series) as (keyof ChartPoint)[]) (series[key] as (number | null)[]).push(point[key]);
    const oldest = point.at - this.windowSeconds * 1000;
    let drop = 0;
    while (drop < series.at.length && series.at[drop]! < oldest) drop++;
    if (drop > 0) for (const key of Object.keys(series) as (keyof ChartPoint)[]) series[key].splice(0, drop);
  }

  /** The busiest databases: by changes per second over the last 10 s, then clients, then last write. */
  private databases(mono: number, now: number): { rows: DatabaseRow[]; count: number } {
    const { coordinator } = this.sources;
    const changes = this.activity.changesByDatabase();
    this.databaseChanges.push({ mono, changes });
    while (this.databaseChanges.length > 1 && this.databaseChanges[0]!.mono < mono - DATABASE_RATE_SECONDS * 1000 - this.intervalMs / 2) this.databaseChanges.shift();
    const from = this.databaseChanges[0]!;
    const clients = coordinator.hub.clientCounts();
    const open = coordinator.pool.openIds();
    const openSet = new Set(open);
    this.activity.prune(now - this.windowSeconds * 1000, (id) => openSet.has(id) || clients.has(id));
    const ids = new Set([...open, ...clients.keys(), ...changes.keys()]);
    const rows: DatabaseRow[] = [];
    for (const id of ids) {
      const stamp = coordinator.pool.peek(id)?.committedStamp;
      const lastWriteAt = Math.max(this.activity.of(id)?.lastWriteAt ?? 0, stamp ? hlcWallTime(stamp) : 0);
      rows.push({
        id,
        clients: clients.get(id) ?? 0,
        changesPerSecond: from === this.databaseChanges.at(-1) ? null : perSecond(Math.max(0, (changes.get(id) ?? 0) - (from.changes.get(id) ?? 0)), mono - from.mono),
        bytes: this.diskBytes.get(id)?.bytes ?? null,
        lastWriteAt: lastWriteAt > 0 ? lastWriteAt : null,
      });
    }
    rows.sort((a, b) => (b.changesPerSecond ?? 0) - (a.changesPerSecond ?? 0) || b.clients - a.clients || (b.lastWriteAt ?? 0) - (a.lastWriteAt ?? 0) || (a.id < b.id ? -1 : 1));
    const shown = rows.slice(0, TABLE_ROWS);
    this.measureDisk(shown.map((row) => row.id), mono);
    return { rows: shown, count: rows.length };
  }

  /** Reads the sizes of the shown databases that are not known or are stale, in the background (one pass at a time). */
  private measureDisk(ids: string[], mono: number): void {
    for (const id of this.diskBytes.keys()) if (!ids.includes(id)) this.diskBytes.delete(id);
    const stale = ids.filter((id) => !(mono - (this.diskBytes.get(id)?.mono ?? -Infinity) < DISK_REFRESH_MS));
    if (stale.length === 0 || this.measuringDisk) return;
    this.measuringDisk = true;
    const { dataDir } = this.sources.config;
    void (async () => {
      for (const id of stale) {
        const bytes = await directoryBytes(databaseDirectory(dataDir, id));
        if (this.closed) return;
        this.diskBytes.set(id, { bytes: bytes ?? null, mono: performance.now() });
      }
    })().finally(() => { this.measuringDisk = false; });
  }
}

/** The `cluster` section of /status (lib/cluster/cluster.ts). */
interface ClusterStatus {
  node: string;
  lagSeconds: number;
  logRetentionMs: number;
  databases: Record<string, { position: string; lagSeconds: number | null; following: boolean }>;
}

function clusterView(status: ClusterStatus): NonNullable<DashboardSample['cluster']> {
  const databases = Object.entries(status.databases).map(([id, d]) => ({ id, lagSeconds: d.lagSeconds, following: d.following }));
  const notFollowing = databases.filter((d) => !d.following).length;
  databases.sort((a, b) => Number(a.following) - Number(b.following) || (b.lagSeconds ?? 0) - (a.lagSeconds ?? 0));
  return {
    node: status.node, lagSeconds: status.lagSeconds, logRetentionMs: status.logRetentionMs,
    openDatabases: databases.length, notFollowing, databases: databases.slice(0, CLUSTER_ROWS),
  };
}

function perSecond(delta: number, ms: number): number | null {
  return ms > 0 ? Math.round((delta * 1000 / ms) * 100) / 100 : null;
}

/** [label, in the window, in total] of every label ever counted, most frequent in the window first, then in total. */
function windowCounts(current: Map<string, number>, start: Map<string, number>): [string, number, number][] {
  return [...current]
    .map(([label, total]): [string, number, number] => [label, total - (start.get(label) ?? 0), total])
    .sort((a, b) => b[1] - a[1] || b[2] - a[2] || (a[0] < b[0] ? -1 : 1));
}

async function counterTotal(counter: Counter): Promise<number> {
  let total = 0;
  for (const { value } of (await counter.get()).values) total += value;
  return total;
}

async function counterByLabel<L extends string>(counter: Counter<L>, label: L): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const { value, labels } of (await counter.get()).values) {
    const key = String(labels[label] ?? '');
    if (value > 0) out.set(key, (out.get(key) ?? 0) + value);
  }
  return out;
}

/** A prom-client histogram's cumulative bucket counts (its `+Inf` bucket last) and finite bounds, in ms. */
async function histogramBuckets(histogram: Histogram): Promise<{ bounds: number[]; buckets: number[] }> {
  const byBound = new Map<number, number>();
  for (const { metricName, labels, value } of (await histogram.get()).values) {
    if (!metricName?.endsWith('_bucket')) continue;
    const le = labels.le === '+Inf' ? Infinity : Number(labels.le);
    byBound.set(le, (byBound.get(le) ?? 0) + value);
  }
  const bounds = [...byBound.keys()].sort((a, b) => a - b);
  return { bounds: bounds.filter(Number.isFinite).map((s) => s * 1000), buckets: bounds.map((b) => byBound.get(b)!) };
}
