import type Debug from 'debug';
import { requirePackage } from './require-package.js';

const createDebug = requirePackage('debug') as typeof Debug;

/** Prefix of every namespace below: `DEBUG=sync-coordinator:*` enables them all. */
export const LOG_PREFIX = 'sync-coordinator';

/** Debug loggers, one namespace per layer: enable with DEBUG=sync-coordinator:*. */
export const logs = {
  server: createDebug(`${LOG_PREFIX}:server`),
  http: createDebug(`${LOG_PREFIX}:http`),
  ws: createDebug(`${LOG_PREFIX}:ws`),
  service: createDebug(`${LOG_PREFIX}:service`),
  auth: createDebug(`${LOG_PREFIX}:auth`),
  config: createDebug(`${LOG_PREFIX}:config`),
  replica: createDebug(`${LOG_PREFIX}:replica`),
  storage: createDebug(`${LOG_PREFIX}:storage`),
  s3: createDebug(`${LOG_PREFIX}:s3`),
  cluster: createDebug(`${LOG_PREFIX}:cluster`),
} as const;

/** The layer names (`ws`, `http` ...), i.e. the namespaces without LOG_PREFIX. */
export const LOG_LAYERS: readonly string[] = Object.freeze(Object.keys(logs));
