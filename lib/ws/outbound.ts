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

/**
 * The write side of one WebSocket: counts frames handed to `ws` and those it
 * has flushed to the kernel, so that writers can wait for the socket to
 * drain (backpressure) instead of queueing without limit, and notices a
 * client that stopped reading altogether.
 */
export class Outbound implements DeliverySink {
  private readonly socket: WebSocket;
  private readonly limits: OutboundLimits;
  private readonly onStalled: (queuedBytes: number) => void;
  /** Frames handed to ws, and how many of them it has flushed (or dropped on close). */
  private sent = 0;
  private flushedCount = 0;
  private waiters: { target: number; resolve: () => void }[] = [];
  private hardLimitTimer?: NodeJS.Timeout;
  private ended = false;

  /** `onStalled` is called when the socket stayed over the hard limit for `sendHardLimitMs` (the caller closes it). */
  constructor(socket: WebSocket, limits: OutboundLimits, onStalled: (queuedBytes: number) => void) {
    this.socket = socket;
    this.limits = limits;
    this.onStalled = onStalled;
  }

  /** Flush callback of every send: counts the frame and wakes whoever waits for the buffer to drain. */
  private readonly onFlushed = (): void => {
    this.flushedCount++;
    while (this.waiters.length > 0 && this.waiters[0]!.target <= this.flushedCount) this.waiters.shift()!.resolve();
  };

  get open(): boolean {
    return !this.ended && this.socket.readyState === this.socket.OPEN;
  }

  get bufferedBytes(): number {
    return this.socket.bufferedAmount;
  }

  send(text: string): void {
    if (!this.open) return;
    this.sent++;
    this.socket.send(text, this.onFlushed);
    const { sendHardLimitBytes, sendHardLimitMs } = this.limits;
    if (sendHardLimitMs > 0 && !this.hardLimitTimer && this.socket.bufferedAmount > sendHardLimitBytes) {
      // Over the hard limit now; if it still is after sendHardLimitMs the client is not reading.
      this.hardLimitTimer = setTimeout(() => {
        this.hardLimitTimer = undefined;
        if (this.ended || this.socket.bufferedAmount <= sendHardLimitBytes) return;
        this.onStalled(this.socket.bufferedAmount);
      }, sendHardLimitMs);
      this.hardLimitTimer.unref();
    }
  }

  flushed(): Promise<void> {
    if (this.flushedCount >= this.sent || this.ended) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ target: this.sent, resolve }));
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
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
  }
}
