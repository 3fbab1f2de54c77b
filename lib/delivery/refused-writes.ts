import { compareHlc, hlcFromWire, hlcToWire } from '../protocol/hlc.js';
import { ErrorCode } from '../errors.js';
import { smallestHlc } from './backlog.js';

/**
 * Error codes of a refused write that a later attempt may cure: the shared
 * log (cluster) or the archive (S3 ack mode) could not take it, or the
 * database was closing. Nothing of the refused message was stored.
 */
const RETRYABLE = new Set<string>([ErrorCode.StorageUnavailable, ErrorCode.StoreClosed]);

/** True when a write refused with `code` is worth pulling again later. */
export function isRetryableRefusal(code: string): boolean {
  return RETRYABLE.has(code);
}

/** Options of {@link RefusedWrites}. */
export interface RefusedWritesOptions {
  /** Sends a text frame on the socket. */
  send(frame: string): void;
  /** The database's server site id (base64url), the `siteId` of the pull. */
  serverSiteId: string;
  /**
   * Whether writes to the database would be taken now (a cluster: Redis is
   * connected). While it answers false, the pull waits another delay instead
   * of provoking one more refusal. Without it, the pull is sent on each delay.
   */
  writable?(): boolean;
  /** First wait after a refusal, in ms. @default 1000 */
  initialDelayMs?: number;
  /** Longest wait, in ms; the wait doubles after each refusal until a message is accepted. @default 30000 */
  maxDelayMs?: number;
}

/**
 * Gets a real client's refused writes back once writes work again
 * (docs/protocol.md §9). A real client told STORAGE_UNAVAILABLE (or
 * STORE_CLOSED, or RATE_LIMITED) does not retry (§8): its changes would stay
 * on the device until its next local commit or reconnect. So after such a
 * refusal this waits (1 s, doubling with each further refusal up to 30 s,
 * and then for as long as `writable()` says no, looking again every 1 s),
 * then sends `request_changes` {server site id, an HLC just below the
 * smallest HLC in the refused message, of a change set, a change or a
 * migration}; the client answers with an `apply_changes` holding its facts
 * after that HLC, which are those change sets again. (Just below the
 * smallest change-set HLC would leave out every fact of a transaction but
 * its last: the client picks facts by their own HLC, and a change set's
 * `hlc` is its largest.) A later accepted message
 * that covers them (the client sent them itself) cancels the pull.
 * One per socket; `close()` stops its timer.
 */
export class RefusedWrites {
  private readonly options: RefusedWritesOptions;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  /** The smallest HLC refused and not yet resent, if any. */
  private since?: Buffer;
  private delayMs: number;
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(options: RefusedWritesOptions) {
    this.options = options;
    this.initialDelayMs = options.initialDelayMs ?? 1000;
    this.maxDelayMs = options.maxDelayMs ?? 30_000;
    this.delayMs = this.initialDelayMs;
  }

  /** Whether a pull is waiting (some refused change sets have not been taken yet). */
  get pending(): boolean {
    return this.since !== undefined;
  }

  /** A message whose smallest HLC (smallestFactHlc) is `firstHlc` was refused with a retryable code. */
  refused(firstHlc: Buffer): void {
    if (this.closed) return;
    if (!this.since || compareHlc(firstHlc, this.since) < 0) this.since = firstHlc;
    this.schedule();
  }

  /** A message whose smallest HLC (smallestFactHlc) is `firstHlc` was accepted. */
  accepted(firstHlc: Buffer | undefined): void {
    this.delayMs = this.initialDelayMs;
    // The client resent from at or before the refused point: nothing to pull.
    if (this.since && firstHlc && compareHlc(firstHlc, this.since) <= 0) this.cancel();
  }

  /** Stops the timer for good (the socket closed). */
  close(): void {
    this.closed = true;
    this.cancel();
  }

  private cancel(): void {
    this.since = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Waits the current delay, and doubles it for the next refusal (reset by an accepted message). */
  private schedule(): void {
    if (this.timer) return;
    const delay = this.delayMs;
    this.delayMs = Math.min(this.maxDelayMs, this.delayMs * 2);
    this.wait(delay);
  }

  private wait(delayMs: number): void {
    this.timer = setTimeout(() => this.fire(), delayMs);
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    if (this.closed || !this.since) return;
    if (this.options.writable && !this.options.writable()) {
      // Still down: look again soon (a cheap local check), so the pull goes out promptly once it is back.
      this.wait(this.initialDelayMs);
      return;
    }
    const since = hlcJustBefore(this.since);
    this.since = undefined;
    this.options.send(JSON.stringify({ type: 'request_changes', siteId: this.options.serverSiteId, sinceHLC: hlcToWire(since) }));
  }
}

/**
 * The smallest HLC of a parsed `apply_changes` message, of a change set, a
 * change or a migration (as smallestFactHlc in backlog.ts), for a write
 * refused before it was validated (RATE_LIMITED): what
 * {@link RefusedWrites.refused} takes. Undefined when `message` is not an
 * `apply_changes` or holds no valid HLC; invalid ones are passed over
 * (nothing of such a message is pulled that the client could not resend
 * anyway).
 */
export function refusedApplyHlc(message: unknown): Buffer | undefined {
  if (typeof message !== 'object' || message === null) return undefined;
  const { type, changes } = message as { type?: unknown; changes?: unknown };
  if (type !== 'apply_changes' || !Array.isArray(changes)) return undefined;
  const hlcs: Buffer[] = [];
  const take = (item: unknown): void => {
    try {
      hlcs.push(hlcFromWire(typeof item === 'object' && item !== null ? (item as { hlc?: unknown }).hlc : undefined));
    } catch {
      // Not an HLC: passed over.
    }
  };
  for (const set of changes as unknown[]) {
    take(set);
    if (typeof set !== 'object' || set === null) continue;
    const { changes: facts, schemaMigrations } = set as { changes?: unknown; schemaMigrations?: unknown };
    if (Array.isArray(facts)) for (const fact of facts as unknown[]) take(fact);
    if (Array.isArray(schemaMigrations)) for (const migration of schemaMigrations as unknown[]) take(migration);
  }
  return smallestHlc(hlcs);
}

/** The HLC right before `hlc` in the bytewise order of docs/protocol.md §1 (itself when it is all zeros). */
export function hlcJustBefore(hlc: Buffer): Buffer {
  const out = Buffer.from(hlc);
  for (let i = out.length - 1; i >= 0; i--) {
    if (out[i]! > 0) {
      out[i]! -= 1;
      return out;
    }
    out[i] = 0xff;
  }
  return Buffer.from(hlc);
}
