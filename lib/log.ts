import createDebug from 'debug';

/** Debug loggers, one namespace per layer: enable with DEBUG=sync-coordinator:*. */
export const logs = {
  server: createDebug('sync-coordinator:server'),
  http: createDebug('sync-coordinator:http'),
  ws: createDebug('sync-coordinator:ws'),
  service: createDebug('sync-coordinator:service'),
  auth: createDebug('sync-coordinator:auth'),
  config: createDebug('sync-coordinator:config'),
  replica: createDebug('sync-coordinator:replica'),
  storage: createDebug('sync-coordinator:storage'),
} as const;
