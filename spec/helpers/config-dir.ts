import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig, type LoadConfigOptions } from '../../lib/config/load-config.js';
import type { CoordinatorConfig } from '../../lib/config/options.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

/** The working directory of one config spec's current test, and loadConfig against it. */
export interface ConfigDir {
  /** This test's directory: a new empty one per test. */
  readonly cwd: string;
  /** loadConfig isolated from the real process: this directory, and no environment unless given. */
  load(options?: LoadConfigOptions): CoordinatorConfig;
  /** Writes `data` as JSON (a string as is) to `name` in the directory; resolves with its path. */
  writeConfig(data: unknown, name?: string): Promise<string>;
}

/**
 * Gives every test of the calling `describe` a fresh temp directory as its
 * working directory (loadConfig reads ./sync-coordinator.json there and
 * makes dataDir absolute against it), removed after the test.
 */
export function useConfigDir(prefix: string): ConfigDir {
  let cwd = '';
  beforeEach(async () => {
    cwd = await makeTempDir(prefix);
  });
  afterEach(async () => {
    await removeTempDir(cwd);
  });
  return {
    get cwd() {
      return cwd;
    },
    load: (options = {}) => loadConfig({ cwd, env: {}, ...options }),
    writeConfig: async (data, name = 'sync-coordinator.json') => {
      const path = join(cwd, name);
      await writeFile(path, typeof data === 'string' ? data : JSON.stringify(data));
      return path;
    },
  };
}
