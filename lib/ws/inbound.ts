import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';

/**
 * How long the budget waits, while it is over its limit and some sender is
 * held, for any message to complete or be released before it lets one more
 * held sender read. See `InboundBudget` for why.
 */
const DEFAULT_STALL_MS = 2000;

/** Options of `createInboundBudget()`. */
export interface InboundBudgetOptions {
  /** Bytes being received or parsed, across all members, above which senders are held. Must be >= `maxMessageBytes`. */
  limitBytes: number;
  /** Largest message a member may send (ws closes a socket whose frame is larger with 1009). */
  maxMessageBytes: number;
  /** Stall window of the watchdog, in ms. @default 2000 */
  stallMs?: number;
}

/** One WebSocket's share of the budget (see `InboundBudget.track`). */
export interface InboundMeter {
  /**
   * The oldest message received on this socket has been parsed and handled:
   * its bytes (payload, frame headers and masks, every fragment) leave the
   * budget. Call once per 'message' event, in order. No-op once closed.
   */
  release(): void;
  /**
   * Keeps the bytes of the message being handled (the oldest one not yet
   * released) counted until the returned function is called, whether
   * `release()` comes before or after: for work that outlives the message's
   * turn, such as an apply whose commit is still running. Its parsed form
   * costs several times its bytes, so it must count until it is done.
   */
  keep(): () => void;
  /** Releases everything this socket still holds and stops counting (also done on the socket's 'close'). Idempotent. */
  close(): void;
  /** Bytes of this socket in the budget: received and not yet released. */
  readonly bytes: number;
}

/** An HTTP body's share of the budget (see `InboundBudget.reserve`). */
export interface InboundReservation {
  /** Resolves true once the body may be read, or false if `close()` came first. */
  readonly ready: Promise<boolean>;
  /** The whole body has been read: its bytes now wait only for the handler. */
  received(): void;
  /** The reply has gone (or the request died): the reserved bytes leave the budget. Idempotent. */
  close(): void;
}

/**
 * The inbound budget of one router (docs/protocol.md §9: frames up to
 * `maxMessageBytes` are taken while the bytes being read or parsed across all
 * sockets stay bounded). Figures are live, for metrics.
 */
export interface InboundBudget {
  /**
   * Counts the bytes of `ws` as they arrive on `socket` (the net socket under
   * it, i.e. the upgrade's socket; perMessageDeflate must be off so raw bytes
   * are frame bytes) until the session releases each message.
   *
   * Takes over `ws.pause()`/`ws.resume()`: the socket reads only when neither
   * its owner (the session's own flow control) nor the budget holds it, so
   * the two never undo each other. Once the socket is closing its bytes no
   * longer count, and an owner's resume() is honoured so the close handshake
   * can finish.
   */
  track(ws: WebSocket, socket: Duplex): InboundMeter;
  /**
   * Claims `bytes` for an HTTP body of known size (its Content-Length, or
   * `maxMessageBytes` when unknown). Granted at once while the budget is under
   * its limit, else queued first come, first served.
   */
  reserve(bytes: number): InboundReservation;
  /** The limit, in bytes. */
  readonly limit: number;
  /** Bytes received (or reserved) and not yet released. */
  readonly used: number;
  /** Sockets held by the budget plus HTTP bodies waiting for room. */
  readonly paused: number;
  /** Sockets and bodies tracked. */
  readonly size: number;
}

/**
 * Creates a budget with no state outside itself. Throws a TypeError when
 * `limitBytes < maxMessageBytes` (a lone maximum message must always fit).
 *
 * How it bounds memory: `ws` buffers a whole frame before it emits
 * 'message', so bytes are counted as they arrive on the raw socket, and a
 * small scanner follows the frame headers to know where each message ends.
 * A message's bytes stay counted until the session has handled it (an
 * apply: until it is answered, see `keep()`). Over the limit, a socket that
 * delivers more bytes is paused (TCP then pushes back on its client); when
 * usage falls back to the limit or under, every held socket reads again. An
 * HTTP body is claimed whole before it is read and waits while the budget is
 * at or over its limit.
 *
 * Why it never deadlocks: bytes of whole messages are released once handled,
 * so only partial frames can hold the budget forever. When every counted
 * byte is part of an unfinished message and nobody is reading one, the
 * socket with the largest unfinished message is let read (it is bounded by
 * `maxMessageBytes`: ws closes a larger frame with 1009). It keeps reading
 * until that message is whole. So in steady state usage stays under
 * `limitBytes` plus one message let finish past it, one HTTP body granted
 * just under it, and one socket read (64 KiB) per held socket.
 *
 * Stalled senders (slowloris): a sender let read that then sends nothing, or
 * trickles, would hold everyone else up. A watchdog handles it: while some
 * sender is held and nothing completes or is released for `stallMs`, one more
 * held sender is let read (the one with the largest unfinished message, else
 * the one held longest). A stalled sender thus delays the others by `stallMs`
 * per turn rather than forever, at the price of letting the budget grow by at
 * most one message per `stallMs` during which nothing at all progresses.
 * Stalled senders are not closed: a slow link looks the same, and closing it
 * would make its client resend the whole batch.
 */
export function createInboundBudget(options: InboundBudgetOptions): InboundBudget {
  const { limitBytes, maxMessageBytes, stallMs = DEFAULT_STALL_MS } = options;
  for (const [name, value] of Object.entries({ limitBytes, maxMessageBytes, stallMs })) {
    if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`createInboundBudget: ${name} must be a positive integer, got ${JSON.stringify(value)}`);
  }
  if (limitBytes < maxMessageBytes) {
    throw new TypeError(`createInboundBudget: limitBytes (${limitBytes}) must be at least maxMessageBytes (${maxMessageBytes})`);
  }
  return new Budget(limitBytes, stallMs);
}

/** What the budget knows of one WebSocket or HTTP body. */
abstract class Member {
  /** Bytes received (or reserved) and not released. */
  counted = 0;
  /** Of `counted`, the bytes of whole messages waiting for their handler. */
  completeBytes = 0;
  /** Held by the budget (socket paused, or body waiting for room). */
  held = false;
  closed = false;

  constructor(protected readonly budget: Budget) {}

  /** Bytes of the message in progress. */
  get partial(): number {
    return this.counted - this.completeBytes;
  }

  /** Stop reading. */
  abstract hold(): void;
  /** Read again. */
  abstract unhold(): void;
}

class Budget implements InboundBudget {
  readonly limit: number;
  used = 0;
  private readonly stallMs: number;
  private readonly members = new Set<Member>();
  /** Held members in the order they were held (WebSockets and waiting bodies). */
  private readonly held = new Set<Member>();
  /** Members let read while the budget is over its limit. */
  private readonly readers = new Set<Member>();
  /** Bytes of whole messages not yet released, across members. */
  private completeTotal = 0;
  /** Bumped whenever a message completes, is released or a member with bytes closes. */
  private progress = 0;
  private progressSeen = 0;
  private watchdog?: NodeJS.Timeout;

  constructor(limit: number, stallMs: number) {
    this.limit = limit;
    this.stallMs = stallMs;
  }

  get paused(): number {
    return this.held.size;
  }

  get size(): number {
    return this.members.size;
  }

  track(ws: WebSocket, socket: Duplex): InboundMeter {
    const meter = new SocketMeter(this, ws, socket);
    if (!meter.closed) this.members.add(meter);
    return meter;
  }

  reserve(bytes: number): InboundReservation {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new TypeError(`InboundBudget.reserve: bytes must be an integer >= 0, got ${JSON.stringify(bytes)}`);
    const body = new BodyReservation(this, bytes);
    this.members.add(body);
    if (this.used < this.limit) body.grant();
    else this.hold(body);
    return body;
  }

  /** Bytes arrived (or were granted) for `member`. */
  add(member: Member, bytes: number): void {
    member.counted += bytes;
    this.used += bytes;
  }

  /** Over the limit, a member that is not a reader stops reading. */
  checkHold(member: Member): void {
    if (this.used > this.limit && !member.held && !this.readers.has(member)) this.hold(member);
  }

  /** A whole message of `bytes` has arrived on `member`. */
  complete(member: Member, bytes: number): void {
    member.completeBytes += bytes;
    this.completeTotal += bytes;
    this.progress++;
    // A reader that finished its message waits like everyone else: what it
    // holds now is released by its handler, and letting it start another
    // message would let one fast sender stack messages past the limit.
    this.readers.delete(member);
  }

  /** `bytes` of `member` leave the budget; `whole` says they were a whole message's. */
  remove(member: Member, bytes: number, whole: boolean): void {
    member.counted -= bytes;
    this.used -= bytes;
    if (whole) {
      member.completeBytes -= bytes;
      this.completeTotal -= bytes;
      this.progress++;
    }
  }

  drop(member: Member): void {
    if (member.counted > 0) this.progress++;
    this.used -= member.counted;
    this.completeTotal -= member.completeBytes;
    member.counted = 0;
    member.completeBytes = 0;
    this.members.delete(member);
    this.readers.delete(member);
    this.held.delete(member);
    member.held = false;
    this.evaluate();
  }

  /** Re-checks who may read after any change in usage. */
  evaluate(): void {
    if (this.used <= this.limit) {
      this.readers.clear();
      for (const member of this.held) {
        // A waiting body takes room all at once: admit bodies only while under the limit.
        if (member instanceof BodyReservation && this.used >= this.limit) continue;
        this.release(member);
      }
    } else if (this.completeTotal === 0 && !this.someReaderHasPartial()) {
      // Everything counted is an unfinished message and nobody finishes one:
      // without this, nothing would ever be released.
      const next = this.largestPartial();
      if (next) this.admit(next);
    }
    this.armWatchdog();
  }

  private hold(member: Member): void {
    member.held = true;
    this.held.add(member);
    member.hold();
    this.armWatchdog();
  }

  private release(member: Member): void {
    this.held.delete(member);
    member.held = false;
    member.unhold();
  }

  private admit(member: Member): void {
    this.readers.add(member);
    if (member.held) this.release(member);
  }

  private someReaderHasPartial(): boolean {
    for (const reader of this.readers) if (reader.partial > 0) return true;
    return false;
  }

  /** The member with the largest unfinished message that is not a reader yet. */
  private largestPartial(): Member | undefined {
    let best: Member | undefined;
    for (const member of this.members) {
      if (member.partial > 0 && !this.readers.has(member) && (!best || member.partial > best.partial)) best = member;
    }
    return best;
  }

  /**
   * Whether held members may be stalled behind others: usage at or over the
   * limit. At exactly the limit no socket is held (evaluate() releases them
   * all), but a body waits there (bodies are granted only under the limit),
   * so bodies granted up to exactly the limit that then stall must not hold
   * it forever.
   */
  private congested(): boolean {
    return this.held.size > 0 && this.used >= this.limit;
  }

  private armWatchdog(): void {
    const needed = this.congested();
    if (!needed) {
      clearTimeout(this.watchdog);
      this.watchdog = undefined;
      return;
    }
    if (this.watchdog) return;
    this.progressSeen = this.progress;
    this.watchdog = setTimeout(() => this.onWatchdog(), this.stallMs);
    this.watchdog.unref();
  }

  private onWatchdog(): void {
    this.watchdog = undefined;
    if (this.progress === this.progressSeen && this.congested()) {
      let next: Member | undefined;
      for (const member of this.held) {
        if (member.partial > 0 && (!next || member.partial > next.partial)) next = member;
      }
      // Sets iterate in insertion order: the first held member waited longest.
      next ??= this.held.values().next().value;
      if (next) this.admit(next);
    }
    this.armWatchdog();
  }
}

/**
 * Where a tracked WebSocket and its net socket find their meter: the
 * listeners and the pause()/resume() of every tracked socket are the shared
 * functions below, so an idle socket keeps no closure of its own.
 */
const kMeter = Symbol('sync-coordinator:inbound-meter');

interface Metered {
  [kMeter]?: SocketMeter;
}

function onMeteredData(this: Duplex, chunk: Buffer): void {
  (this as Duplex & Metered)[kMeter]?.received(chunk);
}

function onMeteredClose(this: WebSocket): void {
  (this as WebSocket & Metered)[kMeter]?.close();
}

function pauseMetered(this: WebSocket): void {
  (this as WebSocket & Metered)[kMeter]!.ownerPause();
}

function resumeMetered(this: WebSocket): void {
  (this as WebSocket & Metered)[kMeter]!.ownerResume();
}

/**
 * Counts a WebSocket's raw bytes and follows its frame headers (RFC 6455
 * §5.2) to find where each message ends: a data message ends with its FIN
 * frame; a control frame (ping, pong, close) is handled by ws as soon as it
 * is whole, so its bytes leave the budget then.
 */
class SocketMeter extends Member implements InboundMeter {
  private readonly ws: WebSocket;
  private readonly socket: Duplex;
  /** ws's own pause() and resume() (called with the WebSocket as `this`), which the budget and the owner share. */
  private readonly wsPause: (this: WebSocket) => void;
  private readonly wsResume: (this: WebSocket) => void;
  private ownerPaused = false;
  /**
   * Wire sizes of whole messages not yet released, oldest first: the oldest
   * in `oldestMessage` (0: none), the rest in `laterMessages`, made only
   * while more than one waits (an idle socket holds no array).
   */
  private oldestMessage = 0;
  private laterMessages?: number[];
  // Frame scanner state: numbers rather than a header buffer, which would
  // cost every idle socket a Buffer and its ArrayBuffer.
  /** Header bytes of the current frame read so far; 0 at a frame's start and in its payload. */
  private headRead = 0;
  /** Length of the current frame's header (2 to 14 bytes), known from its second byte. */
  private headLength = 2;
  /** Extended payload length bytes of the current header (0, 2 or 8). */
  private lengthBytes = 0;
  /** Payload bytes of the current frame still to come (while its header is read: its length so far). */
  private payloadLeft = 0;
  private frameBytes = 0;
  private messageBytes = 0;
  private control = false;
  private fin = false;

  constructor(budget: Budget, ws: WebSocket, socket: Duplex) {
    super(budget);
    this.ws = ws;
    this.socket = socket;
    this.wsPause = ws.pause;
    this.wsResume = ws.resume;
    if (ws.readyState !== ws.OPEN) {
      this.closed = true;
      return;
    }
    (ws as WebSocket & Metered)[kMeter] = this;
    (socket as Duplex & Metered)[kMeter] = this;
    ws.pause = pauseMetered;
    ws.resume = resumeMetered;
    socket.on('data', onMeteredData);
    ws.on('close', onMeteredClose);
  }

  get bytes(): number {
    return this.counted;
  }

  hold(): void {
    this.wsPause.call(this.ws);
  }

  unhold(): void {
    if (!this.ownerPaused) this.wsResume.call(this.ws);
  }

  /** The owner's `ws.pause()`. */
  ownerPause(): void {
    this.ownerPaused = true;
    this.wsPause.call(this.ws);
  }

  /** The owner's `ws.resume()`: reads again unless the budget holds the socket (a closing socket always reads). */
  ownerResume(): void {
    this.ownerPaused = false;
    if (!this.held || this.ws.readyState !== this.ws.OPEN) this.wsResume.call(this.ws);
  }

  release(): void {
    if (this.closed) return;
    const size = this.oldestMessage;
    if (size === 0) return;
    this.oldestMessage = this.laterMessages?.shift() ?? 0;
    if (this.laterMessages?.length === 0) this.laterMessages = undefined;
    this.budget.remove(this, size, true);
    this.budget.evaluate();
  }

  keep(): () => void {
    const size = this.oldestMessage;
    if (this.closed || size === 0) return () => {};
    // Counted again as a whole message of its own: release() takes the
    // message's first count, the returned function this one.
    this.budget.add(this, size);
    this.budget.complete(this, size);
    let done = false;
    return () => {
      if (done || this.closed) return;
      done = true;
      this.budget.remove(this, size, true);
      this.budget.evaluate();
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.off('data', onMeteredData);
    this.ws.off('close', onMeteredClose);
    this.oldestMessage = 0;
    this.laterMessages = undefined;
    this.budget.drop(this);
  }

  /** Bytes arrived on the net socket. */
  received(chunk: Buffer): void {
    // Once closing, ws either discards what follows or reads only until the
    // close handshake ends (the session destroys the socket soon after), so
    // nothing of it should hold the budget.
    if (this.ws.readyState !== this.ws.OPEN) {
      this.close();
      return;
    }
    this.budget.add(this, chunk.length);
    this.scan(chunk);
    this.budget.checkHold(this);
    this.budget.evaluate();
  }

  private scan(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.headRead === 0 && this.payloadLeft > 0) {
        const take = Math.min(this.payloadLeft, chunk.length - i);
        i += take;
        this.payloadLeft -= take;
        this.frameBytes += take;
        if (this.payloadLeft === 0) this.endFrame();
        continue;
      }
      const byte = chunk[i++]!;
      const at = this.headRead++;
      this.frameBytes++;
      if (at === 0) {
        this.fin = (byte & 0x80) !== 0;
        this.control = (byte & 0x08) !== 0;
      } else if (at === 1) {
        const length7 = byte & 0x7f;
        this.lengthBytes = length7 === 126 ? 2 : length7 === 127 ? 8 : 0;
        this.headLength = 2 + this.lengthBytes + (byte & 0x80 ? 4 : 0);
        this.payloadLeft = this.lengthBytes === 0 ? length7 : 0;
      } else if (at < 2 + this.lengthBytes) {
        // Extended length, big-endian (a 64-bit one is exact up to 2^53, far above maxPayload).
        this.payloadLeft = this.payloadLeft * 256 + byte;
      }
      if (this.headRead < this.headLength) continue;
      this.headRead = 0;
      this.headLength = 2;
      if (this.payloadLeft === 0) this.endFrame();
    }
  }

  private endFrame(): void {
    const size = this.frameBytes;
    this.frameBytes = 0;
    if (this.control) {
      this.budget.remove(this, size, false);
      return;
    }
    this.messageBytes += size;
    if (!this.fin) return;
    if (this.oldestMessage === 0) this.oldestMessage = this.messageBytes;
    else (this.laterMessages ??= []).push(this.messageBytes);
    this.budget.complete(this, this.messageBytes);
    this.messageBytes = 0;
  }
}

/** An HTTP body: its bytes are claimed whole when it may be read, so it never needs pausing midway. */
class BodyReservation extends Member implements InboundReservation {
  readonly ready: Promise<boolean>;
  private readonly bytes: number;
  private settle!: (granted: boolean) => void;
  private granted = false;

  constructor(budget: Budget, bytes: number) {
    super(budget);
    this.bytes = bytes;
    this.ready = new Promise((resolve) => { this.settle = resolve; });
  }

  grant(): void {
    if (this.granted || this.closed) return;
    this.granted = true;
    this.budget.add(this, this.bytes);
    this.settle(true);
  }

  hold(): void {
    // Not granted yet: nothing to pause.
  }

  unhold(): void {
    this.grant();
  }

  received(): void {
    if (this.closed || !this.granted || this.completeBytes > 0) return;
    this.budget.complete(this, this.counted);
    this.budget.evaluate();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.settle(false);
    this.budget.drop(this);
  }
}

/**
 * Frames received but not yet handled, at most, before a session stops
 * reading its socket. Messages are handled one at a time, so without this a
 * client that sends faster than it is answered (or never reads the answers)
 * would queue parsed messages without limit; paused, TCP pushes back on it.
 */
export const MAX_PENDING_FRAMES = 64;

/**
 * Read flow control of one session: counts the frames (and their bytes) it
 * has received but not yet handled, pauses the socket past
 * MAX_PENDING_FRAMES or `maxBytes`, resumes it at half of both, and tells
 * the router's inbound budget (the meter) when each frame has been handled.
 */
export class FrameGate {
  private readonly ws: WebSocket;
  private readonly maxBytes: number;
  /** The socket's share of the router's inbound budget, if any. */
  readonly meter?: InboundMeter;
  private frames = 0;
  private bytes = 0;
  private paused = false;

  constructor(ws: WebSocket, maxBytes: number, meter?: InboundMeter) {
    this.ws = ws;
    this.maxBytes = maxBytes;
    this.meter = meter;
  }

  /** Frames received and not yet handled. */
  get pending(): number {
    return this.frames;
  }

  /** A frame of `size` bytes arrived and waits to be handled. */
  received(size: number): void {
    this.frames++;
    this.bytes += size;
    if (!this.paused && (this.frames >= MAX_PENDING_FRAMES || this.bytes >= this.maxBytes)) {
      this.paused = true;
      this.ws.pause();
    }
  }

  /** The oldest frame (of `size` bytes) has been handled. */
  handled(size: number): void {
    this.meter?.release();
    this.frames--;
    this.bytes -= size;
    if (this.paused && this.ws.readyState === this.ws.OPEN && this.frames <= MAX_PENDING_FRAMES / 2 && this.bytes < this.maxBytes / 2) {
      this.paused = false;
      this.ws.resume();
    }
  }

  /** Reads again while closing, or the client's answering close frame is never seen. */
  openForClose(): void {
    if (!this.paused) return;
    this.paused = false;
    this.ws.resume();
  }
}
