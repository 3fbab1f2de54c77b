import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Frames a real client sends once per connection and never again, whatever
 * it is answered: the `handshake`, then `resume_snapshot` or `get_snapshot`,
 * then one `get_changes` (docs/protocol.md §8). Answering one of them with
 * RATE_LIMITED would leave the client without a session, a snapshot or its
 * changes until it reconnects, so over the rate they are delayed instead
 * (docs/protocol.md §4, limits, and §9).
 */
const ONCE_PER_CONNECTION = new Set(['handshake', 'get_changes', 'get_snapshot', 'resume_snapshot']);

/**
 * Largest refused frame parsed to see whether it is one of those (bytes).
 * Each is a few hundred bytes; a resume checkpoint lists its completed
 * tables, so this leaves room for thousands of them. A bigger frame over the
 * rate is refused without being parsed.
 */
export const MAX_DELAYED_FRAME_BYTES = 64 * 1024;

/** Whether a message of this `type` is delayed rather than refused when it comes over the rate. */
export function delayedOverRate(type: unknown): boolean {
  return typeof type === 'string' && ONCE_PER_CONNECTION.has(type);
}

/**
 * The wait of one session for rate tokens. `until` sleeps the time the
 * bucket named, then asks again, as long as it takes; `cancel` (the socket
 * closed) ends the wait at once with false. One wait at a time: the session
 * handles its frames one after another.
 */
export class RateWait {
  private readonly aborter = new AbortController();

  /**
   * Resolves true once `take()` grants a token (it returns 0; else the ms
   * until one may be there), first waiting `waitMs`; false when cancelled.
   */
  async until(waitMs: number, take: () => number): Promise<boolean> {
    const { signal } = this.aborter;
    for (let wait = waitMs; wait > 0; wait = take()) {
      try {
        await sleep(wait, undefined, { signal });
      } catch {
        return false;
      }
    }
    return !signal.aborted;
  }

  /** Ends the wait in progress (false) and any later one. */
  cancel(): void {
    this.aborter.abort();
  }
}
