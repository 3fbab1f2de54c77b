import WebSocket from 'ws';
import { compareHlc, HlcClock, hlcFromWire, hlcToWire, transactionIdOf } from '../../lib/protocol/hlc.js';
import { randomSiteId, siteIdFromWire, siteIdToWire } from '../../lib/protocol/site-id.js';
import type {
  Change, ChangeSet, ClientMessage, ServerMessage, SnapshotCheckpoint, SnapshotChunk,
} from '../../lib/protocol/messages.js';
import type { WireSqlValue } from '../../lib/protocol/values.js';
import { ReplicaModel, rowKeyOf, withOpSeq, type ModelDigest } from './replica-model.js';

export { ReplicaModel, readServerState, type ModelDigest, type ServerState } from './replica-model.js';

/**
 * Codes that stop reconnecting when the server's error carries no `fatal`
 * flag (docs/protocol.md §8, "Errors").
 */
const FATAL_WITHOUT_FLAG = new Set(['AUTH_FAILED', 'MISSING_DATABASE_ID', 'ALREADY_AUTHENTICATED']);

/** Options of a ReferenceClient. */
export interface ReferenceClientOptions {
  /**
   * WebSocket URL of the coordinator, e.g. `ws://127.0.0.1:1234/sync/ws`; or
   * a function asked for it at every connect, standing for a load balancer
   * that picks a node per connection (the client itself sees one address).
   */
  url: string | (() => string);
  databaseId: string;
  /** 16 bytes. @default a random site id */
  siteId?: Buffer;
  /** Sent in the handshake and as `?token=` in the URL (§8). */
  token?: string;
  /**
   * First reconnect delay in ms; each further attempt doubles it up to
   * `maxReconnectDelayMs`. The real client waits 1 s doubling to 60 s; tests
   * scale the base down to keep runs short (the cap follows: 60 × base).
   * @default 1000
   */
  reconnectDelayMs?: number;
  /** @default 60 × reconnectDelayMs */
  maxReconnectDelayMs?: number;
  /** Local commits are pushed this long after the last one (§8: ~50 ms). @default 50 */
  debounceMs?: number;
  /** Changes per push or request_changes answer, whole transactions (§8: about 1,000). @default 1000 */
  batchChanges?: number;
  /** Start without network: commits stay local until `goOnline()`. @default false */
  offline?: boolean;
  /** Keep every frame sent and received in `frames` (tests of the wire shape). @default false */
  record?: boolean;
  /** Cut the socket after this many snapshot chunks of the next snapshot stream (test hook). */
  cutSnapshotAfterChunks?: number;
  /**
   * Each `changes` and `push_changes` message is applied after its own
   * random delay in [0, applyDelayMs) ms, as it arrives and without waiting
   * for the previous one (§8, "Concurrency"): a later message may land
   * first, and a `changes` message that lands last sets the watermark even
   * when an earlier-landed one held newer stamps. 0 applies each message at
   * once, in arrival order (one of the orders a real client can produce).
   * @default 5
   */
  applyDelayMs?: number;
  /** Source of the apply delays, uniform in [0, 1). @default Math.random */
  random?: () => number;
}

/** A server `error` the client received. */
export interface ReceivedError { code: string; message: string; fatal: boolean | undefined }

/** One recorded frame (with `record: true`). */
export interface RecordedFrame { conn: number; dir: 'c2s' | 's2c'; msg: Record<string, unknown> }

/** A row write of a local transaction: column values of one row (insert or update). */
export interface RowWrite { schema?: string; table?: string; pk: WireSqlValue[]; values: Record<string, WireSqlValue> }
/** A row deletion of a local transaction. */
export interface RowDelete { schema?: string; table?: string; pk: WireSqlValue[]; delete: true }
export type LocalOp = RowWrite | RowDelete;

interface Connection {
  id: number;
  ws: WebSocket;
  /** handshake_ack received. */
  open: boolean;
  serverSiteId?: Buffer;
  /** A snapshot was asked for and has not completed: changes and pushes are dropped. */
  landing: boolean;
  /** get_changes sent (once per connection). */
  ready: boolean;
  chunks: number;
  /** Snapshot table being received, and its entries so far. */
  table?: string;
  paused: boolean;
  dead: boolean;
}

/**
 * A sync client that behaves exactly as docs/protocol.md §8 says real Quereus
 * clients do, and as the fixtures `real-client-transcript.jsonl` and
 * `real-client-resume.jsonl` show, and nothing more: it never pages with
 * `hasMore`, never sends a second `get_changes` on a connection, never
 * sends `clientPaging`, retries nothing on an error, and knows nothing of
 * the coordinator's internals. Specs drive it through test hooks (commits,
 * network loss, a reader that stalls) and compare its replica with the
 * server's.
 *
 * On the wire, per connection: `handshake`; after `handshake_ack`,
 * `resume_snapshot` (when it holds a checkpoint) or `get_snapshot` (when its
 * replica is empty), and once the snapshot is complete (or at once when no
 * snapshot is needed) one `get_changes` from its watermark followed by a push
 * of its unacknowledged change sets. Then only pushes after local commits
 * and answers to `request_changes`. Received `changes` and `push_changes`
 * are applied concurrently (see `applyDelayMs`), so they may land out of
 * order and the watermark may move back, as with the real client.
 */
export class ReferenceClient {
  readonly siteId: Buffer;
  readonly siteIdWire: string;
  readonly databaseId: string;
  readonly model = new ReplicaModel();
  /** Every local transaction, in commit order (what the server should end up holding). */
  readonly ownChangeSets: ChangeSet[] = [];
  /** Server errors, in arrival order. The client acts on none except fatal ones and SNAPSHOT_ERROR. */
  readonly errors: ReceivedError[] = [];
  /** Close codes of every connection that ended. */
  readonly closeCodes: number[] = [];
  /** Delays of every reconnect scheduled, in ms. */
  readonly reconnectDelays: number[] = [];
  /** Frames (with `record: true`). */
  readonly frames: RecordedFrame[] = [];
  /** Messages received, by type. */
  readonly received = new Map<string, number>();
  /** `changes` and `push_changes` dropped because a snapshot was landing. */
  droppedWhileLanding = 0;
  /**
   * `changes` messages that said `hasMore: true`. Counted for failure
   * messages only: the client never acts on it (§8), so a page with more
   * behind it is where a client left to itself stops.
   */
  pagesWithMore = 0;
  /** Connections that got a handshake_ack. */
  connections = 0;
  /** Largest ChangeSet.hlc of the last `changes` message (§8 watermark), wire form. */
  watermark?: string;
  /** Where an interrupted snapshot stopped (§6, §8). */
  checkpoint?: SnapshotCheckpoint;
  /** True once a fatal error (or a refused handshake_ack) stopped reconnecting. */
  stoppedByServer = false;

  private readonly options: Required<Pick<ReferenceClientOptions, 'reconnectDelayMs' | 'maxReconnectDelayMs' | 'debounceMs' | 'batchChanges' | 'record' | 'applyDelayMs' | 'random'>> & ReferenceClientOptions;
  private readonly clock: HlcClock;
  private conn?: Connection;
  private nextConnId = 0;
  private reconnectAttempts = 0;
  private reconnectTimer?: NodeJS.Timeout;
  private debounceTimer?: NodeJS.Timeout;
  private stopped = false;
  private started = false;
  private offline: boolean;
  private cutAfterChunks?: number;
  /** High-water mark of acknowledged pushes, and the mark each in-flight push would promote it to. */
  private lastSentHlc?: Buffer;
  private readonly pendingPushes = new Map<string, Buffer>();
  private applySeq = 0;
  private lastFrameAt = Date.now();
  private closeWaiters: (() => void)[] = [];
  /** Messages received and not applied yet (§8: applied concurrently). */
  private readonly applying = new Set<NodeJS.Timeout>();

  constructor(options: ReferenceClientOptions) {
    const reconnectDelayMs = options.reconnectDelayMs ?? 1000;
    this.options = {
      ...options,
      reconnectDelayMs,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 60 * reconnectDelayMs,
      debounceMs: options.debounceMs ?? 50,
      batchChanges: options.batchChanges ?? 1000,
      record: options.record ?? false,
      applyDelayMs: options.applyDelayMs ?? 5,
      random: options.random ?? Math.random,
    };
    this.siteId = options.siteId ?? randomSiteId();
    this.siteIdWire = siteIdToWire(this.siteId);
    this.databaseId = options.databaseId;
    this.clock = new HlcClock(this.siteId);
    this.offline = options.offline ?? false;
    this.cutAfterChunks = options.cutSnapshotAfterChunks;
  }

  // ---- lifecycle -------------------------------------------------------

  /** Starts connecting (unless offline). */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.connect();
  }

  /** Closes everything: socket, reconnect and debounce timers. Resolves once the socket has closed. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.debounceTimer);
    this.reconnectTimer = undefined;
    this.debounceTimer = undefined;
    for (const timer of this.applying) clearTimeout(timer);
    this.applying.clear();
    const conn = this.conn;
    if (!conn) return;
    const closed = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    if (conn.paused) conn.ws.resume();
    if (conn.ws.readyState === WebSocket.OPEN) conn.ws.close(1000);
    else conn.ws.terminate();
    // A server that never answers the close frame must not hold the caller.
    const force = setTimeout(() => conn.ws.terminate(), 1000);
    await closed;
    clearTimeout(force);
  }

  /** Loses the network: the socket is cut and reconnect attempts fail until `goOnline()`. */
  goOffline(): void {
    this.offline = true;
    this.conn?.ws.terminate();
  }

  /** The network is back: connects now unless a reconnect attempt is already scheduled. */
  goOnline(): void {
    this.offline = false;
    if (!this.started || this.stopped || this.stoppedByServer) return;
    if (!this.conn && !this.reconnectTimer) this.connect();
  }

  get isOffline(): boolean {
    return this.offline;
  }

  /** Cuts the current socket (network drop); the client reconnects with backoff. */
  cut(): void {
    this.conn?.ws.terminate();
  }

  /** Cuts the socket after `n` chunks of the next snapshot stream. */
  cutSnapshotAfter(n: number): void {
    this.cutAfterChunks = n;
  }

  /** Stops reading the TCP socket, so the server's send buffers fill (a stalled device). */
  pauseReading(): void {
    const conn = this.conn;
    if (!conn || conn.paused) return;
    conn.paused = true;
    conn.ws.pause();
  }

  resumeReading(): void {
    const conn = this.conn;
    if (!conn || !conn.paused) return;
    conn.paused = false;
    conn.ws.resume();
  }

  get readingPaused(): boolean {
    return this.conn?.paused ?? false;
  }

  /** Handshake acknowledged, snapshot (if any) landed, and get_changes sent on the current socket. */
  get ready(): boolean {
    return this.conn?.ready ?? false;
  }

  /** True while a debounced push of local commits is pending. */
  get pushScheduled(): boolean {
    return this.debounceTimer !== undefined;
  }

  /** True while a reconnect is scheduled. */
  get reconnectScheduled(): boolean {
    return this.reconnectTimer !== undefined;
  }

  /**
   * Nothing in flight: connected (handshake acknowledged), reading, no
   * message waiting to be applied, no commit waiting to be pushed, no push
   * waiting for its apply_result, and no frame received for `quietMs`. A snapshot that stopped arriving counts as idle:
   * the client waits for nothing it will act on.
   */
  idle(quietMs: number): boolean {
    return (this.conn?.open ?? false) && !this.readingPaused && this.applying.size === 0 && this.debounceTimer === undefined && this.pendingPushes.size === 0 &&
      Date.now() - this.lastFrameAt >= quietMs;
  }

  /** Resolves once `idle(quietMs)` holds; rejects after `timeoutMs`. */
  async whenIdle(quietMs = 500, timeoutMs = 60_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!this.idle(quietMs)) {
      if (Date.now() > until) throw new Error(`${this.siteIdWire}: not idle within ${timeoutMs} ms (errors: ${this.errorSummary()}; closes: ${this.closeCodes.join(',')})`);
      await sleep(10);
    }
  }

  /**
   * True once every local commit has been acknowledged by an apply_result.
   * Never true while the newest commit was erased before its push by a
   * remote delete of its rows (no resurrection): nothing of it is left to
   * send, as with a real client. Clients that delete each other's rows
   * should wait on state (`settle`) instead.
   */
  get allOwnAcked(): boolean {
    const last = this.ownChangeSets.at(-1);
    if (!last) return true;
    return this.lastSentHlc !== undefined && compareHlc(Buffer.from(last.hlc, 'base64'), this.lastSentHlc) <= 0;
  }

  /** Resolves once every local commit is acknowledged; rejects after `timeoutMs`. */
  async whenPushed(timeoutMs = 30_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!this.allOwnAcked) {
      if (Date.now() > until) throw new Error(`${this.siteIdWire}: local commits not acknowledged within ${timeoutMs} ms (errors: ${this.errorSummary()}; closes: ${this.closeCodes.join(',')})`);
      await sleep(5);
    }
  }

  /** Resolves once ready (handshake done, snapshot landed, get_changes sent); rejects after `timeoutMs`. */
  async whenReady(timeoutMs = 30_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!this.ready) {
      if (Date.now() > until) throw new Error(`${this.siteIdWire}: not ready within ${timeoutMs} ms (errors: ${this.errorSummary()}; closes: ${this.closeCodes.join(',')})`);
      await sleep(5);
    }
  }

  digest(): ModelDigest {
    return this.model.digest();
  }

  errorSummary(): string {
    const counts = new Map<string, number>();
    for (const e of this.errors) counts.set(e.code, (counts.get(e.code) ?? 0) + 1);
    return [...counts].map(([code, n]) => `${code}×${n}`).join(', ') || 'none';
  }

  /** Frames of one direction (with `record: true`), optionally of one connection. */
  sent(conn?: number): Record<string, unknown>[] {
    return this.frames.filter((f) => f.dir === 'c2s' && (conn === undefined || f.conn === conn)).map((f) => f.msg);
  }

  // ---- local writes (test hooks standing for the app's SQL) -------------

  /** Writes column values of one or more rows in one transaction. */
  write(rows: RowWrite | RowWrite[]): ChangeSet | undefined {
    return this.commit(Array.isArray(rows) ? rows : [rows]);
  }

  /** Deletes one or more rows in one transaction. */
  delete(rows: { schema?: string; table?: string; pk: WireSqlValue[] } | { schema?: string; table?: string; pk: WireSqlValue[] }[]): ChangeSet | undefined {
    return this.commit((Array.isArray(rows) ? rows : [rows]).map((r) => ({ ...r, delete: true as const })));
  }

  /**
   * Commits one local transaction: each fact gets the transaction's HLC with
   * its own opSeq; updates carry the prior image, deletes the prior row, as
   * the fixture's seq 121 shows. A write to a row this replica has seen
   * deleted is dropped (no resurrection), and deleting a row it does not hold
   * changes nothing, as in SQL. Returns the change set, or undefined when
   * nothing changed. Schedules the debounced push.
   */
  commit(ops: LocalOp[]): ChangeSet | undefined {
    const base = this.clock.tick();
    const changes: Change[] = [];
    let op = 0;
    for (const item of ops) {
      const schema = item.schema ?? 'main';
      const table = item.table ?? 'items';
      if ('delete' in item) {
        const row = this.model.row(schema, table, item.pk);
        if (!row) continue;
        changes.push({ type: 'delete', schema, table, pk: item.pk, hlc: hlcToWire(withOpSeq(base, op++)), priorRow: [...row.cells.values()].map((c) => c.value) });
      } else {
        if (this.model.isDeleted(schema, table, item.pk)) continue;
        for (const [column, value] of Object.entries(item.values)) {
          const prior = this.model.cell(schema, table, item.pk, column);
          const change = { type: 'column', schema, table, pk: item.pk, hlc: hlcToWire(withOpSeq(base, op++)), column, value } as Change & { priorValue?: WireSqlValue; priorHlc?: string };
          if (prior) {
            change.priorValue = prior.value;
            change.priorHlc = hlcToWire(prior.hlc);
          }
          changes.push(change);
        }
      }
    }
    if (changes.length === 0) return undefined;
    const last = Buffer.from(changes.at(-1)!.hlc, 'base64');
    const set: ChangeSet = { siteId: this.siteIdWire, transactionId: transactionIdOf(last), hlc: hlcToWire(last), changes, schemaMigrations: [] };
    this.model.applyChangeSets([set]);
    this.ownChangeSets.push(set);
    this.schedulePush();
    return set;
  }

  // ---- connection ------------------------------------------------------

  private connect(): void {
    if (this.stopped || this.stoppedByServer) return;
    if (this.offline) {
      // No network: the attempt fails at once, as a refused connection would.
      this.scheduleReconnect();
      return;
    }
    const token = this.options.token;
    const base = typeof this.options.url === 'function' ? this.options.url() : this.options.url;
    const url = token === undefined ? base : `${base}?token=${encodeURIComponent(token)}`;
    // Browsers have no frame size limit of their own; neither does this client.
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 2 ** 31 - 1 });
    const conn: Connection = { id: ++this.nextConnId, ws, open: false, landing: false, ready: false, chunks: 0, paused: false, dead: false };
    this.conn = conn;
    ws.on('open', () => {
      if (this.conn !== conn) return;
      this.reconnectAttempts = 0;
      const handshake: Record<string, unknown> = { type: 'handshake', databaseId: this.databaseId, siteId: this.siteIdWire };
      if (token !== undefined) handshake.token = token;
      handshake.protocolVersion = 1;
      this.send(conn, handshake as unknown as ClientMessage);
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (this.conn !== conn || conn.dead) return;
      this.lastFrameAt = Date.now();
      if (isBinary) {
        // A browser hands a binary frame to the app as a Blob, which is no JSON text: the frame is lost to it.
        this.errors.push({ code: '#BINARY_FRAME', message: data.toString('utf8').slice(0, 200), fatal: undefined });
        return;
      }
      let message: ServerMessage;
      try {
        message = JSON.parse(data.toString('utf8')) as ServerMessage;
      } catch {
        this.errors.push({ code: '#UNPARSEABLE', message: data.toString('utf8').slice(0, 200), fatal: undefined });
        return;
      }
      if (this.options.record) this.frames.push({ conn: conn.id, dir: 's2c', msg: message as unknown as Record<string, unknown> });
      this.received.set(message.type, (this.received.get(message.type) ?? 0) + 1);
      try {
        this.handle(conn, message);
      } catch (err) {
        // A frame this client cannot use (a malformed id, say) is reported to the app, like any other error.
        this.errors.push({ code: '#CLIENT_ERROR', message: `${message.type}: ${(err as Error).message}`, fatal: undefined });
      }
    });
    ws.on('error', () => { /* the close event follows */ });
    ws.on('close', (code: number) => {
      conn.dead = true;
      this.closeCodes.push(code);
      if (this.conn === conn) this.conn = undefined;
      // An ack can no longer arrive for what this socket carried; the next push resends it.
      this.pendingPushes.clear();
      for (const resolve of this.closeWaiters.splice(0)) resolve();
      this.scheduleReconnect();
    });
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.stoppedByServer || this.reconnectTimer) return;
    const delay = Math.min(this.options.reconnectDelayMs * 2 ** this.reconnectAttempts, this.options.maxReconnectDelayMs);
    this.reconnectAttempts++;
    this.reconnectDelays.push(delay);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
  }

  private send(conn: Connection, message: ClientMessage): boolean {
    if (conn.dead || conn.ws.readyState !== WebSocket.OPEN) return false;
    if (this.options.record) this.frames.push({ conn: conn.id, dir: 'c2s', msg: message as unknown as Record<string, unknown> });
    conn.ws.send(JSON.stringify(message));
    return true;
  }

  // ---- inbound ---------------------------------------------------------

  /** Handles one message as it arrives (§8: no waiting for the previous one). */
  private handle(conn: Connection, message: ServerMessage): void {
    switch (message.type) {
      case 'handshake_ack':
        return this.onHandshakeAck(conn, message);
      case 'changes':
      case 'push_changes':
        return this.onChanges(conn, message.type, message.changeSets, message);
      case 'snapshot_chunk':
        return this.onSnapshotChunk(conn, message.chunk);
      case 'snapshot_complete':
        return this.onSnapshotComplete(conn);
      case 'apply_result':
        return this.onApplyResult(message.requestId);
      case 'request_changes':
        return this.onRequestChanges(conn, message.siteId, message.sinceHLC);
      case 'error':
        return this.onError(conn, message);
      default:
        // pong, and anything new: nothing to do.
    }
  }

  private onHandshakeAck(conn: Connection, message: { protocolVersion?: unknown; serverSiteId?: string }): void {
    if (message.protocolVersion !== 1) {
      this.errors.push({ code: '#ACK_VERSION_REFUSED', message: `handshake_ack protocolVersion ${String(message.protocolVersion)}`, fatal: true });
      this.stoppedByServer = true;
      conn.ws.close(1000);
      return;
    }
    conn.open = true;
    this.connections++;
    conn.serverSiteId = siteIdFromWire(message.serverSiteId, 'serverSiteId');
    if (this.checkpoint) {
      conn.landing = true;
      this.send(conn, { type: 'resume_snapshot', checkpoint: { ...this.checkpoint, completedTables: [...this.checkpoint.completedTables] } });
    } else if (this.model.isEmpty()) {
      conn.landing = true;
      this.send(conn, { type: 'get_snapshot' });
    } else {
      this.afterBootstrap(conn);
    }
  }

  /** One get_changes from the watermark, then the push of unacknowledged change sets (fixture c8, c11, c13). */
  private afterBootstrap(conn: Connection): void {
    if (conn.ready) return;
    conn.ready = true;
    this.send(conn, this.watermark === undefined ? { type: 'get_changes' } : { type: 'get_changes', sinceHLC: this.watermark });
    this.pushLocalChanges();
  }

  private onChanges(conn: Connection, type: 'changes' | 'push_changes', changeSets: ChangeSet[] | undefined, message: object): void {
    if (conn.landing) {
      this.droppedWhileLanding++;
      return;
    }
    if (type === 'changes' && (message as { hasMore?: unknown }).hasMore === true) this.pagesWithMore++;
    const sets = changeSets ?? [];
    if (this.options.applyDelayMs <= 0) return this.applyChanges(type, sets);
    // Applied on its own schedule, not after the previous message (§8, "Concurrency").
    const timer = setTimeout(() => {
      this.applying.delete(timer);
      try {
        this.applyChanges(type, sets);
      } catch (err) {
        this.errors.push({ code: '#CLIENT_ERROR', message: `${type}: ${(err as Error).message}`, fatal: undefined });
      }
    }, this.options.applyDelayMs * this.options.random());
    this.applying.add(timer);
  }

  /** Applies one received message; a `changes` message sets the watermark to its largest stamp. */
  private applyChanges(type: 'changes' | 'push_changes', sets: ChangeSet[]): void {
    this.model.applyChangeSets(sets);
    for (const set of sets) this.observe(set);
    if (type === 'changes' && sets.length > 0) {
      // The watermark is set to this message's largest stamp, not maxed with
      // the previous one: the real client stores it as is.
      let max = sets[0]!.hlc;
      for (const set of sets) if (compareWire(set.hlc, max) > 0) max = set.hlc;
      this.watermark = max;
    }
  }

  /** Keeps the local clock ahead of every fact seen, so later local writes win over them. */
  private observe(set: ChangeSet): void {
    for (const change of set.changes) {
      try {
        this.clock.receive(Buffer.from(change.hlc, 'base64'));
      } catch {
        // A far-future timestamp: the clock does not follow it.
      }
    }
  }

  private onSnapshotChunk(conn: Connection, chunk: SnapshotChunk): void {
    if (!conn.landing) return;
    conn.chunks++;
    switch (chunk.type) {
      case 'header':
        // A resumed stream repeats the interrupted one's id and hlc: keep the
        // checkpoint's progress. Anything else starts over.
        if (!this.checkpoint || this.checkpoint.snapshotId !== chunk.snapshotId) {
          this.checkpoint = {
            snapshotId: chunk.snapshotId, siteId: this.siteIdWire, hlc: chunk.hlc, lastTableIndex: 0, lastEntryIndex: 0,
            completedTables: [], entriesProcessed: 0, createdAt: Date.now(),
          };
        }
        break;
      case 'table-start':
        conn.table = `${chunk.schema}.${chunk.table}`;
        break;
      case 'table-end': {
        // The real client's counters move at table boundaries only (the
        // fixture's checkpoint after 14 chunks of one table is all zeros).
        const cp = this.checkpoint;
        if (cp) {
          const name = `${chunk.schema}.${chunk.table}`;
          if (!cp.completedTables.includes(name)) cp.completedTables.push(name);
          cp.lastTableIndex = cp.completedTables.length;
          cp.lastEntryIndex = 0;
          cp.entriesProcessed += chunk.entriesWritten;
        }
        conn.table = undefined;
        break;
      }
      default:
        this.model.applySnapshotChunk(chunk);
    }
    if (this.cutAfterChunks !== undefined && conn.chunks >= this.cutAfterChunks) {
      this.cutAfterChunks = undefined;
      conn.dead = true;
      conn.ws.terminate();
    }
  }

  private onSnapshotComplete(conn: Connection): void {
    if (!conn.landing) return;
    conn.landing = false;
    if (this.checkpoint) {
      this.watermark = this.checkpoint.hlc;
      this.checkpoint = undefined;
    }
    this.afterBootstrap(conn);
  }

  private onApplyResult(requestId: string | undefined): void {
    if (requestId === undefined) return;
    const promoted = this.pendingPushes.get(requestId);
    if (!promoted) return;
    this.pendingPushes.delete(requestId);
    if (!this.lastSentHlc || compareHlc(promoted, this.lastSentHlc) > 0) this.lastSentHlc = promoted;
    for (const [id, hlc] of this.pendingPushes) if (compareHlc(hlc, this.lastSentHlc) <= 0) this.pendingPushes.delete(id);
  }

  private onRequestChanges(conn: Connection, siteId: string | undefined, sinceHLC: string | undefined): void {
    if (siteId === undefined) return;
    let site: Buffer;
    let since: Buffer | undefined;
    try {
      site = siteIdFromWire(siteId, 'siteId');
      since = sinceHLC === undefined ? undefined : hlcFromWire(sinceHLC, 'sinceHLC');
    } catch {
      return;
    }
    const changes = this.model.changeSetsSince(site, since, this.options.batchChanges);
    if (changes.length > 0) this.send(conn, { type: 'apply_changes', changes });
  }

  private onError(conn: Connection, message: { code: string; message: string; fatal?: boolean }): void {
    this.errors.push({ code: message.code, message: message.message, fatal: message.fatal });
    const fatal = message.fatal ?? FATAL_WITHOUT_FLAG.has(message.code);
    if (fatal) {
      this.stoppedByServer = true;
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
      return;
    }
    if (message.code === 'SNAPSHOT_ERROR' && conn.landing) {
      // Give up this transfer; the reconnect resumes from the checkpoint.
      conn.ws.close(1000);
    }
  }

  // ---- outbound --------------------------------------------------------

  private schedulePush(): void {
    clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      this.pushLocalChanges();
    }, this.options.debounceMs);
  }

  /**
   * One apply_changes with the change sets after the last acknowledged push
   * (whole transactions up to about `batchChanges` changes), except those the
   * server itself stamped. Until its apply_result arrives, the next push
   * repeats them (§8).
   */
  private pushLocalChanges(): void {
    const conn = this.conn;
    if (!conn || !conn.ready || !conn.serverSiteId) return;
    const changes = this.model.changeSetsSince(conn.serverSiteId, this.lastSentHlc, this.options.batchChanges);
    if (changes.length === 0) return;
    const requestId = `apply-${++this.applySeq}`;
    if (!this.send(conn, { type: 'apply_changes', requestId, changes })) return;
    let max = Buffer.from(changes[0]!.hlc, 'base64');
    for (const set of changes) {
      const hlc = Buffer.from(set.hlc, 'base64');
      if (compareHlc(hlc, max) > 0) max = hlc;
    }
    this.pendingPushes.set(requestId, max);
  }
}

function compareWire(a: string, b: string): number {
  return compareHlc(Buffer.from(a, 'base64'), Buffer.from(b, 'base64'));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The union of every client's own commits, merged: what every replica must end up with. */
export function expectedState(clients: readonly ReferenceClient[]): ReplicaModel {
  const model = new ReplicaModel();
  for (const client of clients) model.applyChangeSets(client.ownChangeSets);
  return model;
}

/**
 * Waits until `done()` holds, or until nothing moves any more: every client
 * idle (see `ReferenceClient.idle`) for `quietMs`, or `stuck()` true, or
 * `maxMs` gone. Returns the last `done()`. Tests assert on that result (the
 * state reached), never on how long it took.
 */
export async function settle(
  clients: readonly ReferenceClient[],
  done: () => boolean | Promise<boolean>,
  options: { quietMs?: number; maxMs?: number; pollMs?: number; stuck?: () => boolean } = {},
): Promise<boolean> {
  const { quietMs = 1000, maxMs = 120_000, pollMs = 50, stuck } = options;
  const until = Date.now() + maxMs;
  for (;;) {
    if (await done()) return true;
    if (stuck?.() || Date.now() > until || clients.every((c) => c.idle(quietMs))) return done();
    await sleep(pollMs);
  }
}

/** Counts rows of `table` in a model whose pk is in `pks` (for "has N of M" messages). */
export function countRows(model: ReplicaModel, pks: Iterable<WireSqlValue[]>, table = 'items', schema = 'main'): number {
  let n = 0;
  for (const pk of pks) if (model.rows.has(rowKeyOf(schema, table, pk))) n++;
  return n;
}
