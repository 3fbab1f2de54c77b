/**
 * The shared, ordered log of a cluster: one Redis Stream per database whose
 * entries are the accepted `apply_changes` messages, read back by every node
 * in stream order. With lib/cluster/stamps.ts it gives every node the same
 * stamps (docs/protocol.md §5). The only module that imports ioredis.
 *
 * Keys of database `db` (hash-tagged, so that on Redis Cluster they share one
 * slot): `<prefix>{<db>}:log` the stream, `:site` its server site id, `:last`
 * the last id appended (the appender's state), `:trimmed` the highest MINID
 * it was trimmed at, `:archiver` the node id holding the archiver lease,
 * `:archived` the last stamp its archive holds (hex). Plus `<prefix>node:<nodeId>:<instance>:wake`, a tiny
 * stream that wakes this instance's blocking read. Write none of them by hand.
 *
 * Continuity: every entry also stores `prev`, what a reader must already hold
 * before applying it: the id of the entry before it (or the `after` its
 * appender gave, when higher). Readers check it against their position: a
 * higher `prev`, or a trim mark above the position, means entries they need
 * are not in the log (LogGapError); a lower one, or a log that ends below the
 * position, means Redis lost entries they have already applied (LogRewoundError:
 * a Sentinel failover before the primary's last writes reached a replica, or
 * a restart without AOF). Without the check, entries appended after such a
 * loss could get ids at or below a reader's position and be skipped silently.
 *
 * Connections: two per RedisLog, whatever the number of databases. One
 * carries every ordinary command; the other runs the tail, a single loop that
 * reads all tailed streams at once (one XREAD over all their keys), so
 * hundreds of open databases cost one socket and one round trip per batch.
 * While nothing is new it blocks in XREAD BLOCK over those streams plus the
 * wake stream; when a database's handler finishes, or a database is added,
 * an XADD to the wake stream ends the block. (CLIENT UNBLOCK would race with
 * a read still on its way; a stream id cannot: XREAD returns at once for
 * anything after the id it is given.) The data itself is always read
 * non-blocking inside MULTI together with each stream's last id and trim
 * mark, so the continuity check sees the very state the entries came from.
 * Multi-key XREAD needs all keys in one slot on Redis Cluster, so this
 * targets a standalone primary (optionally found through Sentinel).
 *
 * Failures: the command connection never queues while disconnected
 * (`enableOfflineQueue: false`), fails commands in flight when the socket
 * drops (`maxRetriesPerRequest: 0`, no resend), and times a command out after
 * `commandTimeoutMs`; each of those, and Redis's own "try later" replies
 * (READONLY during a failover, LOADING while it replays its AOF, MASTERDOWN,
 * TRYAGAIN, CLUSTERDOWN, BUSY, NOREPLICAS, OOM, MISCONF), rejects with
 * SyncError STORAGE_UNAVAILABLE. ioredis reconnects on its own (backoff up to
 * 2 s) and the tail resumes from each database's position. An append that
 * failed may still have landed (its reply was lost): resending it is safe,
 * since merging the same change sets twice changes nothing.
 *
 * With `minReplicas`, append also waits (WAIT) until that many replicas have
 * the entry, so that a failover cannot lose an acknowledged write.
 *
 * Needs Redis 6.2 or later (XTRIM MINID).
 */
import { createHash, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Redis, RedisOptions } from 'ioredis';
import { ErrorCode, isSyncError, messageOf, SyncError } from '../errors.js';
import { logs } from '../log.js';
import { SITE_ID_BYTES } from '../protocol/hlc.js';
import { isSiteId, randomSiteId, siteIdFromWire, siteIdToWire } from '../protocol/site-id.js';
import { validateChangeSets, type ValidChangeSet } from '../protocol/validate.js';
import { validateDatabaseId } from '../storage/database-id.js';
import { compareEntryIds, MAX_ENTRY_SEQ, parseEntryId, stampsOf } from './stamps.js';

const log = logs.cluster;

/**
 * ioredis is loaded when the first RedisLog is built, not when this module
 * is: ~9 MB of memory a coordinator outside a cluster should not pay.
 */
const requireRedis = createRequire(import.meta.url);

/** Options of {@link RedisLog}. */
export interface RedisLogOptions {
  /** `redis://[[user]:password@]host[:port][/db]` or `rediss://…` (TLS). @default 'redis://127.0.0.1:6379' */
  url?: string;
  /**
   * Further ioredis options, e.g. `{ sentinels: [...], name: 'mymaster' }`
   * for a primary found through Sentinel, or `tls`. The failure-handling
   * options (offline queue, retries, timeouts) are set by RedisLog and win.
   */
  redis?: RedisOptions;
  /** Prepended to every key. @default 'sync:' */
  keyPrefix?: string;
  /** This node's id, stored with every entry it appends. @default a random UUID */
  nodeId?: string;
  /** A command without a reply after this many ms fails with STORAGE_UNAVAILABLE. @default 5000 */
  commandTimeoutMs?: number;
  /** Longest wait of one blocking read of the tail, in ms (an idle tail re-reads this often). @default 5000 */
  blockMs?: number;
  /** Entries per database per read of the tail; bounds the memory of one batch. @default 100 */
  tailCount?: number;
  /**
   * Replicas that must hold an entry before append resolves (Redis WAIT).
   * With Sentinel, set it to at least 1: an entry only the primary had is
   * lost if it fails over. @default 0
   */
  minReplicas?: number;
  /** How long append waits for `minReplicas`, in ms; below `commandTimeoutMs`. @default 1000 */
  replicaTimeoutMs?: number;
  /** Called with every Redis error: connection errors, failed reads of the tail, failed handlers (e.g. to count them). */
  onError?: (err: Error) => void;
}

/** What one accepted message puts in the log. */
export interface AppendEntry {
  /** The validated change sets of the message, in order (at least one). Their `wire` forms are stored. */
  sets: readonly ValidChangeSet[];
  /** Site id (22 base64url characters) of the sender: pushes skip its sockets (docs/protocol.md §5). */
  site: string;
}

/** Options of {@link RedisLog.append}. */
export interface AppendOptions {
  /**
   * An entry id the new entry's whole range of stamps must lie above, e.g.
   * `entryIdOf(replica.committedStamp)` when a database that has stamps of
   * its own starts its log. @default none (Redis's clock and the last entry decide)
   */
  after?: string;
}

/** One entry of a database's log, decoded. */
export interface LogEntry {
  /** Stream entry id `"<ms>-<seq>"`. */
  id: string;
  /**
   * The change sets, validated again (without a drift bound: it was applied
   * when they were accepted). Empty for a barrier and for a corrupt entry.
   */
  sets: ValidChangeSet[];
  /** `stamps[i]` is the stamp of `sets[i]` (stamps.ts `stampsOf`). */
  stamps: Buffer[];
  /** Sender's site id (base64url), '' if missing. */
  site: string;
  /** Id of the node that appended it, '' if missing. */
  node: string;
  /** What a reader must hold before this entry (see the module comment); '' if missing. */
  prev: string;
  /**
   * Why the entry could not be decoded (not written by RedisLog, or damaged).
   * Every node reads the same bytes, so every node skips it alike.
   */
  corrupt?: string;
}

/** Positions and size of a database's stream. */
export interface LogInfo {
  /** Entries in the stream now. */
  length: number;
  /** Id of the oldest entry kept, if any. */
  firstId?: string;
  /** Id of the last entry appended (also after it was trimmed), if any. */
  lastId?: string;
  /** The highest MINID the stream was trimmed at: entries below it may be gone. */
  trimmedBelow?: string;
}

/** Handler of {@link RedisLog.tail}. */
export interface TailHandler {
  /**
   * Receives the next entries of the database, in stream order, at most
   * `tailCount` at a time; the next batch comes only after the returned
   * promise settles. On a rejection the same batch comes again after a
   * backoff (1 s, doubling up to 30 s), so apply what is above your own
   * committed position and skip the rest. A barrier ({@link RedisLog.barrier})
   * comes as an entry without sets.
   */
  onEntries(entries: LogEntry[]): void | Promise<void>;
  /**
   * The log cannot go on from the tail's position: entries it needs are not
   * in it (LogGapError: restore from the archive, then tail again), or Redis
   * lost entries it has applied (LogRewoundError). The tail has stopped.
   * Without this handler, `onError` gets the error.
   */
  onBroken?(error: LogBreak): void;
}

/** A database being tailed. */
export interface Tail {
  readonly db: string;
  /** Id of the last entry whose batch the handler finished ('0-0' before any). */
  readonly position: string;
  /** Stops delivering. Idempotent; a batch being handled finishes. */
  stop(): void;
}

/**
 * The log does not hold everything after `after`: it was trimmed past it, or
 * it goes on above state it never held (an appender's `after`, a barrier).
 * Code SNAPSHOT_REQUIRED: the reader must start from an archive snapshot.
 */
export class LogGapError extends SyncError {
  readonly db: string;
  /** The reader's position. */
  readonly after: string;
  /** What the log needs a reader to hold first (a trim mark or an entry's `prev`). */
  readonly needs: string;

  constructor(db: string, after: string, needs: string) {
    super(ErrorCode.SnapshotRequired, `redis log of ${db}: entries after ${after} are not in the log (it goes on from ${needs}: trimmed, or continued above state it never held); restore from a snapshot`);
    this.db = db;
    this.after = after;
    this.needs = needs;
  }
}

/**
 * The log lost entries up to `after` that the reader has already applied:
 * Redis lost acknowledged writes (a failover before they reached a replica,
 * a restart without AOF). Code INTERNAL_ERROR: the reader holds changes the
 * log does not; an operator (or a barrier above `after`) must decide.
 */
export class LogRewoundError extends SyncError {
  readonly db: string;
  /** The reader's position. */
  readonly after: string;
  /** Where the log now ends or goes on from ('0-0' when it is empty). */
  readonly logAt: string;

  constructor(db: string, after: string, logAt: string) {
    super(ErrorCode.Internal, `redis log of ${db}: the log lost entries up to ${after} that this node applied (it is at ${logAt}); Redis lost acknowledged writes (failover before replication, or a restart without AOF)`);
    this.db = db;
    this.after = after;
    this.logAt = logAt;
  }
}

/** Why a reader cannot go on from its position. */
export type LogBreak = LogGapError | LogRewoundError;

/** Replies of Redis that mean "not now": the command had no effect and may succeed later. */
const TRANSIENT_REPLIES = /^(READONLY|LOADING|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|BUSY|NOREPLICAS|OOM|MISCONF|NOSCRIPT|UNBLOCKED)\b/;

// KEYS: the stream, its last-id key. ARGV: change sets in the entry (0 for a barrier, which takes one id and no
// stamp), an id to stay above ('' for none), then the fields. The arithmetic of stamps.ts assignEntryId, done here
// so that reading the last id and adding the entry are one step; 'prev' records the highest bound it went above.
const APPEND_SCRIPT = `
local SPAN = 65536
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local count = math.max(tonumber(ARGV[1]), 1)
local prev, pm, ps = '0-0', 0, 0
-- Moves the start of the new range past id (a seq past the counter counts as the end of its ms).
local function above(id)
  if not id then return end
  local m, s = string.match(id, '^(%d+)-(%d+)$')
  m = tonumber(m)
  s = tonumber(s)
  if m > pm or (m == pm and s > ps) then prev = id; pm = m; ps = s end
  if s >= SPAN - 1 then m = m + 1; s = 0 else s = s + 1 end
  if m > ms or (m == ms and s > seq) then ms = m; seq = s end
end
local function streamLast()
  if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do if info[i] == 'last-generated-id' then return info[i + 1] end end
end
local function rangeEnd()
  local finish = seq + count - 1
  return string.format('%.0f-%.0f', ms + math.floor(finish / SPAN), finish % SPAN)
end
above(redis.call('GET', KEYS[2]) or streamLast())
if ARGV[2] ~= '' then above(ARGV[2]) end
local id = rangeEnd()
local added = redis.pcall('XADD', KEYS[1], id, 'prev', prev, unpack(ARGV, 3))
if type(added) == 'table' and added.err then
  -- Something else wrote the stream past the last-id key: go past the stream's own last id.
  above(streamLast())
  id = rangeEnd()
  redis.call('XADD', KEYS[1], id, 'prev', prev, unpack(ARGV, 3))
end
redis.call('SET', KEYS[2], id)
return id
`;

const TRIM_SCRIPT = `
local removed
if ARGV[2] == '~' then
  removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
else
  removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
local function parts(id)
  local m, s = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(m), tonumber(s)
end
local mark = redis.call('GET', KEYS[2])
local m, s = parts(ARGV[1])
local higher = true
if mark then
  local mm, ms = parts(mark)
  higher = m > mm or (m == mm and s > ms)
end
if higher then redis.call('SET', KEYS[2], ARGV[1]) end
return removed
`;

interface Script { readonly lua: string; readonly sha: string }

// KEYS: the archiver key. ARGV: node id, lease in ms. Takes the lease when free, renews it when this node holds it.
const CLAIM_SCRIPT = `
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
`;
const CLAIM = script(CLAIM_SCRIPT);

// KEYS: the archiver key. ARGV: node id. Gives the lease up if this node holds it.
const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;
const RELEASE = script(RELEASE_SCRIPT);

// KEYS: the archived key. ARGV: a stamp in hex (fixed length, so text order is stamp order). Only ever moves up.
const RAISE_SCRIPT = `
local current = redis.call('GET', KEYS[1])
if current == false or ARGV[1] > current then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
`;
const RAISE = script(RAISE_SCRIPT);

function script(lua: string): Script {
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
}

/**
 * How long ioredis waits for a socket to close after disconnect() before it
 * destroys it. Its timer also runs when the socket had already died (during
 * an outage) and then always runs to the end; close() waits it out so that
 * nothing is left behind.
 */
const DISCONNECT_TIMEOUT_MS = 100;

/** Resolves when `client` has ended, or once ioredis's disconnect timer must have fired. */
function ended(client: Redis): Promise<void> {
  if (client.status === 'end') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, DISCONNECT_TIMEOUT_MS + 20);
    client.once('end', done);
    function done() {
      clearTimeout(timer);
      client.off('end', done);
      resolve();
    }
  });
}

const APPEND = script(APPEND_SCRIPT);
const TRIM = script(TRIM_SCRIPT);

interface Sub {
  readonly db: string;
  readonly key: string;
  readonly trimKey: string;
  readonly lastKey: string;
  readonly siteId: Buffer;
  readonly handler: TailHandler;
  position: string;
  busy: boolean;
  stopped: boolean;
  failures: number;
  retry?: NodeJS.Timeout;
}

interface Sleep { timer: NodeJS.Timeout; resolve: () => void }

type RawEntry = [id: string, fields: string[]];
type StreamReply = [key: string, entries: RawEntry[]][] | null;

function fieldOf(fields: string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

/**
 * How many of `entries` (read after `position`, with the log's last id and
 * trim mark from the same transaction) continue what the reader holds, and
 * what breaks the chain after them (see the module comment).
 */
function continuity(db: string, position: string, last: string | null, mark: string | null, entries: RawEntry[]): { valid: number; error?: LogBreak } {
  if (position !== '0-0' && (last === null || compareEntryIds(last, position) < 0)) {
    return { valid: 0, error: new LogRewoundError(db, position, last ?? '0-0') };
  }
  if (mark !== null && compareEntryIds(mark, successorOf(position)) > 0) return { valid: 0, error: new LogGapError(db, position, mark) };
  let at = position;
  for (let i = 0; i < entries.length; i++) {
    const prev = fieldOf(entries[i]![1], 'prev');
    // An entry without a usable prev was not written by RedisLog (it is decoded as corrupt): nothing to check.
    if (prev !== undefined && isEntryId(prev)) {
      const order = compareEntryIds(prev, at);
      if (order > 0) return { valid: i, error: new LogGapError(db, at, prev) };
      if (order < 0) return { valid: i, error: new LogRewoundError(db, at, prev) };
    }
    at = entries[i]![0];
  }
  return { valid: entries.length };
}

function isEntryId(id: string): boolean {
  try {
    parseEntryId(id);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a reader at `position` (an entry id, '0-0' before any) would miss
 * entries of a log described by `info` because they were trimmed: the check
 * the tail makes, for deciding before tailing (docs: README "Scale out").
 */
export function trimmedPast(position: string, info: LogInfo): boolean {
  return info.trimmedBelow !== undefined && compareEntryIds(info.trimmedBelow, successorOf(position)) > 0;
}

/** The id right after `id` among ids the appender can assign. */
function successorOf(id: string): string {
  const { ms, seq } = parseEntryId(id);
  return seq < BigInt(MAX_ENTRY_SEQ) ? `${ms}-${seq + 1n}` : `${ms + 1n}-0`;
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`RedisLog option "${name}" must be a positive integer, got ${String(value)}`);
  return value;
}

function checkEntryId(id: string, field: string): string {
  try {
    parseEntryId(id);
  } catch {
    throw new TypeError(`${field} must be a stream entry id "<ms>-<seq>", got ${JSON.stringify(id)}`);
  }
  return id;
}

/**
 * The Redis Streams log of a node; see the module comment for its keys,
 * connections and failure handling. Create it with {@link RedisLog.open} (or
 * the constructor, which connects in the background), and `close()` it.
 */
export class RedisLog {
  /** This node's id (stored with each entry it appends). */
  readonly nodeId: string;
  readonly #prefix: string;
  readonly #commandTimeoutMs: number;
  readonly #blockMs: number;
  readonly #tailCount: number;
  readonly #minReplicas: number;
  readonly #replicaTimeoutMs: number;
  readonly #onError: (err: Error) => void;
  readonly #cmd: Redis;
  readonly #blocker: Redis;
  readonly #wakeKey: string;
  readonly #siteIds = new Map<string, Buffer>();
  readonly #siteLookups = new Map<string, Promise<Buffer>>();
  readonly #subs = new Map<string, Sub>();
  readonly #handling = new Set<Promise<void>>();
  #wakeSeen = '0-0';
  /** Subs in the blocking read now in flight; undefined while not blocked. */
  #blockedOn: Set<Sub> | undefined;
  #wakeSent = false;
  #loop: Promise<void> | undefined;
  #sleep: Sleep | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(options: RedisLogOptions = {}) {
    this.nodeId = options.nodeId ?? randomUUID();
    if (typeof this.nodeId !== 'string' || this.nodeId.length === 0) throw new TypeError('RedisLog option "nodeId" must be a non-empty string');
    this.#prefix = options.keyPrefix ?? 'sync:';
    if (typeof this.#prefix !== 'string') throw new TypeError('RedisLog option "keyPrefix" must be a string');
    this.#commandTimeoutMs = positiveInt(options.commandTimeoutMs, 5000, 'commandTimeoutMs');
    this.#blockMs = positiveInt(options.blockMs, 5000, 'blockMs');
    this.#tailCount = positiveInt(options.tailCount, 100, 'tailCount');
    this.#minReplicas = options.minReplicas === 0 ? 0 : positiveInt(options.minReplicas, 0, 'minReplicas');
    this.#replicaTimeoutMs = positiveInt(options.replicaTimeoutMs, 1000, 'replicaTimeoutMs');
    if (this.#minReplicas > 0 && this.#replicaTimeoutMs >= this.#commandTimeoutMs) {
      throw new TypeError(`RedisLog option "replicaTimeoutMs" (${this.#replicaTimeoutMs}) must be below commandTimeoutMs (${this.#commandTimeoutMs})`);
    }
    const onError = options.onError;
    this.#onError = (err) => {
      log('redis error: %s', messageOf(err));
      try {
        onError?.(err);
      } catch (hookErr) {
        log('onError threw: %s', messageOf(hookErr));
      }
    };
    const url = options.url ?? 'redis://127.0.0.1:6379';
    const connect = (role: string, timeoutMs: number): Redis => {
      const RedisClient = (requireRedis('ioredis') as typeof import('ioredis')).Redis;
      const client = new RedisClient(url, {
        ...options.redis,
        // Keys are spelled out here (hash tags, the wake stream); ioredis's own prefix would bypass that.
        keyPrefix: undefined,
        lazyConnect: false,
        connectionName: `sync-coordinator:${this.nodeId}:${role}`,
        // RESP2 replies have the same shape on every server version.
        protocol: 2,
        // Fail fast during an outage instead of queueing: a client waits on each write.
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        autoResendUnfulfilledCommands: false,
        commandTimeout: timeoutMs,
        socketTimeout: timeoutMs,
        connectTimeout: this.#commandTimeoutMs,
        disconnectTimeout: DISCONNECT_TIMEOUT_MS,
        retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times - 1, 5), 2000),
        // A primary demoted by a failover answers READONLY: reconnect to find the new one.
        reconnectOnError: (err: Error) => /^READONLY\b/.test(err.message),
      });
      client.on('error', this.#onError);
      return client;
    };
    this.#cmd = connect('cmd', this.#commandTimeoutMs);
    this.#blocker = connect('tail', this.#blockMs + this.#commandTimeoutMs);
    this.#wakeKey = `${this.#prefix}node:${this.nodeId}:${randomUUID()}:wake`;
  }

  /** A RedisLog whose command connection is ready; rejects with STORAGE_UNAVAILABLE (and closes it) if Redis does not answer within `commandTimeoutMs`. */
  static async open(options: RedisLogOptions = {}): Promise<RedisLog> {
    const redisLog = new RedisLog(options);
    try {
      await redisLog.ready();
    } catch (err) {
      await redisLog.close();
      throw err;
    }
    return redisLog;
  }

  /** Whether the command connection is up now (a hint: the next command may still fail). */
  get connected(): boolean {
    return !this.#closed && this.#cmd.status === 'ready';
  }

  /** Resolves once the command connection is ready; STORAGE_UNAVAILABLE after `timeoutMs`. */
  async ready(timeoutMs = this.#commandTimeoutMs): Promise<void> {
    if (this.#cmd.status === 'ready') return;
    if (this.#closed) throw new SyncError(ErrorCode.StorageUnavailable, 'redis log: closed');
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.#cmd.off('ready', onReady);
        this.#cmd.off('end', onEnd);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => done();
      const onEnd = () => done(new SyncError(ErrorCode.StorageUnavailable, 'redis log: closed'));
      const timer = setTimeout(() => done(new SyncError(ErrorCode.StorageUnavailable, `redis log: Redis did not answer within ${timeoutMs} ms`)), timeoutMs);
      this.#cmd.on('ready', onReady);
      this.#cmd.on('end', onEnd);
    });
  }

  #keys(db: string): { log: string; site: string; last: string; trimmed: string; archiver: string; archived: string } {
    // Database ids never hold braces, so the hash tag is exactly the id.
    validateDatabaseId(db, 'databaseId');
    const base = `${this.#prefix}{${db}}`;
    return {
      log: `${base}:log`, site: `${base}:site`, last: `${base}:last`, trimmed: `${base}:trimmed`,
      archiver: `${base}:archiver`, archived: `${base}:archived`,
    };
  }

  #failure(op: string, db: string | undefined, err: unknown): SyncError {
    if (isSyncError(err)) return err;
    const where = db === undefined ? `redis log: ${op}` : `redis log: ${op} of ${db}`;
    const message = messageOf(err);
    const reply = (err as { name?: unknown }).name === 'ReplyError';
    if (!reply || TRANSIENT_REPLIES.test(message)) {
      return new SyncError(ErrorCode.StorageUnavailable, `${where}: Redis unavailable (${message}); try again`, { cause: err });
    }
    return new SyncError(ErrorCode.Internal, `${where} failed: ${message}`, { cause: err });
  }

  async #run<T>(op: string, db: string | undefined, command: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new SyncError(ErrorCode.StorageUnavailable, `redis log: ${op}: closed`);
    try {
      return await command();
    } catch (err) {
      throw this.#failure(op, db, err);
    }
  }

  async #script(script: Script, keys: string[], args: string[]): Promise<unknown> {
    try {
      return await this.#cmd.evalsha(script.sha, keys.length, ...keys, ...args);
    } catch (err) {
      // Redis forgets scripts when it restarts or fails over: send the source (EVAL caches it again).
      if (!/^NOSCRIPT\b/.test(messageOf(err))) throw err;
    }
    return this.#cmd.eval(script.lua, keys.length, ...keys, ...args);
  }

  /**
   * Appends one accepted message to the log of `db` and returns its entry id
   * once Redis has it (in memory and, with AOF, in its file: see the README;
   * with `minReplicas`, also on that many replicas). The id determines the
   * stamps of `entry.sets` (stamps.ts `stampsOf`). Throws TypeError for an
   * empty `sets` or a bad `site`; STORAGE_UNAVAILABLE when Redis cannot take
   * it now, or too few replicas confirmed it in time (it may still have
   * landed, and then every node applies it: resending is safe, since merging
   * the same change sets twice changes nothing).
   */
  async append(db: string, entry: AppendEntry, options: AppendOptions = {}): Promise<string> {
    if (!Array.isArray(entry.sets) || entry.sets.length === 0) throw new TypeError('append needs at least one change set in entry.sets');
    if (!isSiteId(entry.site)) throw new TypeError(`entry.site must be a 22-character base64url site id, got ${JSON.stringify(entry.site)}`);
    const after = options.after === undefined ? '' : checkEntryId(options.after, 'options.after');
    const sets = JSON.stringify(entry.sets.map((set) => set.wire));
    return this.#add('append', db, entry.sets.length, after, ['sets', sets, 'site', entry.site]);
  }

  /**
   * Appends an entry without change sets (and without stamps) whose `prev`
   * is `after`: readers must hold everything up to `after` before they go
   * on, and one that does not gets LogGapError. For a database that has
   * stamps of its own before its log starts (`after` = entryIdOf of its last
   * stamp), and to move the log above a reader that LogRewoundError stopped.
   * A reader that persists its position must persist the barrier's id too
   * (its replica's committed stamp does not move). Errors as {@link append}.
   */
  async barrier(db: string, after: string): Promise<string> {
    checkEntryId(after, 'after');
    return this.#add('barrier', db, 0, after, ['sets', '[]', 'site', '']);
  }

  async #add(op: string, db: string, count: number, after: string, fields: string[]): Promise<string> {
    const keys = this.#keys(db);
    const id = String(await this.#run(op, db, () => this.#script(APPEND, [keys.log, keys.last], [String(count), after, ...fields, 'node', this.nodeId])));
    if (this.#minReplicas > 0) {
      // WAIT covers every earlier write of this connection, so concurrent appends share the wait.
      const replicas = Number(await this.#run(op, db, () => this.#cmd.wait(this.#minReplicas, this.#replicaTimeoutMs)));
      if (replicas < this.#minReplicas) {
        throw new SyncError(ErrorCode.StorageUnavailable, `redis log: ${op} of ${db}: ${replicas} of ${this.#minReplicas} replicas confirmed entry ${id} within ${this.#replicaTimeoutMs} ms; it may be lost on failover, try again`);
      }
    }
    return id;
  }

  /**
   * The server site id of `db`, the same on every node: the first caller's
   * `proposal` (e.g. the site id of a replica that existed before the
   * cluster) or a random one, stored with SET NX. Cached per RedisLog.
   * STORAGE_UNAVAILABLE when Redis cannot answer; INTERNAL_ERROR if the
   * stored value is not a site id.
   */
  async siteIdOf(db: string, proposal?: Uint8Array): Promise<Buffer> {
    const keys = this.#keys(db);
    if (proposal !== undefined && (!(proposal instanceof Uint8Array) || proposal.length !== SITE_ID_BYTES)) {
      throw new TypeError('proposal must be a 16-byte site id');
    }
    const cached = this.#siteIds.get(db);
    if (cached) return cached;
    let lookup = this.#siteLookups.get(db);
    if (lookup === undefined) {
      lookup = this.#run('site id', db, async () => {
        await this.#cmd.set(keys.site, siteIdToWire(proposal ?? randomSiteId()), 'NX');
        const stored = await this.#cmd.get(keys.site);
        if (stored === null) throw new SyncError(ErrorCode.StorageUnavailable, `redis log: site id of ${db}: the key vanished between SET and GET; try again`);
        let siteId: Buffer;
        try {
          siteId = siteIdFromWire(stored, `${keys.site}`);
        } catch (err) {
          throw new SyncError(ErrorCode.Internal, `redis log: site id of ${db}: ${messageOf(err)}`, { cause: err });
        }
        this.#siteIds.set(db, siteId);
        return siteId;
      }).finally(() => this.#siteLookups.delete(db));
      this.#siteLookups.set(db, lookup);
    }
    return lookup;
  }

  #decode(id: string, fields: string[], siteId: Buffer): LogEntry {
    const map = new Map<string, string>();
    for (let i = 0; i + 1 < fields.length; i += 2) map.set(fields[i]!, fields[i + 1]!);
    const entry: LogEntry = { id, sets: [], stamps: [], site: map.get('site') ?? '', node: map.get('node') ?? '', prev: map.get('prev') ?? '' };
    try {
      const raw = map.get('sets');
      if (raw === undefined) throw new Error('no "sets" field');
      // Checked for drift when accepted; replaying it later must not refuse it.
      const sets = validateChangeSets(JSON.parse(raw), { now: 0, maxDriftMs: Number.POSITIVE_INFINITY }, 'sets');
      if (sets.length > 0) entry.stamps = stampsOf(id, sets.length, siteId);
      entry.sets = sets;
    } catch (err) {
      entry.corrupt = messageOf(err);
      log('entry %s is corrupt, skipped: %s', id, entry.corrupt);
    }
    return entry;
  }

  /**
   * Up to `count` entries of `db` after entry `after` ('0-0' for the start),
   * in order; [] when there are none yet. Throws LogGapError
   * (SNAPSHOT_REQUIRED) or LogRewoundError (INTERNAL_ERROR) when the log
   * does not continue from `after` (see the module comment), and
   * STORAGE_UNAVAILABLE when Redis cannot answer. `siteId` defaults to
   * {@link siteIdOf}.
   */
  async read(db: string, after: string, options: { count?: number; siteId?: Buffer } = {}): Promise<LogEntry[]> {
    const keys = this.#keys(db);
    checkEntryId(after, 'after');
    const count = positiveInt(options.count, 100, 'count');
    const siteId = options.siteId ?? await this.siteIdOf(db);
    const [range, last, mark] = await this.#run('read', db, async () => {
      // One transaction, so the last id and the trim mark describe the very state the range was read from.
      const replies = await this.#cmd.multi().xrange(keys.log, successorOf(after), '+', 'COUNT', count).get(keys.last).get(keys.trimmed).exec();
      if (replies === null) throw new Error('transaction aborted');
      for (const [err] of replies) if (err) throw err;
      return [replies[0]![1] as RawEntry[], replies[1]![1] as string | null, replies[2]![1] as string | null] as const;
    });
    const { valid, error } = continuity(db, after, last, mark, range);
    if (error && valid === 0) throw error;
    return range.slice(0, valid).map(([id, fields]) => this.#decode(id, fields, siteId));
  }

  /** Id of the oldest entry the stream of `db` keeps, or undefined when it is empty. */
  async firstId(db: string): Promise<string | undefined> {
    const keys = this.#keys(db);
    const range = await this.#run('first id', db, () => this.#cmd.xrange(keys.log, '-', '+', 'COUNT', 1));
    return range[0]?.[0];
  }

  /** Length and positions of the stream of `db` (for lag metrics and catch-up decisions). */
  async info(db: string): Promise<LogInfo> {
    const keys = this.#keys(db);
    const replies = await this.#run('info', db, async () => {
      const out = await this.#cmd.multi().xlen(keys.log).xrange(keys.log, '-', '+', 'COUNT', 1).get(keys.last).get(keys.trimmed).exec();
      if (out === null) throw new Error('transaction aborted');
      for (const [err] of out) if (err) throw err;
      return out.map(([, value]) => value);
    });
    const first = (replies[1] as [string, string[]][])[0]?.[0];
    const info: LogInfo = { length: Number(replies[0]) };
    if (first !== undefined) info.firstId = first;
    if (replies[2] !== null) info.lastId = replies[2] as string;
    if (replies[3] !== null) info.trimmedBelow = replies[3] as string;
    return info;
  }

  /**
   * Removes the entries of `db` whose id is below `minId` (XTRIM MINID) and
   * records `minId` so that readers behind it learn that they missed
   * entries. Pass `entryIdAfter(stamp)` to drop exactly what `stamp` covers.
   * `approximate` lets Redis keep a few more for speed. Returns how many
   * entries went.
   */
  async trim(db: string, minId: string, options: { approximate?: boolean } = {}): Promise<number> {
    const keys = this.#keys(db);
    checkEntryId(minId, 'minId');
    return Number(await this.#run('trim', db, () => this.#script(TRIM, [keys.log, keys.trimmed], [minId, options.approximate ? '~' : ''])));
  }

  /**
   * Takes or renews the lease of `db`'s archiver for `ttlMs` (Redis-side
   * expiry, so a node that dies loses it): resolves true when this node
   * (`nodeId` of the options) holds it now. One node archives a database at
   * a time; two for a moment (a lease that expired under a slow node) is
   * harmless, since restores take overlapping batches.
   */
  async claimArchiver(db: string, ttlMs: number): Promise<boolean> {
    const keys = this.#keys(db);
    return Number(await this.#run('claim archiver', db, () => this.#script(CLAIM, [keys.archiver], [this.nodeId, String(Math.max(1, Math.round(ttlMs)))]))) === 1;
  }

  /** Gives up the archiver lease of `db` if this node holds it. */
  async releaseArchiver(db: string): Promise<void> {
    const keys = this.#keys(db);
    await this.#run('release archiver', db, () => this.#script(RELEASE, [keys.archiver], [this.nodeId]));
  }

  /** Records that the archive holds `db` up to `stamp` (it only ever moves up), for the nodes that do not archive it. */
  async raiseArchived(db: string, stamp: Uint8Array): Promise<void> {
    const keys = this.#keys(db);
    await this.#run('raise archived', db, () => this.#script(RAISE, [keys.archived], [Buffer.from(stamp).toString('hex')]));
  }

  /** The last stamp of `db` its archiver recorded with {@link raiseArchived}, if any. */
  async archivedOf(db: string): Promise<Buffer | undefined> {
    const keys = this.#keys(db);
    const hex = await this.#run('archived', db, () => this.#cmd.get(keys.archived));
    return typeof hex === 'string' && /^([0-9a-f]{2})+$/.test(hex) ? Buffer.from(hex, 'hex') : undefined;
  }

  /**
   * Delivers every entry of `db` after entry `after` to `handler`, in order,
   * now and as they are appended, until stopped or closed (see
   * {@link TailHandler} for batching, retries and trimming). `siteId` is the
   * database's server site id (from {@link siteIdOf}), used for the stamps.
   * `after` is where the reader's replica is (entryIdOf its committed stamp,
   * or the last barrier it handled); a replica with stamps of its own whose
   * log does not reach them yet needs a {@link barrier} first, or the tail
   * reports LogRewoundError. One tail per database per RedisLog (TypeError
   * otherwise). Needs no
   * answer from Redis to start: while Redis is down the tail waits and
   * retries, reporting errors to `onError`.
   */
  tail(db: string, after: string, siteId: Uint8Array, handler: TailHandler): Tail {
    const keys = this.#keys(db);
    checkEntryId(after, 'after');
    if (!(siteId instanceof Uint8Array) || siteId.length !== SITE_ID_BYTES) throw new TypeError('siteId must be the 16-byte server site id of the database');
    if (typeof handler?.onEntries !== 'function') throw new TypeError('handler.onEntries must be a function');
    if (this.#closed) throw new TypeError('the redis log is closed');
    if (this.#subs.has(db)) throw new TypeError(`${db} is already tailed by this redis log; stop that tail first`);
    const sub: Sub = {
      db, key: keys.log, trimKey: keys.trimmed, lastKey: keys.last, siteId: Buffer.from(siteId), handler,
      position: after, busy: false, stopped: false, failures: 0,
    };
    this.#subs.set(db, sub);
    this.#ready(sub);
    this.#startTail();
    const subs = this.#subs;
    return {
      db,
      get position() { return sub.position; },
      stop() {
        if (sub.stopped) return;
        sub.stopped = true;
        clearTimeout(sub.retry);
        if (subs.get(db) === sub) subs.delete(db);
      },
    };
  }

  /** `sub` can be read again: wake the blocking read if it does not cover it. */
  #ready(sub: Sub): void {
    if (this.#blockedOn === undefined || this.#blockedOn.has(sub) || this.#wakeSent) return;
    this.#wakeSent = true;
    this.#cmd.multi().xadd(this.#wakeKey, 'MAXLEN', '1', '*', 'w', '1').pexpire(this.#wakeKey, 3_600_000).exec()
      // The blocking read ends by itself after blockMs anyway.
      .catch((err: Error) => this.#onError(err));
  }

  #startTail(): void {
    if (this.#loop !== undefined || this.#closed) return;
    this.#loop = this.#runTail().finally(() => {
      this.#loop = undefined;
      // A tail added while the loop was on its way out.
      if (this.#subs.size > 0) this.#startTail();
    });
  }

  async #runTail(): Promise<void> {
    let failures = 0;
    while (!this.#closed && this.#subs.size > 0) {
      try {
        const free = [...this.#subs.values()].filter((sub) => !sub.busy);
        if (free.length > 0 && await this.#readBatch(free)) {
          failures = 0;
          continue;
        }
        await this.#block();
        failures = 0;
      } catch (err) {
        this.#blockedOn = undefined;
        if (this.#closed) break;
        this.#onError(err instanceof Error ? err : new Error(String(err)));
        failures++;
        await this.#pause(Math.min(100 * 2 ** Math.min(failures - 1, 5), 2000));
      }
    }
  }

  /** Reads what is new for `free` (with last ids and trim marks, atomically) and hands it out. True if anything happened. */
  async #readBatch(free: Sub[]): Promise<boolean> {
    const replies = await this.#blocker.multi()
      .xread('COUNT', this.#tailCount, 'STREAMS', ...free.map((sub) => sub.key), ...free.map((sub) => sub.position))
      .mget(...free.flatMap((sub) => [sub.lastKey, sub.trimKey]))
      .exec();
    if (replies === null) throw new Error('transaction aborted');
    for (const [err] of replies) if (err) throw err;
    const streams = replies[0]![1] as StreamReply;
    const states = replies[1]![1] as (string | null)[];
    let progressed = false;
    const byKey = new Map(streams?.map(([key, entries]) => [key, entries]));
    free.forEach((sub, i) => {
      if (sub.stopped) return;
      const entries = byKey.get(sub.key) ?? [];
      const { valid, error } = continuity(sub.db, sub.position, states[2 * i] ?? null, states[2 * i + 1] ?? null, entries);
      if (valid > 0) {
        progressed = true;
        // A break after them is found again, at the front, by the next read.
        this.#deliver(sub, entries.slice(0, valid).map(([id, fields]) => this.#decode(id, fields, sub.siteId)));
      } else if (error) {
        progressed = true;
        this.#broken(sub, error);
      }
    });
    return progressed;
  }

  #broken(sub: Sub, error: LogBreak): void {
    sub.stopped = true;
    if (this.#subs.get(sub.db) === sub) this.#subs.delete(sub.db);
    log('%s', error.message);
    if (sub.handler.onBroken) {
      try {
        sub.handler.onBroken(error);
      } catch (err) {
        this.#onError(err instanceof Error ? err : new Error(String(err)));
      }
    } else {
      this.#onError(error);
    }
  }

  #deliver(sub: Sub, entries: LogEntry[]): void {
    sub.busy = true;
    const handling = (async () => {
      try {
        await sub.handler.onEntries(entries);
        sub.failures = 0;
        sub.position = entries[entries.length - 1]!.id;
        sub.busy = false;
        if (!sub.stopped) this.#ready(sub);
      } catch (err) {
        this.#onError(err instanceof Error ? err : new Error(String(err)));
        if (sub.stopped || this.#closed) return;
        // The same batch again, later: the handler may recover (e.g. a store that reopens).
        const delay = Math.min(1000 * 2 ** Math.min(sub.failures++, 5), 30_000);
        sub.retry = setTimeout(() => {
          sub.retry = undefined;
          sub.busy = false;
          if (!sub.stopped) this.#ready(sub);
        }, delay);
      }
    })();
    this.#handling.add(handling);
    void handling.finally(() => this.#handling.delete(handling));
  }

  /** Waits until something is new for a free database, the wake stream moves, or blockMs passes. */
  async #block(): Promise<void> {
    // Marking the read and choosing its streams happen in one turn, so #ready sees either this read or the next choice.
    const free = [...this.#subs.values()].filter((sub) => !sub.busy);
    this.#blockedOn = new Set(free);
    this.#wakeSent = false;
    try {
      const reply = await this.#blocker.xread(
        'COUNT', 1, 'BLOCK', this.#blockMs, 'STREAMS',
        this.#wakeKey, ...free.map((sub) => sub.key), this.#wakeSeen, ...free.map((sub) => sub.position),
      ) as StreamReply;
      const wake = reply?.find(([key]) => key === this.#wakeKey)?.[1];
      if (wake !== undefined && wake.length > 0) this.#wakeSeen = wake[wake.length - 1]![0];
    } finally {
      this.#blockedOn = undefined;
    }
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#sleep = undefined;
        resolve();
      }, ms);
      this.#sleep = { timer, resolve };
    });
  }

  /**
   * Stops every tail, waits for batches being handled, and closes both
   * connections. Idempotent. Commands still in flight fail with
   * STORAGE_UNAVAILABLE.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    for (const sub of this.#subs.values()) {
      sub.stopped = true;
      clearTimeout(sub.retry);
    }
    this.#subs.clear();
    if (this.#sleep) {
      clearTimeout(this.#sleep.timer);
      this.#sleep.resolve();
      this.#sleep = undefined;
    }
    // Ends a blocking read in flight: its promise rejects and the loop sees #closed.
    const blockerEnded = ended(this.#blocker);
    this.#blocker.disconnect();
    await this.#loop;
    while (this.#handling.size > 0) await Promise.allSettled([...this.#handling]);
    if (this.#cmd.status === 'ready') {
      try {
        await this.#cmd.del(this.#wakeKey);
        await this.#cmd.quit();
      } catch (err) {
        log('close: %s', messageOf(err));
      }
    }
    const cmdEnded = ended(this.#cmd);
    this.#cmd.disconnect();
    await Promise.all([blockerEnded, cmdEnded]);
  }

  /**
   * A further connection to this log's Redis, with the same URL and failure
   * options (no offline queue, no resend, `commandTimeoutMs`) and its errors
   * going to `onError`, plus the key prefix: for a module that keeps keys of
   * its own there (lib/cluster/shared-limits.ts), whose commands must not
   * wait behind appends. The caller ends it with {@link closeConnection}.
   */
  connection(role: string): { redis: Redis; keyPrefix: string } {
    const redis = this.#cmd.duplicate({ connectionName: `sync-coordinator:${this.nodeId}:${role}` });
    redis.on('error', this.#onError);
    return { redis, keyPrefix: this.#prefix };
  }

  /** Ends a connection from {@link connection}: QUIT when it is up, then waits until its socket is gone. */
  static async closeConnection(redis: Redis): Promise<void> {
    if (redis.status === 'ready') {
      try {
        await redis.quit();
      } catch (err) {
        log('close: %s', messageOf(err));
      }
    }
    const done = ended(redis);
    redis.disconnect();
    await done;
  }
}
