import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import express, { type Router } from 'express';
import type { Registry } from 'prom-client';
import { parseOptions, type Config, type SyncRouterOptions } from './config/options.js';
import { createMetrics, type Metrics } from './metrics/metrics.js';
import { Coordinator } from './service/coordinator.js';
import { mountRoutes } from './http/routes.js';
import { createLimits } from './service/limits.js';
import { createUpgradeHandler } from './ws/upgrade.js';
import { createInboundBudget } from './ws/inbound.js';
import { logs } from './log.js';

/** An Express router that also serves the WebSocket side of the protocol. */
export interface SyncRouter extends Router {
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
 *     const sync = createSyncRouter({ path: '/sync' });
 *     app.use('/sync', sync);
 *     sync.attach(server);
 */
export function createSyncRouter(options: SyncRouterOptions = {}): SyncRouter {
  const config = parseOptions(options);
  const inbound = createInboundBudget({ limitBytes: config.maxInboundBytes, maxMessageBytes: config.maxMessageBytes });
  const metrics = createMetrics(config.registry, inbound);
  const limits = createLimits(config, metrics);
  const coordinator = new Coordinator(config, metrics, limits);
  const upgrades = createUpgradeHandler(config, coordinator, metrics, limits, inbound);
  const router = express.Router();
  const routes = mountRoutes(router, { config, coordinator, metrics, limits, inbound });
  const attached = new Set<Server>();

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
    return coordinator.close(async function closeTransports() {
      routes.close();
      await upgrades.close();
    });
  }

  const sync = Object.assign(router, {
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
