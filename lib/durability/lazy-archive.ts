import type { Readable } from 'node:stream';
import type { Archive, ArchiveObject, ArchivePutOptions } from './archive.js';

/**
 * An archive built on first use: the S3 implementation loads the AWS SDK
 * (tens of MB of modules), which a router that never opens a database, or a
 * CLI that only prints its help, should not pay for.
 */
export function lazyArchive(location: string, create: () => Promise<Archive>): Archive {
  let archive: Promise<Archive> | undefined;
  let closed = false;
  const get = (): Promise<Archive> => (archive ??= create());
  return {
    location,
    async put(key: string, body: Buffer | Readable, options?: ArchivePutOptions) { return (await get()).put(key, body, options); },
    async get(key: string) { return (await get()).get(key); },
    async *list(prefix: string): AsyncIterable<ArchiveObject> { yield* (await get()).list(prefix); },
    async delete(keys: readonly string[]) { return (await get()).delete(keys); },
    async close() {
      if (closed) return;
      closed = true;
      if (archive) await (await archive).close();
    },
  };
}
