import type { WebSocket } from 'ws';
import type { DeliverySink } from '../delivery/ports.js';

/** Send limits of one socket (see the options of the same names). */
export interface OutboundLimits {
  /** Above this many bytes queued, replies and snapshot chunks wait for the socket to drain. */
  sendHighWaterBytes: number;
  /** With more than this queued for `sendHardLimitMs`, the client is not reading: `onStalled` is called. */
  sendHardLimitBytes: number;
  /** 0 disables the hard limit. */
  sendHardLimitMs: number;
}

/** ws options of bytes sent as a text frame (the opcode a JSON frame always has). */
const TEXT_FRAME = Object.freeze({ binary: false });

/** Who an `Outbound` tells that its client stopped reading (the session, which closes the socket). */
export interface OutboundOwner {
  /** The socket stayed over `sendHardLimitBytes` for `sendHardLimitMs`; `queuedBytes` are still queued. */
  sendStalled(queuedBytes: number): void;
}

/** A frame writer waiting for the socket to flush the frames sent before it. */
interface Waiter {
  /** Resolved once this many frames have been flushed. */
  target: number;
  resolve(): void;
}

/**
 * The write side of one WebSocket: counts frames handed to `ws` and those it
 * has flushed to the kernel, so that writers can wait for the socket to
 * drain (backpressure) instead of queueing without limit, and notices a
 * client that stopped reading altogether.
 *
 * An idle socket (everything flushed, nobody waiting) holds no callback,
 * array or timer of its own here: they are made while frames are in flight.
 */
export class Outbound implements DeliverySink {
  private readonly socket: WebSocket;
  private readonly limits: OutboundLimits;
  private readonly owner: OutboundOwner;
  /** Frames handed to ws, and how many of them it has flushed (or dropped on close). */
  private sent = 0;
  private flushedCount = 0;
  /** Flush callback of every send while frames are in flight; dropped once all are flushed. */
  private onFlushed?: () => void;
  /** Oldest first; absent while nobody waits. */
  private waiters?: Waiter[];
  private hardLimitTimer?: NodeJS.Timeout;
  private ended = false;

  /** `owner.sendStalled` is called when the socket stayed over the hard limit for `sendHardLimitMs` (the owner closes it). */
  constructor(socket: WebSocket, limits: OutboundLimits, owner: OutboundOwner) {
    this.socket = socket;
    this.limits = limits;
    this.owner = owner;
  }

  get open(): boolean {
    return !this.ended && this.socket.readyState === this.socket.OPEN;
  }

  get bufferedBytes(): number {
    return this.socket.bufferedAmount;
  }

  /** Queues a text frame: JSON text, or its UTF-8 bytes (DeliverySink.send). */
  send(frame: string | Buffer): void {
    if (!this.open) return;
    this.sent++;
    const onFlushed = this.onFlushed ??= this.flushCallback();
    if (typeof frame === 'string') this.socket.send(frame, onFlushed);
    else this.socket.send(frame, TEXT_FRAME, onFlushed);
    const { sendHardLimitBytes, sendHardLimitMs } = this.limits;
    if (sendHardLimitMs > 0 && !this.hardLimitTimer && this.socket.bufferedAmount > sendHardLimitBytes) this.armHardLimit();
  }

  flushed(): Promise<void> {
    if (this.flushedCount >= this.sent || this.ended) return Promise.resolve();
    return new Promise((resolve) => (this.waiters ??= []).push({ target: this.sent, resolve }));
  }

  /** Resolves when the socket's buffer is under the send high-water mark (at once if it is). */
  writable(): Promise<void> {
    if (this.ended || this.socket.bufferedAmount <= this.limits.sendHighWaterBytes) return Promise.resolve();
    return this.flushed();
  }

  /** The socket closed: nothing more will flush, so every waiter is woken and the timer stops. */
  end(): void {
    this.ended = true;
    clearTimeout(this.hardLimitTimer);
    const waiters = this.waiters ?? [];
    this.waiters = undefined;
    for (const waiter of waiters) waiter.resolve();
  }

  /** The callback ws calls once a frame is flushed: counts it and wakes whoever waits for the buffer to drain. */
  private flushCallback(): () => void {
    return () => {
      this.flushedCount++;
      const waiters = this.waiters;
      while (waiters && waiters.length > 0 && waiters[0]!.target <= this.flushedCount) waiters.shift()!.resolve();
      if (waiters?.length === 0) this.waiters = undefined;
      if (this.flushedCount === this.sent) this.onFlushed = undefined;
    };
  }

  /** Over the hard limit now; if it still is after sendHardLimitMs the client is not reading. */
  private armHardLimit(): void {
    this.hardLimitTimer = setTimeout(() => {
      this.hardLimitTimer = undefined;
      if (this.ended || this.socket.bufferedAmount <= this.limits.sendHardLimitBytes) return;
      this.owner.sendStalled(this.socket.bufferedAmount);
    }, this.limits.sendHardLimitMs);
    this.hardLimitTimer.unref();
  }
}
