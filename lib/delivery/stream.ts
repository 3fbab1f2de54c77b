import { ErrorCode, isSyncError } from '../errors.js';
import { compareHlc } from '../protocol/hlc.js';
import type { DeliverySink, LogPage, LogReader } from './ports.js';
import type { Push } from './push.js';

/**
 * Page budget (bytes of change-set JSON) of what a socket missed while
 * catching up or reading too slowly, sent as `push_changes`: a slow reader
 * holds its queue plus about two of these, rather than two full pages of
 * the log (a page still holds at least one whole transaction).
 */
export const RECOVERY_PAGE_BYTES = 1024 * 1024;

/** How one socket's stream behaves. */
export interface DeliveryOptions {
  /**
   * With more than this many bytes queued on the socket, live pushes stop
   * being queued in memory; once the socket drains, what it missed is read
   * back from the stored log. Bytes.
   */
  pushHighWaterBytes: number;
  /**
   * The client pages by itself (its handshake said `"clientPaging": true`):
   * each `get_changes` gets exactly one page. Otherwise the stream sends the
   * following pages on its own (docs/protocol.md §9).
   */
  clientPaging: boolean;
  /**
   * The stream cannot go on (a log read failed while it was catching up on
   * its own): the transport should close the socket so that the client
   * reconnects and asks again from its watermark.
   */
  onFailure(err: unknown): void;
  /** Called each time the socket falls behind and recovery from the log begins (for metrics). */
  onLag?(): void;
  /**
   * The client's cursor is older than the retention floor (`err`:
   * SNAPSHOT_REQUIRED). The transport tells the client, and the stream then
   * sends what the log still holds after the cursor all the same (a real
   * client does not act on the error, docs/protocol.md §8). Without it, the
   * catch-up is refused with the error, as for a client that pages itself.
   */
  onCursorExpired?(err: unknown): void;
}

/**
 * - `live`: change sets are pushed as they are committed.
 * - `catching-up`: pages of the stored log are being sent; commits meanwhile
 *   are not queued, they are read from the log when the stream gets there.
 */
type Mode = 'live' | 'catching-up';

/**
 * Everything one socket is sent of a database's changes, in stamp order,
 * with no gap and no repeat (docs/protocol.md §9):
 *
 * - after `get_changes`, pages of the log from the client's cursor, each as a
 *   `changes` message sent once the previous one has been flushed, until the
 *   end of the log (`hasMore: true` on all but the last);
 * - then live `push_changes`, one per committed message of another site;
 * - when the socket reads too slowly, pushes stop; once it drains, what it
 *   missed is read from the log and sent as `push_changes`, then it is live
 *   again. Memory per socket stays at about two pages (of at most
 *   RECOVERY_PAGE_BYTES while recovering).
 *
 * The stream keeps one position: the stamp of the last change set it sent.
 * Stamps rise in commit order and pushes are offered in commit order, so a
 * push at or below the position was already sent, and a commit made while
 * the stream was reading the log is either in what it read or makes it read
 * again (`missed`).
 */
export class DeliveryStream {
  private readonly sink: DeliverySink;
  private readonly reader: LogReader;
  private readonly options: DeliveryOptions;
  private mode: Mode = 'live';
  /** Stamp of the last change set sent; undefined: nothing yet (from the beginning). */
  private position: Buffer | undefined;
  /** A commit was offered while catching up: the log must be read again before going live. */
  private missed = false;
  /**
   * The retention floor as the last catch-up's first page found it: the
   * stream's own later reads go on below it (their positions come from
   * pages, not from the client) unless it rises meanwhile.
   */
  private floorSeen?: Buffer;
  /** Bumped by every restart and by close, so a superseded read loop stops. */
  private generation = 0;
  private closed = false;

  /**
   * `start` is the stamp the socket is live from: the database's last
   * committed stamp when the client joined (pushes before it are not its).
   */
  constructor(sink: DeliverySink, reader: LogReader, options: DeliveryOptions, start: Buffer | undefined) {
    this.sink = sink;
    this.reader = reader;
    this.options = options;
    this.position = start;
  }

  /** Whether the stream is sending the stored log rather than live pushes. */
  get catchingUp(): boolean {
    return this.mode === 'catching-up';
  }

  /**
   * Answers `get_changes` from `cursor`: sends the first page (empty if the
   * client is up to date) before resolving, then, unless the client pages by
   * itself, the rest in the background until it is live. Rejects, with
   * nothing sent, when the first page cannot be read: the transport replies
   * with the error and the stream carries on as before. A cursor older than
   * the retention horizon is such a failure (SNAPSHOT_REQUIRED) for a client
   * that pages itself; for the others, see `onCursorExpired`.
   */
  async catchUp(cursor: Buffer | undefined): Promise<void> {
    if (this.options.clientPaging) {
      // One page per request, as before §9; the live pushes are unaffected.
      const page = await this.reader.read(cursor);
      if (!this.closed) this.sink.send(changesFrame(page, page.hasMore));
      return;
    }
    const generation = ++this.generation;
    const before = { mode: this.mode, position: this.position };
    this.mode = 'catching-up';
    this.missed = false;
    let page: LogPage;
    let from = cursor;
    try {
      page = await this.readFirstPage(cursor);
      if (page.cursorAhead && !this.stale(generation)) {
        // A cursor above every stamp of the log would hold back every later
        // commit stamped below it. The stream answers from where it stood
        // instead: everything after that is in the log or still to be
        // offered (a commit stored but not yet offered is in the log).
        from = before.position;
        page = await this.reader.read(from, undefined, page.floor);
      }
    } catch (err) {
      if (generation === this.generation) {
        this.position = before.position;
        // Whatever was offered while reading is still owed.
        if (before.mode === 'catching-up' || this.missed) void this.pump(++this.generation, 'push_changes');
        else this.mode = 'live';
      }
      throw err;
    }
    if (this.stale(generation)) return;
    this.floorSeen = page.floor && ownStamp(page.floor);
    this.position = from && ownStamp(from);
    this.sendPage(page, 'changes');
    if (page.hasMore || this.missed) void this.pump(generation, page.hasMore ? 'changes' : 'push_changes');
    else this.mode = 'live';
  }

  /**
   * The first page of a server-driven catch-up. The log refuses a cursor
   * older than its retention floor (SNAPSHOT_REQUIRED) and a real client
   * ignores that error: told through `onCursorExpired`, it is then sent
   * everything the log holds after its cursor, which is every live change;
   * only deletions that retention removed meanwhile cannot reach it.
   */
  private async readFirstPage(cursor: Buffer | undefined): Promise<LogPage> {
    try {
      return await this.reader.read(cursor);
    } catch (err) {
      if (!this.options.onCursorExpired || !isSyncError(err) || err.code !== ErrorCode.SnapshotRequired) throw err;
      this.options.onCursorExpired(err);
      return this.reader.read(cursor, undefined, 'any');
    }
  }

  /**
   * Offers a committed push (called by the hub in commit order). Returns
   * true when it was sent now; false when this socket gets it later from the
   * log (catching up, or too far behind to queue more), or already has it.
   */
  offer(push: Push): boolean {
    if (this.closed || !this.sink.open) return false;
    if (this.mode === 'catching-up') {
      this.missed = true;
      return false;
    }
    if (this.position && compareHlc(push.last, this.position) <= 0) return false;
    if (this.sink.bufferedBytes > this.options.pushHighWaterBytes) {
      // The client reads too slowly: stop queueing in memory; once what is
      // queued has drained, read what it missed from the log.
      this.mode = 'catching-up';
      this.missed = true;
      this.options.onLag?.();
      void this.pump(++this.generation, 'push_changes');
      return false;
    }
    const frame = this.position && compareHlc(push.first, this.position) <= 0 ? push.frameAfter(this.position) : push.frameBytes();
    if (frame === undefined) return false;
    this.sink.send(frame);
    this.position = push.last;
    return true;
  }

  /** Stops the stream (the socket closed); a read in progress is dropped. */
  close(): void {
    this.closed = true;
    this.generation++;
  }

  private stale(generation: number): boolean {
    return this.closed || generation !== this.generation || !this.sink.open;
  }

  /**
   * Sends pages of the log after the position until its end, each once the
   * socket has flushed everything before it; the next page is read while
   * the previous one drains. Pages are `changes` while answering a
   * `get_changes`, `push_changes` once that answer is complete (the commits
   * made meanwhile) or when recovering from a lag. Goes live when a read
   * reaches the end of the log and nothing was committed during it.
   */
  private async pump(generation: number, kind: 'changes' | 'push_changes'): Promise<void> {
    try {
      for (;;) {
        this.missed = false;
        const reading = this.reader.read(this.position, kind === 'push_changes' ? RECOVERY_PAGE_BYTES : undefined, this.floorSeen);
        // Handled below; without this a failure during the wait would count as unhandled.
        reading.catch(() => undefined);
        await this.sink.flushed();
        if (this.stale(generation)) return;
        const page = await reading;
        if (this.stale(generation)) return;
        // An empty last page still ends a get_changes answer (hasMore: false).
        if (page.transactionCount > 0 || (kind === 'changes' && !page.hasMore)) this.sendPage(page, kind);
        if (!page.hasMore) {
          if (!this.missed) {
            this.mode = 'live';
            return;
          }
          kind = 'push_changes';
        }
      }
    } catch (err) {
      if (!this.stale(generation)) this.options.onFailure(err);
    }
  }

  private sendPage(page: LogPage, kind: 'changes' | 'push_changes'): void {
    this.sink.send(kind === 'changes' ? changesFrame(page, page.hasMore) : `{"type":"push_changes","changeSets":${page.json}}`);
    if (page.lastStamp) this.position = ownStamp(page.lastStamp);
  }
}

/**
 * A copy of `stamp` with memory of its own, for a position (or the floor
 * seen) the stream may keep as long as its socket idles. Stamps decoded from a client's cursor or
 * copied out of the log are 30-byte views of one of Node's shared 8 KiB
 * Buffer pool slabs, and keeping one keeps the whole slab: measured, 1.3 to
 * 1.8 KB per idle socket after a catch-up, against about 230 bytes for the
 * copy. Stamps of live pushes are shared by every socket of a database and
 * are kept as they are.
 */
function ownStamp(stamp: Buffer): Buffer {
  const own = Buffer.allocUnsafeSlow(stamp.length);
  own.set(stamp);
  return own;
}

function changesFrame(page: LogPage, hasMore: boolean): string {
  // The page is already JSON text; splice it in rather than parse and re-serialize.
  return `{"type":"changes","changeSets":${page.json},"hasMore":${hasMore}}`;
}
