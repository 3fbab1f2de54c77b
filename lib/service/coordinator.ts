import type { IncomingHttpHeaders } from 'node:http';
import { SyncError, ErrorCode, CloseCode, isSyncError, messageOf } from '../errors.js';
import type { Config } from '../config/options.js';
import type { Metrics } from '../metrics/metrics.js';
import { Hub, type Subscriber } from '../hub/hub.js';
import { logs } from '../log.js';
import { validateChangeSets, validateCursor, type ValidChangeSet } from '../protocol/validate.js';
import { siteIdFromWire } from '../protocol/site-id.js';
import type { ApplyResult, ChangeSet } from '../protocol/messages.js';
import type { ApplyOutcome, Replica } from '../replica/replica.js';
import type { ChangesPage, FloorSeen } from '../replica/change-log.js';
import { validateDatabaseId } from '../storage/database-id.js';
import { ReplicaPool, type Lease } from '../storage/replica-pool.js';
import type { LogReader } from '../delivery/ports.js';
import { largestHlc, smallestFactHlc } from '../delivery/backlog.js';
import type { AuthenticateContext, ClientInfo, Identity, Operation } from '../config/hooks.js';
import type { Limits } from './limits.js';
import { TokenList } from './tokens.js';

const log = logs.service;
const authLog = logs.auth;

/** Who is asking, once authenticated. */
export interface Caller {
  databaseId: string;
  /** base64url site id. */
  siteId: string;
  identity: Identity;
}

/**
 * Where the coordinator's replicas come from: the router gives LevelDB
 * stores under `dataDir`; durability wraps them to restore databases from an
 * archive and to archive what they accept.
 */
export interface ReplicaSource {
  /**
   * Opens (creating or restoring if needed) the replica of a database id.
   * `siteId`, when given, is the server site id it must have (a cluster's).
   */
  open(databaseId: string, options?: { siteId?: Uint8Array }): Promise<Replica>;
  /** Closes a replica `open` gave (the pool calls it when it evicts or shuts down). */
  close(databaseId: string, replica: Replica): Promise<void>;
  /**
   * Whether this process has a copy of the database on its own disk (one
   * `open` would use without a restore). A cluster node opens such a copy
   * while Redis is down. Absent: never assumed.
   */
  hasLocalCopy?(databaseId: string): Promise<boolean>;
  /** The sections `/status` shows of it, by name (`archive`, `cluster`), if any. */
  statusSections?(): { archive?: object; cluster?: object };
  /**
   * With an archive: the last stamp of an open database the archive holds
   * (undefined when none yet, or when the database is not open here). A
   * source without this method has no archive.
   */
  archivedStamp?(databaseId: string): Buffer | undefined;
  /**
   * With an archive: removes a closed database's local copy, so that the next
   * `open` restores it from the archive (a cluster node whose copy is older
   * than the shared log). Rejects when the database is open.
   */
  discard?(databaseId: string): Promise<void>;
  /** With an archive: waits until an open database's commits are all archived; false after `timeoutMs`. */
  flush?(databaseId: string, timeoutMs?: number): Promise<boolean>;
  /** With an archive: this process now archives an open database (a cluster's lease): it should catch up. */
  wakeArchive?(databaseId: string): void;
  /** With an archive: another node archived an open database up to `stamp`. */
  archivedElsewhere?(databaseId: string, stamp: Buffer): Promise<void>;
}

/**
 * How an accepted message becomes part of its database: on one node, the
 * replica merges it under a fresh stamp and the change sets are pushed; in a
 * cluster, it goes through the shared log first (lib/cluster). Either way
 * `commit` starts at once (messages of one client commit in the order it
 * sent them), resolves once this node's replica holds the message, and the
 * write path pushes what it accepted to the database's other subscribers.
 */
export interface WritePath {
  commit(databaseId: string, replica: Replica, origin: string, sets: ValidChangeSet[]): Promise<ApplyOutcome>;
  /**
   * Whether a commit to `databaseId` could be taken now (a cluster: Redis is
   * connected). A hint for retrying refused writes, not a promise. Absent:
   * always true.
   */
  writable?(databaseId: string): boolean;
}

/** The single-node write path: merge, stamp locally, push. */
export function localWrites(hub: Hub): WritePath {
  return {
    async commit(databaseId, replica, origin, sets) {
      const outcome = await replica.apply(sets);
      hub.publishSoon(databaseId, origin, outcome);
      return outcome;
    },
  };
}

/** What a coordinator is built from (the router builds it). */
export interface CoordinatorParts {
  /** Where replicas come from (LevelDB under dataDir; durability; a cluster). */
  replicas: ReplicaSource;
  /** Counts refusals by maxChangesPerMessage. */
  limits?: Limits;
  /** Subscribers and fan-out. @default a new Hub */
  hub?: Hub;
  /** How accepted messages are committed. @default localWrites(hub) */
  writes?: WritePath;
}

/** A WebSocket handshake's claims (docs/protocol.md §4), not yet checked. */
export interface ConnectRequest {
  databaseId: unknown;
  siteId: unknown;
  token: unknown;
  connectionId: string;
  remoteAddress?: string;
  headers: IncomingHttpHeaders;
}

/** An accepted WebSocket client: who it is and its database, open until `lease.release()`. */
export interface Connection {
  caller: Caller;
  lease: Lease<Replica>;
  /** The database's server site id (base64url). */
  serverSiteId: string;
}

/** What `submitChanges` found in a message before applying it. */
export interface SubmittedChanges {
  /** The commit, the pushes and `onAfterApplyChanges`; resolves with the ApplyResult. */
  done: Promise<ApplyResult>;
  /** Changes plus migrations in the message as the client sent it. */
  changeCount: number;
  /** The largest change-set HLC of the message (the client's own, not a stamp). */
  lastHlc?: Buffer;
  /**
   * The smallest HLC anywhere in the message as the client sent it (of a
   * change set, a change or a migration; see smallestFactHlc): what pulls it
   * again after a refusal.
   */
  firstHlc?: Buffer;
}

/** A caller's reader of its database's change log (the delivery stream's log port). */
export interface ChangeFeed extends LogReader {
  read(cursor: Buffer | undefined, maxBytes?: number, floorSeen?: FloorSeen): Promise<ChangesPage>;
}

/**
 * A change feed as a small object with `read` on its prototype: every
 * WebSocket session holds one for its whole life, so it keeps only the
 * coordinator and the caller (the site id is decoded per read).
 */
class CallerFeed implements ChangeFeed {
  private readonly coordinator: Coordinator;
  private readonly caller: Caller;

  constructor(coordinator: Coordinator, caller: Caller) {
    this.coordinator = coordinator;
    this.caller = caller;
  }

  read(cursor: Buffer | undefined, maxBytes?: number, floorSeen?: FloorSeen): Promise<ChangesPage> {
    return this.coordinator.readChanges(this.caller, cursor, maxBytes, floorSeen);
  }
}

/** Most bytes of change sets in one page of the log (a page holds at least one whole transaction). */
const PAGE_BYTES = 4 * 1024 * 1024;

/** Status figures for `/status`. */
export interface CoordinatorStatus {
  uptime: number;
  openStores: number;
  connectedClients: number;
  /** The durable archive's state, when one is configured. */
  archive?: object;
  /** This node's id and lag, in a cluster. */
  cluster?: object;
}

/**
 * The use cases shared by HTTP and WebSocket: authenticate, authorize, run
 * the validation hooks, apply, read changes and snapshots. Knows nothing of
 * Express or sockets.
 */
export class Coordinator {
  readonly config: Config;
  readonly metrics: Metrics;
  readonly hub: Hub;
  readonly pool: ReplicaPool<Replica>;
  private readonly startedAt: number;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly streams = new Set<Promise<unknown>>();
  private readonly tokens: TokenList;
  private readonly replicas: ReplicaSource;
  private readonly writes: WritePath;
  private sweepTimer?: NodeJS.Timeout;
  private closing?: Promise<void>;
  private readonly limits?: Limits;

  /**
   * `replicas` opens and closes the databases' replicas (see
   * ReplicaSource). `limits`, when given, counts refusals by
   * maxChangesPerMessage.
   */
  constructor(config: Config, metrics: Metrics, parts: CoordinatorParts) {
    const { replicas, limits, hub = new Hub(metrics), writes = localWrites(hub) } = parts;
    this.config = config;
    this.metrics = metrics;
    this.limits = limits;
    this.hub = hub;
    this.writes = writes;
    this.startedAt = Date.now();
    this.tokens = new TokenList(config.authTokens);
    this.pool = new ReplicaPool<Replica>({
      maxOpen: config.maxOpenStores,
      idleMs: config.storeIdleMs,
      open: async (id) => {
        const replica = await replicas.open(id);
        metrics.storeOpensTotal.inc();
        return replica;
      },
      close: async (replica, id) => {
        try {
          await replicas.close(id, replica);
        } finally {
          metrics.storeClosesTotal.inc();
        }
      },
    });
    this.replicas = replicas;
    if (config.sweepIntervalMs > 0) {
      this.sweepTimer = setInterval(() => void this.sweepOpen(), config.sweepIntervalMs);
      this.sweepTimer.unref();
    }
  }

  /** Whether shutdown has begun. */
  get isClosing(): boolean {
    return this.closing !== undefined;
  }

  /**
   * Checks the database id, the site id and the credentials, then asks
   * `onAuthenticate`. Every failure is AUTH_FAILED except a malformed
   * database id on HTTP (INVALID_DATABASE_ID), as callers map them.
   */
  async authenticate(ctx: AuthenticateContext): Promise<Identity> {
    this.metrics.authAttemptsTotal.inc();
    try {
      if (this.config.authMode === 'token-whitelist') {
        if (typeof ctx.token !== 'string' || ctx.token.length === 0) {
          throw new SyncError(ErrorCode.AuthFailed, 'token: required (Authorization: Bearer <token>, or "token" in the handshake)');
        }
        if (!this.tokens.accepts(ctx.token)) throw new SyncError(ErrorCode.AuthFailed, 'token: not accepted');
      }
      const hook = this.config.hooks.onAuthenticate;
      if (!hook) return { databaseId: ctx.databaseId, siteId: ctx.siteId };
      let identity: Identity;
      try {
        identity = await hook(ctx);
      } catch (err) {
        throw new SyncError(ErrorCode.AuthFailed, messageOf(err));
      }
      if (identity === undefined || identity === null || identity === false) {
        throw new SyncError(ErrorCode.AuthFailed, 'refused by onAuthenticate');
      }
      return identity;
    } catch (err) {
      this.metrics.authFailuresTotal.inc();
      authLog('authentication failed for %s on %s: %s', ctx.siteId, ctx.databaseId, messageOf(err));
      throw err;
    }
  }

  /** Asks `onAuthorize`; FORBIDDEN when it says no or throws. */
  async authorize(caller: Caller, action: Operation['action']): Promise<void> {
    const hook = this.config.hooks.onAuthorize;
    if (!hook) return;
    let allowed: boolean;
    try {
      allowed = await hook(caller.identity, { action, databaseId: caller.databaseId, siteId: caller.siteId });
    } catch (err) {
      throw new SyncError(ErrorCode.Forbidden, messageOf(err));
    }
    if (allowed !== true) throw new SyncError(ErrorCode.Forbidden, `${action} on ${caller.databaseId} is not allowed for this client`);
  }

  /** Tracks an operation so that shutdown can wait for it. */
  private track<T>(work: () => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(new SyncError(ErrorCode.ShuttingDown, 'the coordinator is shutting down'));
    const run = work();
    this.inflight.add(run);
    const done = (): void => { this.inflight.delete(run); };
    run.then(done, done);
    return run;
  }

  /**
   * Accepts a WebSocket client (docs/protocol.md §4): checks the database id and
   * site id, authenticates, authorizes `connect`, opens the database and asks
   * `onClientConnect`. Refusals are SyncErrors marked fatal, so the client
   * stops retrying: AUTH_FAILED (bad credentials, malformed ids) or FORBIDDEN.
   * A server-side fault (a store that cannot open: descriptors, a lock, a
   * full disk) is a transient INTERNAL_ERROR without its details, never a
   * refusal; SHUTTING_DOWN passes through.
   */
  async connect(request: ConnectRequest): Promise<Connection> {
    let caller: Caller;
    try {
      const databaseId = validateDatabaseId(request.databaseId);
      siteIdFromWire(request.siteId, 'siteId');
      const siteId = request.siteId as string;
      const { token } = request;
      if (token !== undefined && typeof token !== 'string') throw new SyncError(ErrorCode.AuthFailed, 'token: expected a string');
      const identity = await this.authenticate({
        databaseId, siteId, token, transport: 'websocket', remoteAddress: request.remoteAddress, headers: request.headers,
      });
      caller = { databaseId, siteId, identity };
      await this.authorize(caller, 'connect');
    } catch (err) {
      throw refusal(err);
    }
    let lease: Lease<Replica>;
    try {
      lease = await this.openDatabase(caller.databaseId);
    } catch (err) {
      if (isSyncError(err) && (err.code === ErrorCode.ShuttingDown || err.code === ErrorCode.StorageUnavailable)) throw err;
      log('cannot open %s for a client: %s', caller.databaseId, messageOf(err));
      throw new SyncError(ErrorCode.Internal, `the server could not open database ${caller.databaseId}; try again later`, { cause: err });
    }
    try {
      const hook = this.config.hooks.onClientConnect;
      if (hook) {
        const client: ClientInfo = { databaseId: caller.databaseId, siteId: caller.siteId, connectionId: request.connectionId, remoteAddress: request.remoteAddress };
        let allowed: boolean | void;
        try {
          allowed = await hook(caller.identity, client);
        } catch (err) {
          throw new SyncError(ErrorCode.Forbidden, messageOf(err), { fatal: true });
        }
        if (allowed === false) throw new SyncError(ErrorCode.Forbidden, 'connection refused by onClientConnect', { fatal: true });
      }
    } catch (err) {
      lease.release();
      throw err;
    }
    return { caller, lease, serverSiteId: lease.resource.siteIdWire };
  }

  /** Opens (or finds) a database's replica for the length of a session. */
  openDatabase(databaseId: string) {
    validateDatabaseId(databaseId);
    return this.track(() => this.pool.acquire(databaseId));
  }

  /**
   * Validates `changes` in full, runs `onBeforeApplyChanges`, applies what is
   * approved as one atomic write, pushes the accepted change sets to the
   * database's other sites and runs `onAfterApplyChanges`.
   */
  async applyChanges(caller: Caller, changes: unknown): Promise<ApplyResult> {
    return (await this.submitChanges(caller, changes)).done;
  }

  /**
   * The first half of `applyChanges`: resolves once the message is validated,
   * approved and queued at its replica, with `done` for the rest (the commit,
   * the pushes and `onAfterApplyChanges`). Messages submitted one after
   * another are applied in that order, and those queued while a write is in
   * flight are committed together, so a client with several messages in
   * flight gets group commit.
   */
  submitChanges(caller: Caller, changes: unknown): Promise<SubmittedChanges> {
    return this.track(async () => {
      const timer = this.metrics.applyChangesDuration.startTimer();
      let sets: ValidChangeSet[];
      try {
        this.checkMessageSize(changes);
        sets = validateChangeSets(changes, { now: this.config.now(), maxDriftMs: this.config.maxDriftMs });
      } catch (err) {
        this.metrics.changesRejectedTotal.inc(countFacts(changes, 0));
        throw err;
      }
      const received = factsIn(sets);
      const lastHlc = largestHlc(sets.map((set) => set.hlc));
      const firstHlc = smallestFactHlc(sets);
      this.metrics.changesReceivedTotal.inc(received);
      let rejected: ApplyResult['rejected'];
      const hook = this.config.hooks.onBeforeApplyChanges;
      if (hook) {
        const ctx = { databaseId: caller.databaseId, siteId: caller.siteId };
        let decision;
        try {
          decision = await hook(caller.identity, sets.map((s) => s.wire), ctx);
        } catch (err) {
          this.metrics.changesRejectedTotal.inc(received);
          throw new SyncError(ErrorCode.Forbidden, messageOf(err));
        }
        if (!decision || !Array.isArray(decision.approved)) {
          throw new SyncError(ErrorCode.ApplyChangesError, 'onBeforeApplyChanges must return { approved: ChangeSet[], rejected?: [] }');
        }
        try {
          sets = validateChangeSets(decision.approved, { now: this.config.now(), maxDriftMs: this.config.maxDriftMs }, 'approved');
        } catch (err) {
          throw new SyncError(ErrorCode.ApplyChangesError, `onBeforeApplyChanges returned an invalid change set: ${messageOf(err)}`);
        }
        if (decision.rejected && decision.rejected.length > 0) {
          rejected = decision.rejected.map((r) => ({
            reason: String(r.reason),
            ...(r.code !== undefined ? { code: String(r.code) } : {}),
            ...(r.table !== undefined ? { table: String(r.table) } : {}),
            ...(r.column !== undefined ? { column: String(r.column) } : {}),
          }));
          const kept = factsIn(sets);
          this.metrics.changesRejectedTotal.inc(Math.max(received - kept, rejected.length));
        }
      }
      const lease = await this.pool.acquire(caller.databaseId);
      let applying: Promise<ApplyOutcome>;
      try {
        // Started at once, so one client's messages commit in the order it sent them.
        applying = this.writes.commit(caller.databaseId, lease.resource, caller.siteId, sets);
      } catch (err) {
        lease.release();
        throw err;
      }
      const done = (async (): Promise<ApplyResult> => {
        let outcome;
        try {
          outcome = await applying;
        } finally {
          lease.release();
        }
        this.metrics.changesAppliedTotal.inc(outcome.applied);
        this.metrics.changeBatchSize.observe(received);
        timer();
        const result: ApplyResult = {
          applied: outcome.applied, skipped: outcome.skipped, conflicts: outcome.conflicts, transactions: outcome.transactions,
          ...(rejected ? { rejected } : {}),
        };
        const after = this.config.hooks.onAfterApplyChanges;
        if (after) {
          try {
            await after(caller.identity, result, outcome.accepted, { databaseId: caller.databaseId, siteId: caller.siteId });
          } catch (err) {
            log('onAfterApplyChanges failed: %s', messageOf(err));
          }
        }
        return result;
      })();
      // Shutdown waits for the commit and its reply, not only the submission.
      this.inflight.add(done);
      const settle = (): void => { this.inflight.delete(done); };
      done.then(settle, settle);
      return { done, changeCount: received, ...(lastHlc ? { lastHlc } : {}), ...(firstHlc ? { firstHlc } : {}) };
    });
  }

  /**
   * Refuses a message with more than maxChangesPerMessage changes and
   * migrations before it is validated: validation and the merge build
   * objects per change, so the count bounds the memory one message takes.
   */
  private checkMessageSize(changes: unknown): void {
    const max = this.config.maxChangesPerMessage;
    // An empty change set still costs work, so it counts as one.
    const n = countFacts(changes, 1);
    if (n > max) {
      this.limits?.refused('changes_per_message');
      throw new SyncError(ErrorCode.PayloadTooLarge, `changes: ${n} changes and migrations in one message, more than the limit of ${max} (maxChangesPerMessage); send them in several messages`);
    }
  }

  /**
   * Closes a database's open replica as soon as nothing uses it, so that the
   * next open starts over (a cluster node whose copy fell behind its log):
   * its sockets are closed with 1013 (try again later) and reconnect to the
   * fresh open; new requests wait for it.
   */
  retire(databaseId: string, reason: string): void {
    log('retiring %s: %s', databaseId, reason);
    this.pool.retire(databaseId);
    this.hub.closeAll(databaseId, CloseCode.TryAgainLater, 'Database reopening; reconnect');
  }

  /** Whether a write to `databaseId` could be taken now (WritePath.writable; true on one node). */
  writable(databaseId: string): boolean {
    return this.writes.writable?.(databaseId) ?? true;
  }

  /** One page of changes after `sinceHLC` (validated here) for the caller's site (HTTP). */
  getChanges(caller: Caller, sinceHLC: unknown): Promise<ChangesPage> {
    const cursor = validateCursor(sinceHLC);
    return this.changeFeed(caller).read(cursor);
  }

  /**
   * The caller's view of its database's change log: pages of whole
   * transactions after a stamp, never the caller's own (docs/protocol.md §5).
   * SNAPSHOT_REQUIRED for a cursor older than the retention horizon.
   */
  changeFeed(caller: Caller): ChangeFeed {
    return new CallerFeed(this, caller);
  }

  /**
   * The page of the caller's change log after `cursor` (a stamp; undefined:
   * from the beginning), of at most `maxBytes` of change sets when given
   * (see `ChangeFeed.read`): the read behind every change feed.
   * SNAPSHOT_REQUIRED for a cursor older than the retention horizon, unless
   * `floorSeen` lets the read go on (see FloorSeen).
   * @internal use `changeFeed(caller).read()`.
   */
  readChanges(caller: Caller, cursor: Buffer | undefined, maxBytes?: number, floorSeen?: FloorSeen): Promise<ChangesPage> {
    return this.track(async () => {
      const timer = this.metrics.getChangesDuration.startTimer();
      const { batchSize, maxMessageBytes } = this.config;
      const pageBytes = Math.min(PAGE_BYTES, maxMessageBytes / 2);
      const budget = maxBytes === undefined ? pageBytes : Math.min(pageBytes, maxBytes);
      const site = siteIdFromWire(caller.siteId);
      const page = await this.pool.use(caller.databaseId, (replica) => replica.changesSince(cursor, site, batchSize, budget, floorSeen));
      timer();
      return page;
    });
  }

  /**
   * Subscribes a session to its database's pushes and returns the stamp it
   * is live from: the last committed one. Both happen at once, so every
   * later commit reaches the subscriber (docs/protocol.md §9).
   */
  subscribe(subscriber: Subscriber, connection: Connection): Buffer | undefined {
    this.hub.join(subscriber);
    return connection.lease.resource.committedStamp;
  }

  /**
   * A snapshot stream (JSON chunk texts). The database stays open until the
   * stream ends or is abandoned (`return()`); a bad checkpoint rejects on the
   * first `next()`, before anything is sent.
   */
  async *snapshot(caller: Caller, checkpoint?: unknown): AsyncGenerator<string, void, undefined> {
    this.metrics.snapshotRequestsTotal.inc();
    const lease = await this.openDatabase(caller.databaseId);
    let finish!: () => void;
    const done = new Promise<void>((resolve) => { finish = resolve; });
    this.streams.add(done);
    try {
      for await (const chunk of lease.resource.snapshot(checkpoint === undefined ? {} : { checkpoint })) {
        this.metrics.snapshotChunksTotal.inc();
        yield chunk;
      }
    } finally {
      lease.release();
      this.streams.delete(done);
      finish();
    }
  }

  /** Sweeps retention on every open database. */
  async sweepOpen(): Promise<void> {
    for (const id of this.pool.openIds()) {
      try {
        const result = await this.pool.use(id, (replica) => replica.sweep());
        if (result.swept > 0) log('swept %d tombstones from %s', result.swept, id);
      } catch (err) {
        log('sweep of %s failed: %s', id, messageOf(err));
      }
    }
  }

  status(): CoordinatorStatus {
    return {
      uptime: (Date.now() - this.startedAt) / 1000,
      openStores: this.pool.size,
      connectedClients: this.hub.size,
      ...this.replicas.statusSections?.(),
    };
  }

  /**
   * Refuses new work, waits for in-flight applies and reads (so they are
   * answered), runs `afterDrain` (the transports close their sockets there,
   * which ends snapshot streams), then closes every store.
   */
  close(afterDrain?: () => Promise<void>): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        if (this.sweepTimer) clearInterval(this.sweepTimer);
        while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
        if (afterDrain) await afterDrain();
        while (this.streams.size > 0) await Promise.allSettled([...this.streams]);
        await this.pool.close();
      })();
    }
    return this.closing;
  }
}

/**
 * A handshake refusal, fatal so the client stops retrying (docs/protocol.md §8):
 * FORBIDDEN stays, malformed ids and anything the authentication hooks
 * threw are AUTH_FAILED, SHUTTING_DOWN passes through.
 */
function refusal(err: unknown): SyncError {
  if (isSyncError(err) && err.code === ErrorCode.ShuttingDown) return err;
  const code = isSyncError(err) && err.code === ErrorCode.Forbidden ? ErrorCode.Forbidden : ErrorCode.AuthFailed;
  return new SyncError(code, messageOf(err), { fatal: true, cause: err });
}


/** Changes plus migrations of validated change sets. */
function factsIn(sets: ValidChangeSet[]): number {
  let n = 0;
  for (const set of sets) n += set.changes.length + set.migrations.length;
  return n;
}

/**
 * Changes plus migrations of an unvalidated `changes` array (0 if it is not
 * one); a change set with none counts as `emptySet`.
 */
function countFacts(changes: unknown, emptySet: number): number {
  if (!Array.isArray(changes)) return 0;
  let n = 0;
  for (const set of changes) {
    const { changes: list, schemaMigrations } = (typeof set === 'object' && set !== null ? set : {}) as { changes?: unknown; schemaMigrations?: unknown };
    const facts = (Array.isArray(list) ? list.length : 0) + (Array.isArray(schemaMigrations) ? schemaMigrations.length : 0);
    n += Math.max(emptySet, facts);
  }
  return n;
}

export type { ChangeSet };
