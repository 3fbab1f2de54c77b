import { fileURLToPath } from 'node:url';
import type { S3Options } from '../../lib/config/options.js';
import { launchCoordinatorProcess, type CoordinatorProcess, type ProcessRouterOptions } from './coordinator-process.js';
import type { S3TestServer } from './s3-server.js';
import { makeTempDir } from './tmp-dir.js';

const MAIN = fileURLToPath(new URL('./s3-coordinator-main.ts', import.meta.url));

/** Router options of an S3-archived coordinator process (`s3` is required; an `archive` object cannot cross a process boundary). */
export type S3ProcessRouterOptions = Omit<ProcessRouterOptions, 's3' | 'archive'> & { s3: S3Options };

/** How to start an S3-archived coordinator process. */
export interface S3CoordinatorProcessOptions {
  /** Reused when given (and then not removed); a fresh temp dir otherwise. */
  dataDir?: string;
  router: S3ProcessRouterOptions;
  /** Extra environment, e.g. `{ DEBUG: 'sync:*' }` while investigating. */
  env?: NodeJS.ProcessEnv;
}

/**
 * Starts spec/helpers/s3-coordinator-main.ts as a child process on
 * 127.0.0.1, port 0 (heartbeats off unless given), and resolves once it
 * listens. The result is the same CoordinatorProcess the CLI helper gives:
 * stop() is SIGTERM, kill() is SIGKILL, cleanupCoordinatorProcesses() ends it.
 */
export async function startS3CoordinatorProcess(options: S3CoordinatorProcessOptions): Promise<CoordinatorProcess> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? await makeTempDir('s3-coordinator-');
  const config = { dataDir, router: { heartbeatIntervalMs: 0, ...options.router } };
  return launchCoordinatorProcess({ args: [MAIN, JSON.stringify(config)], dataDir, ownDir, stdinPipe: true, env: options.env });
}

/** The `s3` router option for `server` under key prefix `keyPrefix` (path-style, s3rver's credentials). */
export function s3Options(server: S3TestServer, keyPrefix: string): S3Options {
  return {
    bucket: server.bucket, endpoint: server.endpoint, region: server.region, forcePathStyle: true,
    accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey, keyPrefix,
  };
}
