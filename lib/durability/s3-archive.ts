/**
 * Archive over S3 or an S3-compatible store. The only module that imports the
 * AWS SDK.
 *
 * Failing fast matters more here than squeezing out a success: with
 * `s3Durability: 'ack'` a client waits on every put, and the outbox of the
 * async mode retries on its own schedule anyway. So each request gets a
 * connect timeout, a timeout until the response starts, and an idle timeout,
 * and the SDK's standard retry strategy makes at most `maxAttempts` attempts
 * (its retry quota also stops retrying early during a long outage).
 * Worst case to STORAGE_UNAVAILABLE with the defaults: a refused connection
 * well under a second (three attempts and the backoff between them); an
 * endpoint that drops packets about 10 s (3 x 3 s connect); a server that
 * accepts and then hangs about 60 s (3 x 20 s).
 */
import { PassThrough, Readable } from 'node:stream';
import { createRequire } from 'node:module';
import type * as S3Sdk from '@aws-sdk/client-s3';
import type { ListObjectsV2CommandOutput, S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import type * as LibStorage from '@aws-sdk/lib-storage';
import { describeValue, ErrorCode, isSyncError, messageOf, SyncError } from '../errors.js';
import { logs } from '../log.js';
import { archiveKeyProblem, checkArchiveKey, MAX_ARCHIVE_KEY_BYTES, type Archive, type ArchiveObject, type ArchivePutOptions } from './archive.js';
import { ArchiveLifecycle } from './lifecycle.js';

/**
 * The AWS SDK is loaded when the first S3Archive is built, not when this
 * module is: it costs ~8 MB of memory that a coordinator without S3 should
 * not pay (the router imports this module either way).
 */
const requireSdk = createRequire(import.meta.url);

interface Sdk { s3: typeof S3Sdk; storage: typeof LibStorage }

function loadSdk(): Sdk {
  return { s3: requireSdk('@aws-sdk/client-s3') as typeof S3Sdk, storage: requireSdk('@aws-sdk/lib-storage') as typeof LibStorage };
}

const log = logs.storage.extend('archive');

/** S3's smallest part of a multipart upload (all but the last). */
const MIN_PART_BYTES = 5 * 1024 * 1024;
/** DeleteObjects takes at most this many keys per request. */
const DELETE_BATCH = 1000;

/** Options of {@link S3Archive}; the names follow the `S3_*` settings. */
export interface S3ArchiveOptions {
  /** Bucket name (`S3_BUCKET`). Required. */
  bucket: string;
  /** Region (`S3_REGION`). @default 'us-east-1' */
  region?: string;
  /** Endpoint URL of an S3-compatible store (`S3_ENDPOINT`), e.g. `http://127.0.0.1:9000`. @default AWS's endpoint for the region */
  endpoint?: string;
  /** Access key id (`S3_ACCESS_KEY_ID`); give both keys or neither. Without them the SDK's default credential chain is used (environment, shared config, instance or task role). */
  accessKeyId?: string;
  /** Secret access key (`S3_SECRET_ACCESS_KEY`). */
  secretAccessKey?: string;
  /** Session token for temporary credentials, with the two keys. */
  sessionToken?: string;
  /** Address the bucket in the path (`http://host/bucket/key`) rather than the host name, as most S3-compatible servers need (`S3_FORCE_PATH_STYLE`). @default false */
  forcePathStyle?: boolean;
  /**
   * Prepended verbatim to every key (`S3_KEY_PREFIX`), e.g. `sync/`; end it
   * with `/` so that two deployments' prefixes cannot overlap. Counts
   * against S3's 1,024-byte key limit. @default ''
   */
  keyPrefix?: string;
  /** Milliseconds to establish a connection, per attempt. @default 3000 */
  connectTimeoutMs?: number;
  /** Milliseconds from the start of an attempt until the response starts, including sending the body (a whole part of a multipart upload), per attempt. @default 20000 */
  requestTimeoutMs?: number;
  /** Milliseconds a connection may carry nothing at any point, including while a stream from `get` is read. @default 30000 */
  idleTimeoutMs?: number;
  /** Attempts per request, the first included (the SDK's standard retry strategy, with exponential backoff and jitter). @default 3 */
  maxAttempts?: number;
  /** Bytes per part of a streamed (multipart) upload; at least 5 MiB. Streams of up to 10,000 parts can be stored. @default 8 MiB */
  partSizeBytes?: number;
  /** Parts of one streamed upload in flight at once. A streamed put holds about (uploadConcurrency + 1) x partSizeBytes in memory. @default 2 */
  uploadConcurrency?: number;
  /** Keys per list request, 1-1000 (S3 never returns more than 1,000). @default 1000 */
  listPageSize?: number;
}

interface SdkError {
  name?: unknown;
  code?: unknown;
  Code?: unknown;
  message?: unknown;
  $retryable?: unknown;
  $metadata?: { httpStatusCode?: number; attempts?: number };
  cause?: unknown;
  errors?: unknown;
}

// From the SDK's own classification (its throttling and transient codes), plus what S3 answers under load.
const TRANSIENT_NAMES = new Set([
  'TimeoutError', 'RequestTimeout', 'RequestTimeoutException', 'InternalError', 'ServiceUnavailable', 'SlowDown',
  'Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled', 'RequestThrottledException',
  'TooManyRequestsException', 'BandwidthLimitExceeded', 'RequestLimitExceeded', 'ProvisionedThroughputExceededException',
  'PriorRequestNotComplete', 'LimitExceededException', 'EC2ThrottledException', 'TransactionInProgressException',
]);
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETUNREACH',
  'ENETDOWN', 'ENETRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET',
]);

/** True when a retry may cure `err`: the network, a timeout, a 5xx, throttling. */
function isTransient(err: unknown, depth = 0): boolean {
  if (typeof err !== 'object' || err === null || depth > 4) return false;
  const e = err as SdkError;
  if (e.$retryable) return true;
  const status = e.$metadata?.httpStatusCode;
  if (typeof status === 'number' && (status >= 500 || status === 429 || status === 408)) return true;
  if (TRANSIENT_NAMES.has(e.name as string) || TRANSIENT_NAMES.has(e.Code as string)) return true;
  if (NETWORK_CODES.has(e.code as string)) return true;
  // Node's happy-eyeballs connect reports one error per address tried.
  if (Array.isArray(e.errors) && e.errors.some((inner) => isTransient(inner, depth + 1))) return true;
  return e.cause !== undefined && e.cause !== err && isTransient(e.cause, depth + 1);
}

/** `Name (HTTP 403): message` from whatever the SDK or the socket threw. */
function describeError(err: unknown): string {
  if (typeof err !== 'object' || err === null) return String(err);
  const e = err as SdkError;
  const name = typeof e.Code === 'string' ? e.Code : typeof e.name === 'string' ? e.name : 'Error';
  const status = e.$metadata?.httpStatusCode;
  const code = typeof e.code === 'string' && e.code !== name ? ` ${e.code}` : '';
  let message = messageOf(err);
  if (message === '' || message === 'UnknownError') message = 'no message';
  const attempts = e.$metadata?.attempts;
  return `${name}${code}${status !== undefined ? ` (HTTP ${status})` : ''}: ${message}${attempts !== undefined && attempts > 1 ? ` (after ${attempts} attempts)` : ''}`;
}

function positiveInteger(value: unknown, name: string, fallback: number, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new TypeError(`S3 archive option ${name}: expected an integer ${min}-${max}, got ${describeValue(value)}`);
  }
  return value;
}

function optionalString(value: unknown, name: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw new TypeError(`S3 archive option ${name}: expected a non-empty string, got ${describeValue(value)}`);
  return value;
}

/**
 * An Archive in one S3 bucket, under `keyPrefix`. Construction only checks
 * the options; the first call contacts S3.
 *
 * Permissions needed: s3:PutObject, s3:GetObject, s3:DeleteObject,
 * s3:ListBucket (without it S3 answers 403 instead of 404 for a missing
 * object, which `get` then reports as an error, not as absent) and
 * s3:AbortMultipartUpload. Give the bucket a lifecycle rule that aborts
 * incomplete multipart uploads after a day: an upload that fails while S3
 * is unreachable cannot be aborted and leaves its parts behind.
 */
export class S3Archive implements Archive {
  readonly location: string;
  readonly #client: S3Client;
  readonly #sdk: Sdk;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #partSize: number;
  readonly #queueSize: number;
  readonly #pageSize: number;
  readonly #life: ArchiveLifecycle;

  /** @throws TypeError naming the option when an option is invalid. */
  constructor(options: S3ArchiveOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError(`S3 archive options: expected an object, got ${describeValue(options)}`);
    const bucket = optionalString(options.bucket, 'bucket');
    if (bucket === undefined) throw new TypeError('S3 archive option bucket: required');
    const region = optionalString(options.region, 'region') ?? 'us-east-1';
    const endpoint = optionalString(options.endpoint, 'endpoint');
    if (endpoint !== undefined && !(URL.canParse(endpoint) && ['http:', 'https:'].includes(new URL(endpoint).protocol))) throw new TypeError(`S3 archive option endpoint: expected a URL such as http://127.0.0.1:9000, got ${describeValue(endpoint)}`);
    const accessKeyId = optionalString(options.accessKeyId, 'accessKeyId');
    const secretAccessKey = optionalString(options.secretAccessKey, 'secretAccessKey');
    const sessionToken = optionalString(options.sessionToken, 'sessionToken');
    if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
      throw new TypeError('S3 archive options accessKeyId and secretAccessKey: give both or neither (neither uses the default credential chain)');
    }
    if (sessionToken !== undefined && accessKeyId === undefined) throw new TypeError('S3 archive option sessionToken: needs accessKeyId and secretAccessKey');
    if (options.forcePathStyle !== undefined && typeof options.forcePathStyle !== 'boolean') {
      throw new TypeError(`S3 archive option forcePathStyle: expected a boolean, got ${describeValue(options.forcePathStyle)}`);
    }
    const prefix = options.keyPrefix ?? '';
    if (typeof prefix !== 'string' || (prefix !== '' && archiveKeyProblem(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix) !== undefined)) {
      throw new TypeError(`S3 archive option keyPrefix: expected '' or '/'-separated segments (optionally ending in '/'), got ${describeValue(prefix)}`);
    }
    this.#bucket = bucket;
    this.#prefix = prefix;
    this.#partSize = positiveInteger(options.partSizeBytes, 'partSizeBytes', 8 * 1024 * 1024, MIN_PART_BYTES, 5 * 1024 * 1024 * 1024);
    this.#queueSize = positiveInteger(options.uploadConcurrency, 'uploadConcurrency', 2, 1, 64);
    this.#pageSize = positiveInteger(options.listPageSize, 'listPageSize', 1000, 1, 1000);
    const config: S3ClientConfig = {
      region,
      forcePathStyle: options.forcePathStyle ?? false,
      maxAttempts: positiveInteger(options.maxAttempts, 'maxAttempts', 3, 1, 20),
      retryMode: 'standard',
      requestHandler: {
        connectionTimeout: positiveInteger(options.connectTimeoutMs, 'connectTimeoutMs', 3000),
        requestTimeout: positiveInteger(options.requestTimeoutMs, 'requestTimeoutMs', 20_000),
        // Without it, an exceeded requestTimeout only logs a warning.
        throwOnRequestTimeout: true,
        socketTimeout: positiveInteger(options.idleTimeoutMs, 'idleTimeoutMs', 30_000),
      },
    };
    if (endpoint !== undefined) config.endpoint = endpoint;
    if (accessKeyId !== undefined) config.credentials = { accessKeyId, secretAccessKey: secretAccessKey!, ...(sessionToken === undefined ? {} : { sessionToken }) };
    this.#sdk = loadSdk();
    this.#client = new this.#sdk.s3.S3Client(config);
    this.location = `s3://${bucket}/${prefix}${endpoint === undefined ? '' : ` at ${endpoint}`}`;
    this.#life = new ArchiveLifecycle(this.location);
  }

  put(key: string, body: Buffer | Readable, options: ArchivePutOptions = {}): Promise<void> {
    const done = this.#life.run(async () => {
      const Key = this.#objectKey(key);
      const contentType = options.contentType ?? 'application/octet-stream';
      if (typeof contentType !== 'string') throw new TypeError(`archive put contentType: expected a string, got ${describeValue(contentType)}`);
      if (Buffer.isBuffer(body)) {
        try {
          await this.#client.send(new this.#sdk.s3.PutObjectCommand({ Bucket: this.#bucket, Key, Body: body, ContentType: contentType }));
        } catch (err) {
          throw this.#error('put', key, err);
        }
        return;
      }
      if (!(body instanceof Readable) || body.readableObjectMode) {
        throw new TypeError(`archive put body: expected a Buffer or a byte Readable, got ${describeValue(body)}`);
      }
      await this.#upload(key, Key, body, contentType);
    });
    // Whatever failed, a producer must not be left waiting on a body nobody reads.
    if (body instanceof Readable) done.catch(() => body.destroy());
    return done;
  }

  async #upload(key: string, Key: string, body: Readable, contentType: string): Promise<void> {
    // Upload gets its own stream: when a part fails it stops reading and
    // destroys what it reads, and that must not pass for the producer's failure.
    const feed = new PassThrough();
    let bodyFailure: unknown;
    const fail = (err: unknown): void => {
      bodyFailure ??= err;
      feed.destroy(bodyFailure as Error);
    };
    const onClose = (): void => {
      if (!body.readableEnded) fail(Object.assign(new Error(`archive put body of ${JSON.stringify(key)} was destroyed before its end`), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    };
    body.on('error', fail);
    body.on('close', onClose);
    body.pipe(feed);
    const upload = new this.#sdk.storage.Upload({
      client: this.#client,
      params: { Bucket: this.#bucket, Key, Body: feed, ContentType: contentType },
      partSize: this.#partSize,
      queueSize: this.#queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      // The producer's failure comes back as it was; the upload was aborted, nothing stored.
      if (bodyFailure !== undefined) throw bodyFailure;
      throw this.#error('put', key, err);
    } finally {
      body.off('error', fail);
      body.off('close', onClose);
      body.unpipe(feed);
      feed.destroy();
    }
  }

  get(key: string): Promise<Readable | undefined> {
    return this.#life.run(async () => {
      const Key = this.#objectKey(key);
      let body: unknown;
      try {
        body = (await this.#client.send(new this.#sdk.s3.GetObjectCommand({ Bucket: this.#bucket, Key }))).Body;
      } catch (err) {
        // Only NoSuchKey means absent: another 404 (no such bucket, a wrong
        // endpoint path) must not pass for an empty archive.
        if ((err as SdkError).name === 'NoSuchKey' || (err as SdkError).Code === 'NoSuchKey') return undefined;
        throw this.#error('get', key, err);
      }
      if (!(body instanceof Readable)) {
        throw new SyncError(ErrorCode.Internal, `S3 get of key ${JSON.stringify(Key)} in bucket "${this.#bucket}": the SDK returned no Node.js stream`);
      }
      return this.#life.adopt(body, (err) => this.#error('get', key, err));
    });
  }

  list(prefix: string): AsyncIterable<ArchiveObject> {
    return this.#list(prefix);
  }

  async *#list(prefix: string): AsyncGenerator<ArchiveObject> {
    if (typeof prefix !== 'string') throw new TypeError(`archive list prefix: expected a string, got ${describeValue(prefix)}`);
    const Prefix = this.#prefix + prefix;
    let previous: Buffer | undefined;
    let token: string | undefined;
    do {
      const page: ListObjectsV2CommandOutput = await this.#life.run(async () => {
        try {
          return await this.#client.send(new this.#sdk.s3.ListObjectsV2Command({ Bucket: this.#bucket, Prefix, MaxKeys: this.#pageSize, ContinuationToken: token }));
        } catch (err) {
          throw this.#error('list', prefix, err, 'prefix');
        }
      });
      for (const item of page.Contents ?? []) {
        const full = item.Key ?? '';
        const bytes = Buffer.from(full, 'utf8');
        // Restore reads batches in key order, so a server that lists in
        // another order must fail loudly rather than skip or reorder them.
        if (!full.startsWith(Prefix) || (previous !== undefined && Buffer.compare(previous, bytes) >= 0)) {
          throw new SyncError(ErrorCode.Internal, `S3 list of prefix ${JSON.stringify(Prefix)} in bucket "${this.#bucket}": the server listed ${JSON.stringify(full)} after ${JSON.stringify(previous?.toString('utf8') ?? '')}, not in ascending byte order under the prefix`);
        }
        previous = bytes;
        const key = full.slice(this.#prefix.length);
        if (archiveKeyProblem(key) !== undefined) {
          log('list %s: skipping %j, not an archive key', this.location, full);
          continue;
        }
        yield { key, size: item.Size ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) {
        throw new SyncError(ErrorCode.Internal, `S3 list of prefix ${JSON.stringify(Prefix)} in bucket "${this.#bucket}": a truncated page without a continuation token`);
      }
    } while (token !== undefined);
  }

  delete(keys: readonly string[]): Promise<void> {
    return this.#life.run(async () => {
      if (!Array.isArray(keys)) throw new TypeError(`archive delete keys: expected an array of keys, got ${describeValue(keys)}`);
      const unique = [...new Set(keys.map((key, i) => this.#objectKey(key, `keys[${i}]`)))];
      // DeleteObjects names keys in an XML body, and some S3-compatible
      // servers trim the whitespace around XML text: a key that starts or ends
      // with whitespace would then silently stay. Those go one by one, by URL.
      const alone = unique.filter((Key) => /^\s|\s$/.test(Key));
      const batched = unique.filter((Key) => !/^\s|\s$/.test(Key));
      for (const Key of alone) {
        try {
          await this.#client.send(new this.#sdk.s3.DeleteObjectCommand({ Bucket: this.#bucket, Key }));
        } catch (err) {
          throw this.#error('delete', Key.slice(this.#prefix.length), err);
        }
      }
      for (let i = 0; i < batched.length; i += DELETE_BATCH) {
        const batch = batched.slice(i, i + DELETE_BATCH);
        let failed: { Key?: string; Code?: string; Message?: string } | undefined;
        try {
          const out = await this.#client.send(new this.#sdk.s3.DeleteObjectsCommand({
            Bucket: this.#bucket,
            Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
          }));
          failed = out.Errors?.[0];
        } catch (err) {
          const first = batch[0]!.slice(this.#prefix.length);
          throw this.#error('delete', batch.length === 1 ? first : `${first}" and ${batch.length - 1} more "`, err);
        }
        if (failed !== undefined) {
          const err = Object.assign(new Error(failed.Message ?? 'no message'), { name: failed.Code ?? 'Error', Code: failed.Code });
          throw this.#error('delete', (failed.Key ?? '').slice(this.#prefix.length), err);
        }
      }
    });
  }

  close(): Promise<void> {
    return this.#life.close(async () => {
      this.#client.destroy();
    });
  }

  /** The bucket's key for archive key `key`; throws a TypeError when either is invalid. */
  #objectKey(key: string, field = 'key'): string {
    checkArchiveKey(key, field);
    const full = this.#prefix + key;
    if (Buffer.byteLength(full, 'utf8') > MAX_ARCHIVE_KEY_BYTES) {
      throw new TypeError(`archive ${field}: ${describeValue(key)} with keyPrefix ${JSON.stringify(this.#prefix)} is more than S3's ${MAX_ARCHIVE_KEY_BYTES} bytes`);
    }
    return full;
  }

  /** The archive's error for a failed S3 call (durability/archive.ts): STORAGE_UNAVAILABLE when a retry may cure it. */
  #error(op: string, key: string, err: unknown, what = 'key'): Error {
    if (isSyncError(err)) return err;
    const where = `${op} of ${what} ${JSON.stringify(this.#prefix + key)} in bucket "${this.#bucket}"`;
    if (isTransient(err)) {
      return new SyncError(ErrorCode.StorageUnavailable, `S3 unavailable (${this.location}): ${where}: ${describeError(err)}`, { cause: err });
    }
    return new SyncError(ErrorCode.Internal, `S3 ${where} failed: ${describeError(err)}`, { cause: err });
  }
}
