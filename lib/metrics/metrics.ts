import { createRequire } from 'node:module';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { logs } from '../log.js';

/** Prefix of every metric of this package, the default process metrics included. */
const PREFIX = 'sync_';

/**
 * prom-client's default collectors that work only when scraped. Its
 * `collectDefaultMetrics()` also starts an event-loop-delay monitor (a 10 ms
 * timer) and a GC PerformanceObserver for each registry, which nothing can
 * stop: every router created (tests make hundreds) would leave both running
 * for the life of the process. These collectors are its own modules, loaded
 * one by one; one that a later prom-client moves is skipped (and logged)
 * rather than breaking the router, and spec/e2e/default-metrics.spec.ts
 * notices.
 */
const SCRAPE_TIME_COLLECTORS = [
  'processCpuTotal',
  'processStartTime',
  'osMemoryHeap',
  'processOpenFileDescriptors',
  'processMaxFileDescriptors',
  'processResources',
  'processHandles',
  'processRequests',
  'heapSizeAndUsed',
  'heapSpacesSizeAndUsed',
  'version',
] as const;

type DefaultCollector = (registry: Registry, config: { prefix: string }) => void;

const requireFromHere = createRequire(import.meta.url);

/**
 * Registers the process and Node.js metrics of prom-client's default set in
 * `registry`, prefixed `sync_` (`sync_process_cpu_seconds_total`,
 * `sync_process_resident_memory_bytes`, `sync_nodejs_heap_size_used_bytes`,
 * `sync_nodejs_version_info` ...), plus `sync_nodejs_eventloop_lag_seconds`
 * measured at scrape time. Nothing runs between scrapes.
 */
function registerProcessMetrics(registry: Registry): void {
  for (const name of SCRAPE_TIME_COLLECTORS) {
    let collector: DefaultCollector;
    try {
      collector = requireFromHere(`prom-client/lib/metrics/${name}`) as DefaultCollector;
    } catch (err) {
      logs.server('default metric collector %s unavailable: %s', name, (err as Error).message);
      continue;
    }
    collector(registry, { prefix: PREFIX });
  }
  new Gauge({
    name: `${PREFIX}nodejs_eventloop_lag_seconds`,
    help: 'Time a callback queued at scrape time waited for the event loop, in seconds',
    registers: [registry],
    async collect() {
      const start = process.hrtime.bigint();
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.set(Number(process.hrtime.bigint() - start) / 1e9);
    },
  });
}

/** The coordinator's named metrics, all registered in one (injected) registry. */
export interface Metrics {
  readonly registry: Registry;
  wsConnectionsActive: Gauge;
  wsConnectionsTotal: Counter;
  httpRequestsTotal: Counter<'route' | 'status'>;
  changesAppliedTotal: Counter;
  changesReceivedTotal: Counter;
  changesRejectedTotal: Counter;
  changesBroadcastTotal: Counter;
  broadcastErrorsTotal: Counter;
  snapshotRequestsTotal: Counter;
  snapshotChunksTotal: Counter;
  authAttemptsTotal: Counter;
  authFailuresTotal: Counter;
  applyChangesDuration: Histogram;
  getChangesDuration: Histogram;
  changeBatchSize: Histogram;
  limitRefusalsTotal: Counter<'limit'>;
  laggingSessionsTotal: Counter;
  /** Errors sent to clients, by code: HTTP error replies of the sync routes and WebSocket `error` messages. */
  errorsTotal: Counter<'code'>;
  inboundBytes: Gauge;
  inboundPausedSockets: Gauge;
  /** Bytes queued for sending, summed over WebSocket sessions (read at each scrape from `outbound`). */
  sendBufferBytes: Gauge;
  /** Sessions sent the stored log rather than live pushes (read at each scrape from `outbound`). */
  catchingUpSessions: Gauge;
  /** Where the outbound gauges read their figures; the WebSocket layer sets `figures`. */
  outbound: { figures?: () => OutboundFigures };
  /** Databases opened by the pool of open stores (maxOpenStores, storeIdleMs). */
  storeOpensTotal: Counter;
  /** Databases closed by that pool: least recently used, idle, retired or at shutdown. */
  storeClosesTotal: Counter;
}

/** Live figures of the WebSocket sessions' sending side, read at each scrape. */
export interface OutboundFigures {
  /** Bytes handed to sockets and not yet flushed to the kernel, over all sessions. */
  bufferedBytes: number;
  /** Sessions whose delivery stream sends the stored log (catch-up after get_changes, or a slow reader recovering). */
  catchingUp: number;
}

/** Live figures of the inbound budget (lib/ws/inbound.ts), read at each scrape. */
export interface InboundFigures {
  /** Bytes received or reserved and not yet handled. */
  readonly used: number;
  /** Sockets held and HTTP bodies waiting for room. */
  readonly paused: number;
}

/**
 * Creates the metrics in `registry` (never the global one), with the default
 * process and Node.js metrics (see registerProcessMetrics); the inbound
 * gauges read `inbound` when given, else stay 0. Throws prom-client's Error
 * when `registry` already holds them (one registry per router).
 */
export function createMetrics(registry: Registry, inbound?: InboundFigures): Metrics {
  registerProcessMetrics(registry);
  const registers = [registry];
  const durations = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
  const outbound: Metrics['outbound'] = {};
  return {
    outbound,
    sendBufferBytes: new Gauge({
      name: 'sync_websocket_send_buffer_bytes', help: 'Bytes queued for sending on WebSocket sessions and not yet flushed to the kernel (a slow reader keeps at most pushHighWaterBytes plus a page)', registers,
      collect() { this.set(outbound.figures?.().bufferedBytes ?? 0); },
    }),
    catchingUpSessions: new Gauge({
      name: 'sync_websocket_catching_up_sessions', help: 'WebSocket sessions being sent the stored log (catch-up, or a slow reader recovering) rather than live pushes', registers,
      collect() { this.set(outbound.figures?.().catchingUp ?? 0); },
    }),
    registry,
    wsConnectionsActive: new Gauge({ name: 'sync_websocket_connections_active', help: 'Open WebSocket connections', registers }),
    wsConnectionsTotal: new Counter({ name: 'sync_websocket_connections_total', help: 'WebSocket connections accepted', registers }),
    httpRequestsTotal: new Counter({ name: 'sync_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['route', 'status'] as const, registers }),
    changesAppliedTotal: new Counter({ name: 'sync_changes_applied_total', help: 'Changes that changed state', registers }),
    changesReceivedTotal: new Counter({ name: 'sync_changes_received_total', help: 'Changes received in valid messages', registers }),
    changesRejectedTotal: new Counter({ name: 'sync_changes_rejected_total', help: 'Changes refused by validation or hooks', registers }),
    changesBroadcastTotal: new Counter({ name: 'sync_changes_broadcast_total', help: 'Change sets pushed to other clients', registers }),
    broadcastErrorsTotal: new Counter({ name: 'sync_broadcast_errors_total', help: 'Pushes that could not be delivered', registers }),
    snapshotRequestsTotal: new Counter({ name: 'sync_snapshot_requests_total', help: 'Snapshot streams started', registers }),
    snapshotChunksTotal: new Counter({ name: 'sync_snapshot_chunks_total', help: 'Snapshot chunks sent', registers }),
    authAttemptsTotal: new Counter({ name: 'sync_auth_attempts_total', help: 'Authentication attempts', registers }),
    authFailuresTotal: new Counter({ name: 'sync_auth_failures_total', help: 'Failed authentication attempts', registers }),
    applyChangesDuration: new Histogram({ name: 'sync_apply_changes_duration_seconds', help: 'Time to validate and apply one message', buckets: durations, registers }),
    getChangesDuration: new Histogram({ name: 'sync_get_changes_duration_seconds', help: 'Time to read one page of changes', buckets: durations, registers }),
    changeBatchSize: new Histogram({ name: 'sync_change_batch_size', help: 'Changes per applied message', buckets: [1, 5, 10, 50, 100, 500, 1000, 5000], registers }),
    limitRefusalsTotal: new Counter({ name: 'sync_limit_refusals_total', help: 'Messages, requests and connections refused by a limit (and frames it delayed, once each)', labelNames: ['limit'] as const, registers }),
    laggingSessionsTotal: new Counter({ name: 'sync_lagging_sessions_total', help: 'Times a session stopped getting pushes because it read too slowly', registers }),
    errorsTotal: new Counter({ name: 'sync_errors_total', help: 'Errors sent to clients (HTTP error replies and WebSocket error messages), by code', labelNames: ['code'] as const, registers }),
    inboundBytes: new Gauge({
      name: 'sync_inbound_bytes', help: 'Bytes of WebSocket frames and HTTP bodies being received or parsed (bounded by maxInboundBytes)', registers,
      collect() { this.set(inbound?.used ?? 0); },
    }),
    inboundPausedSockets: new Gauge({
      name: 'sync_inbound_paused_sockets', help: 'Sockets not read, and HTTP bodies waiting, because inbound bytes are over maxInboundBytes', registers,
      collect() { this.set(inbound?.paused ?? 0); },
    }),
    storeOpensTotal: new Counter({ name: 'sync_store_opens_total', help: 'Databases opened (their store and replica), on first use or again after a close', registers }),
    storeClosesTotal: new Counter({ name: 'sync_store_closes_total', help: 'Databases closed: least recently used over maxOpenStores, idle for storeIdleMs, retired, or at shutdown', registers }),
  };
}

/** Live figures of the archive (lib/durability), read at each scrape. */
export interface ArchiveFigures {
  /** Transactions committed but not archived yet, over open databases. */
  readonly pendingTransactions: number;
  /** Approximate bytes of change log not archived yet. */
  readonly outboxBytes: number;
  /** How long the oldest commit not archived yet has waited, in seconds (the largest over databases). */
  readonly lagSeconds: number;
}

/** The metrics of the durable archive (S3), in the router's registry; created only when it is on. */
export interface ArchiveMetrics {
  uploadsTotal: Counter;
  uploadErrorsTotal: Counter;
  snapshotsTotal: Counter;
  snapshotErrorsTotal: Counter;
  snapshotsSkippedTotal: Counter;
  restoresTotal: Counter<'result'>;
  evictionsTotal: Counter;
}

export function createArchiveMetrics(registry: Registry, figures: () => ArchiveFigures): ArchiveMetrics {
  const registers = [registry];
  new Gauge({
    name: 'sync_archive_pending_transactions', help: 'Transactions committed but not archived yet (open databases)', registers,
    collect() { this.set(figures().pendingTransactions); },
  });
  new Gauge({
    name: 'sync_archive_outbox_bytes', help: 'Approximate bytes of change log not archived yet (open databases)', registers,
    collect() { this.set(figures().outboxBytes); },
  });
  new Gauge({
    name: 'sync_archive_lag_seconds', help: 'How long the oldest commit not archived yet has waited (largest over open databases)', registers,
    collect() { this.set(figures().lagSeconds); },
  });
  return {
    uploadsTotal: new Counter({ name: 'sync_archive_uploads_total', help: 'Batch objects uploaded to the archive', registers }),
    uploadErrorsTotal: new Counter({ name: 'sync_archive_upload_errors_total', help: 'Failed uploads of batches (retried) and of ack-mode commits (refused)', registers }),
    snapshotsTotal: new Counter({ name: 'sync_archive_snapshots_total', help: 'Snapshots uploaded to the archive', registers }),
    snapshotErrorsTotal: new Counter({ name: 'sync_archive_snapshot_errors_total', help: 'Snapshots that failed to upload (retried at the next occasion)', registers }),
    snapshotsSkippedTotal: new Counter({ name: 'sync_archive_snapshots_skipped_total', help: 'Snapshots a restore could not read (corrupt or of an unknown format) and skipped', registers }),
    restoresTotal: new Counter({ name: 'sync_archive_restores_total', help: 'Databases opened from the archive because they were not on disk, by result', labelNames: ['result'], registers }),
    evictionsTotal: new Counter({ name: 'sync_disk_evictions_total', help: 'Idle, fully archived databases removed from disk', registers }),
  };
}

/** The metrics of a cluster node (lib/cluster), in the router's registry; created only with option `redis`. */
export interface ClusterMetrics {
  /** Per open database: how far this node's position is behind the last entry of its log, in seconds of entry ids. */
  streamLagSeconds: Gauge<'database'>;
  /** Time from an entry's append (its id's ms) to this node having applied it. */
  applyLagSeconds: Histogram;
  /** Log entries this node applied to its replicas. */
  entriesAppliedTotal: Counter;
  /** Redis errors: connection errors, failed commands, failed reads of the log. */
  redisErrorsTotal: Counter;
  /** Log entries removed by this node's trimming (below the archive and older than clusterLogRetentionMs). */
  entriesTrimmedTotal: Counter;
  /** Times this node's copy of a database was older than its trimmed log, by how it caught up (`archive`) or not (`refused`). */
  catchUpsTotal: Counter<'from'>;
}

/**
 * Creates the cluster metrics. Every metric of the registry gets the label
 * `node` (the node id) from then on, so that one Prometheus query can put the
 * nodes of a cluster side by side.
 */
export function createClusterMetrics(registry: Registry, nodeId: string): ClusterMetrics {
  registry.setDefaultLabels({ node: nodeId });
  const registers = [registry];
  return {
    streamLagSeconds: new Gauge({ name: 'sync_cluster_stream_lag_seconds', help: "How far this node is behind the last entry of each open database's log, in seconds of entry ids", labelNames: ['database'] as const, registers }),
    applyLagSeconds: new Histogram({ name: 'sync_cluster_apply_lag_seconds', help: 'Time from the append of a log entry to this node having applied it', buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300], registers }),
    entriesAppliedTotal: new Counter({ name: 'sync_cluster_entries_applied_total', help: 'Log entries this node applied to its replicas', registers }),
    redisErrorsTotal: new Counter({ name: 'sync_cluster_redis_errors_total', help: 'Redis errors: connection errors, failed commands, failed reads of the log', registers }),
    entriesTrimmedTotal: new Counter({ name: 'sync_cluster_entries_trimmed_total', help: 'Log entries this node trimmed (archived, and older than clusterLogRetentionMs)', registers }),
    catchUpsTotal: new Counter({ name: 'sync_cluster_catch_ups_total', help: "Opens that found this node's copy older than the trimmed log (or no copy): caught up from the archive, or refused", labelNames: ['from'] as const, registers }),
  };
}
