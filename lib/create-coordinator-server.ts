import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type ExpressModule from 'express';
import type { Express } from 'express';
import { SERVER_DEFAULTS, type CoordinatorConfig, type SyncRouterOptions } from './config/options.js';
import { claimDataDir, type DataDirLock } from './config/data-dir.js';
import type { CoordinatorHooks } from './config/hooks.js';
import { createSyncRouter, type SyncRouter } from './create-sync-router.js';
import { logs } from './log.js';
import { ErrorCode } from './errors.js';
import { notFound } from './http/routes.js';
import { refuseUpgrade } from './ws/upgrade.js';
import { requirePackage } from './require-package.js';

const express = requirePackage('express') as typeof ExpressModule;

const log = logs.server;

/** Arguments of `createCoordinatorServer`. */
export interface CoordinatorServerOptions<I = unknown> {
  /** Usually from `loadConfig()`; missing fields take the defaults. */
  config?: Partial<CoordinatorConfig>;
  /** Hooks, generic over the identity type their `onAuthenticate` returns. */
  hooks?: CoordinatorHooks<I>;
}

/** A standalone coordinator: an Express app with the sync router, on its own http.Server. */
export interface CoordinatorServer {
  readonly app: Express;
  readonly server: Server;
  readonly router: SyncRouter;
  readonly config: CoordinatorConfig;
  /**
   * Claims the data directory (see {@link claimDataDir}), then listens;
   * resolves with the address actually bound. Rejects with ConfigError
   * (`setting` "dataDir") when the data directory cannot be used, and with
   * the listen error (EADDRINUSE ...) otherwise; either way nothing is left
   * bound or locked.
   */
  start(): Promise<{ host: string; port: number; url: string }>;
  /** Graceful: stop accepting, answer in-flight applies, close sockets with 1001, close stores, release the data directory. */
  stop(): Promise<void>;
}

export { claimDataDir, type DataDirLock } from './config/data-dir.js';

/**
 * The router options of a standalone server's configuration (missing fields
 * take SERVER_DEFAULTS): what `createCoordinatorServer` builds its router
 * from, and what the CLI's restore and export commands open databases with,
 * so that both merge under the same rules.
 */
export function routerOptionsOf<I = unknown>(partial: Partial<CoordinatorConfig>, hooks?: CoordinatorHooks<I>): SyncRouterOptions<I> {
  const config: CoordinatorConfig = { ...SERVER_DEFAULTS, ...partial };
  // A durability setting given only in `router` (programmatic use) is not overridden by a top-level default.
  const section = (config.router ?? {}) as SyncRouterOptions;
  const durability = <K extends 's3Durability' | 'diskEviction' | 'diskEvictionIdleMs'>(key: K): CoordinatorConfig[K] =>
    partial[key] ?? (section[key] as CoordinatorConfig[K] | undefined) ?? SERVER_DEFAULTS[key];
  return {
    ...config.router,
    path: config.basePath,
    dataDir: config.dataDir,
    corsOrigin: config.corsOrigin,
    authMode: config.authMode,
    authTokens: config.authTokens,
    retentionHorizonMs: config.retentionHorizonMs,
    batchSize: config.batchSize,
    ...(config.s3 ? { s3: config.s3 } : {}),
    s3Durability: durability('s3Durability'),
    diskEviction: durability('diskEviction'),
    diskEvictionIdleMs: durability('diskEvictionIdleMs'),
    ...(config.redisUrl !== undefined ? { redis: config.redisUrl } : {}),
    ...(config.nodeId !== undefined ? { nodeId: config.nodeId } : {}),
    ...(hooks ? { hooks } : {}),
  };
}

/** Builds the standalone server the CLI runs. */
export function createCoordinatorServer<I = unknown>(options: CoordinatorServerOptions<I> = {}): CoordinatorServer {
  const config: CoordinatorConfig = { ...SERVER_DEFAULTS, ...options.config };
  const router = createSyncRouter(routerOptionsOf(options.config ?? {}, options.hooks));
  const app = express();
  app.disable('x-powered-by');
  app.use(config.basePath, router);
  app.use(notFound);
  const server = createServer(app);
  // The standalone server owns every upgrade: one the router does not take
  // (another path) is refused at once instead of hanging until the client gives up.
  server.on('upgrade', function refuseOtherUpgrades(req, socket, head) {
    if (router.handleUpgrade(req, socket, head)) return;
    refuseUpgrade(socket, 404, ErrorCode.NotFound, `No WebSocket endpoint at ${(req.url ?? '').split('?')[0]}`);
  });
  let stopping: Promise<void> | undefined;
  let starting: Promise<{ host: string; port: number; url: string }> | undefined;
  let dataDirLock: DataDirLock | undefined;

  function start(): Promise<{ host: string; port: number; url: string }> {
    starting = (async () => {
      const lock = await claimDataDir(config.dataDir);
      try {
        const address = await listen();
        dataDirLock = lock;
        return address;
      } catch (err) {
        await lock.release();
        throw err;
      }
    })();
    return starting;
  }

  function listen(): Promise<{ host: string; port: number; url: string }> {
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => {
        server.off('error', reject);
        const address = server.address() as AddressInfo;
        const shownHost = config.host === '0.0.0.0' || config.host === '::' ? 'localhost' : config.host;
        const url = `http://${shownHost.includes(':') ? `[${shownHost}]` : shownHost}:${address.port}${config.basePath}`;
        log('listening on %s', url);
        resolve({ host: config.host, port: address.port, url });
      });
    });
  }

  function stop(): Promise<void> {
    if (!stopping) {
      stopping = (async () => {
        // A start still claiming the directory or binding would otherwise leave both behind after stop().
        await starting?.catch(() => undefined);
        const closed = new Promise<void>((resolve) => {
          if (!server.listening) return resolve();
          server.close(() => resolve());
        });
        await router.close();
        server.closeIdleConnections();
        const force = setTimeout(() => server.closeAllConnections(), 5000);
        await closed;
        clearTimeout(force);
        // Only once every store is closed may another server take the directory.
        await dataDirLock?.release();
        log('stopped');
      })();
    }
    return stopping;
  }

  return { app, server, router, config, start, stop };
}
