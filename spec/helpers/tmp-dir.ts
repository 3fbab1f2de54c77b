import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Creates a fresh, empty directory under the OS temp dir. */
export async function makeTempDir(prefix = 'sync-coordinator-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/** Removes a directory made by makeTempDir, with everything in it. */
export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
