/**
 * Child process of spec/helpers/s3-server.ts: s3rver on 127.0.0.1, serving
 * one bucket from a directory. Prints `LISTENING <port>` once it accepts
 * connections; exits when its stdin closes (the parent went away).
 *
 * Two faults of s3rver 3.7.1 are worked around here, neither of which real S3
 * (or the archive code) has:
 * - Paged listings cipher the continuation token with DES, which Node 20's
 *   OpenSSL 3 only offers with the legacy provider: the parent starts this
 *   process with --openssl-legacy-provider (else every truncated
 *   ListObjectsV2 answers 500, ERR_OSSL_EVP_UNSUPPORTED).
 * - Listings come in directory-walk order, not in key byte order ("a/b"
 *   before "a", "a/x" before "a-c"), and the next page starts after the last
 *   key by comparison, so keys that sort out of walk order are lost across
 *   pages. The store's listObjects is wrapped to sort by UTF-8 bytes, as S3 does.
 */
import { createRequire } from 'node:module';
import S3rver from 's3rver';

interface S3rverObject { key: string }
interface ListOptions { startAfter?: string; maxKeys?: number; [option: string]: unknown }
interface ListResult { objects: S3rverObject[]; commonPrefixes: string[]; isTruncated: boolean }
interface Store { listObjects(bucket: string, options: ListOptions): Promise<ListResult> }

const require = createRequire(import.meta.url);
const FilesystemStore = require('s3rver/lib/stores/filesystem.js') as { prototype: Store };
const walkOrder = FilesystemStore.prototype.listObjects;
FilesystemStore.prototype.listObjects = async function listInByteOrder(this: Store, bucket, options) {
  const { startAfter = '', maxKeys = Infinity } = options;
  const all = await walkOrder.call(this, bucket, { ...options, startAfter: '', maxKeys: Infinity });
  const after = Buffer.from(startAfter, 'utf8');
  const sorted = all.objects
    .map((object) => ({ object, bytes: Buffer.from(object.key, 'utf8') }))
    .filter((entry) => Buffer.compare(entry.bytes, after) > 0)
    .sort((a, b) => Buffer.compare(a.bytes, b.bytes));
  return { objects: sorted.slice(0, maxKeys).map((entry) => entry.object), commonPrefixes: all.commonPrefixes, isTruncated: sorted.length > maxKeys };
};

const [directory, port, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: Number(port), silent: true, directory: directory!, configureBuckets: [{ name: bucket!, configs: [] }] });
const address = await server.run();
process.stdout.write(`LISTENING ${address.port}\n`);
process.stdin.resume();
process.stdin.on('close', () => process.exit(0));
