import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Bytes of the regular files directly in `dir` (a LevelDB store keeps all
 * its files there; a subdirectory may be another database's, see
 * databaseDirectory), or undefined when `dir` cannot be read (not on disk:
 * never written, or evicted to the archive).
 */
export async function directoryBytes(dir: string): Promise<number | undefined> {
  let names: string[];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((entry) => entry.isFile()).map((entry) => entry.name);
  } catch {
    return undefined;
  }
  let bytes = 0;
  for (const name of names) {
    // A file LevelDB removed between the listing and here (a compaction) simply no longer counts.
    bytes += await stat(join(dir, name)).then((s) => s.size, () => 0);
  }
  return bytes;
}
