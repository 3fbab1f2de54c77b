import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type Express from 'express';
import type { NextFunction, Request, Response, Router } from 'express';
import type { Registry } from 'prom-client';
import { parseOptions, type Config, type SyncRouterOptions } from './config/options.js';
import { createArchiveMetrics, createClusterMetrics, createMetrics, type Metrics } from './metrics/metrics.js';
import { Coordinator, type ReplicaSource } from './service/coordinator.js';
import { Hub } from './hub/hub.js';
import { Cluster } from './cluster/cluster.js';
import { RedisLog } from './cluster/redis-log.js';
import { SharedLimits } from './cluster/shared-limits.js';
import { openLevelReplica } from './replica/open-level.js';
import { Durability } from './durability/durability.js';
import { openS3Archive, replicaOptionsOf } from './durability/offline.js';
import { databaseDirectory } from './storage/database-id.js';
import { pathExists } from './storage/leveldb.js';
import { mountRoutes } from './http/routes.js';
import { createLimits } from './service/limits.js';
import { createUpgradeHandler } from './ws/upgrade.js';
import { createInboundBudget } from './ws/inbound.js';
import { mountDashboard, type DashboardRoutes } from './dashboard/routes.js';
import { logs } from './log.js';
import { requirePackage } from './require-package.js';

const express = requirePackage('express') as typeof Express;

/** An Express router that also serves the WebSocket side of the protocol. */
export interface SyncRouter extends Router {
  /**
   * The `path` option: where the router must be mounted, since WebSocket
   * upgrades are taken at `<path>/ws` (`app.use(sync.path, sync)`).
   * @default '/sync'
   */
  readonly path: string;
  /** Takes an HTTP upgrade for `<path>/ws`; returns false and leaves other paths alone. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Registers `handleUpgrade` on a server's `upgrade` event. Returns the router. */
  attach(server: Server): SyncRouter;
  /** Finishes in-flight work, closes sockets with 1001 and closes every store. */
  close(): Promise<void>;
  /** The transport-agnostic use cases (apply, changes, snapshots). */
  readonly coordinator: Coordinator;
  /** The Prometheus registry holding this router's metrics. */
  readonly registry: Registry;
  readonly metrics: Metrics;
  readonly config: Config;
}

/**
 * Builds a sync coordinator as Express middleware:
 *
 *     const sync = createSyncRouter({ path: '/api/sync' });
 *     app.use(sync.path, sync);        // before app.use(express.json()), see routes.ts
 *     sync.attach(server);             // WebSocket sessions at /api/sync/ws
 *
 * Throws TypeError for an unknown or invalid option (config/options.ts).
 * A router mounted somewhere other than `path` serves HTTP there but no
 * WebSocket (upgrades are matched against `<path>/ws` before Express sees
 * them); the first HTTP request through such a mount emits a process
 * warning with code SYNC_MOUNT_MISMATCH.
 */
export function createSyncRouter<I = unknown>(options: SyncRouterOptions<I> = {}): SyncRouter {
  const config = parseOptions(options);
  const inbound = createInboundBudget({ limitBytes: config.maxInboundBytes, maxMessageBytes: config.maxMessageBytes });
  const metrics = createMetrics(config.registry, inbound);
  const limits = createLimits(config, metrics);
  // In a cluster one node archives each database; `cluster` decides which, once built below.
  let cluster: Cluster | undefined;
  const durability = createDurability(config, config.redis ? (id) => cluster?.archives(id) ?? false : undefined);
  const replicas = replicaOptionsOf(config);
  const local: ReplicaSource = durability ?? {
    open: (id, options) => openLevelReplica(databaseDirectory(config.dataDir, id), { ...replicas, ...options }),
    close: (_id, replica) => replica.close(),
    hasLocalCopy: (id) => pathExists(databaseDirectory(config.dataDir, id)),
  };
  const hub = new Hub(metrics);
  // In a cluster, every write goes through the shared log and every open database follows it.
  const clusterMetrics = config.redis ? createClusterMetrics(config.registry, config.nodeId) : undefined;
  const redis = config.redis ? new RedisLog({ url: config.redis, nodeId: config.nodeId, onError: () => clusterMetrics?.redisErrorsTotal.inc() }) : undefined;
  cluster = redis && clusterMetrics
    ? new Cluster(redis, local, hub, {
      nodeId: config.nodeId, logRetentionMs: config.clusterLogRetentionMs, metrics: clusterMetrics, now: config.now,
      onStale: (id, reason) => coordinator.retire(id, reason),
    })
    : undefined;
  // Per-address limits count every node's use; the total stays per node (shared-limits.ts says why).
  const sharesLimits = config.clusterLimitsSyncMs > 0 && (config.maxConnectionsPerIp > 0 || config.messagesPerSecondPerIp > 0);
  const sharedLimits = redis && sharesLimits
    ? new SharedLimits({
      usage: limits.usage,
      connection: redis.connection('limits'),
      nodeId: config.nodeId,
      intervalMs: config.clusterLimitsSyncMs,
      onError: () => clusterMetrics?.redisErrorsTotal.inc(),
    })
    : undefined;
  const coordinator = new Coordinator(config, metrics, { replicas: cluster ?? local, limits, hub, ...(cluster ? { writes: cluster } : {}) });
  const upgrades = createUpgradeHandler(config, coordinator, metrics, limits, inbound);
  const router = express.Router();
  router.use(checkMount);
  let dashboard: DashboardRoutes | undefined;
  const routes = mountRoutes(router, {
    config, coordinator, metrics, limits, inbound,
    extraRoutes: config.dashboard ? (r, helpers) => { dashboard = mountDashboard(r, { config, coordinator, metrics, ...helpers }); } : undefined,
  });
  const attached = new Set<Server>();

  let warnedMount = false;
  /**
   * Warns once when the router is reached through a mount other than
   * `config.path`. Upgrades are not taken at the mount learned here: they
   * usually come before any HTTP request, so the WebSocket would work or
   * hang depending on which request came first after a restart, and a
   * router mounted twice or under a pattern has no single mount to learn.
   */
  function checkMount(req: Request, _res: Response, next: NextFunction): void {
    if (!warnedMount) {
      const mount = req.baseUrl === '' ? '/' : req.baseUrl;
      // Express matches mount paths case-insensitively unless told otherwise; only a different path is a mistake.
      if (mount.toLowerCase() !== config.path.toLowerCase()) {
        warnedMount = true;
        process.emitWarning(
          `The sync router is mounted at "${mount}" but its path option is "${config.path}": HTTP works at ${mount}, ` +
          `but WebSocket clients connecting to ${joinPath(mount, 'ws')} get no answer until they time out, because upgrades are only taken at ${joinPath(config.path, 'ws')}. ` +
          `Mount it with app.use(sync.path, sync), or create it with createSyncRouter({ path: ${JSON.stringify(mount)} }).`,
          { code: 'SYNC_MOUNT_MISMATCH' },
        );
      }
    }
    next();
  }

  function handleSyncUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    return upgrades.handleUpgrade(req, socket, head);
  }

  function attach(server: Server): SyncRouter {
    if (!attached.has(server)) {
      attached.add(server);
      server.on('upgrade', handleSyncUpgrade);
    }
    return sync;
  }

  function close(): Promise<void> {
    for (const server of attached) server.off('upgrade', handleSyncUpgrade);
    attached.clear();
    logs.server('closing sync router');
    // Its streams would keep the server's connections open; it has nothing in flight to finish.
    dashboard?.close();
    return coordinator.close(async function closeTransports() {
      routes.close();
      await upgrades.close();
    }).then(async () => {
      cluster?.shutdown();
      await sharedLimits?.close();
      await redis?.close();
      await durability?.shutdown();
    });
  }

  const sync = Object.assign(router, {
    path: config.path,
    handleUpgrade: handleSyncUpgrade,
    attach,
    close,
    coordinator,
    registry: config.registry,
    metrics,
    config,
  }) as SyncRouter;
  return sync;
}

/** `base` + '/' + `leaf`, without doubling the slash of the root mount. */
function joinPath(base: string, leaf: string): string {
  return `${base === '/' ? '' : base}/${leaf}`;
}


/**
 * The durability layer when the config names an archive (`s3` or
 * `archive`), else undefined: one local disk holds everything. The S3
 * implementation (and the AWS SDK) loads on first use.
 */
function createDurability(config: Config, archives?: (databaseId: string) => boolean): Durability | undefined {
  const { s3 } = config;
  const archive = config.archive ?? (s3 ? openS3Archive(s3) : undefined);
  if (!archive) return undefined;
  let durability: Durability | undefined;
  const metrics = createArchiveMetrics(config.registry, () => durability?.figures() ?? { pendingTransactions: 0, outboxBytes: 0, lagSeconds: 0 });
  durability = new Durability({
    archive,
    dataDir: config.dataDir,
    replicaOptions: replicaOptionsOf(config),
    mode: config.s3Durability,
    snapshots: { intervalMs: config.snapshotIntervalMs, changes: config.snapshotChanges, kept: config.snapshotsKept },
    eviction: { enabled: config.diskEviction, idleMs: config.diskEvictionIdleMs },
    metrics,
    now: config.now,
    ...(archives ? { archives } : {}),
  });
  return durability;
}
