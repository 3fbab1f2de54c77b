import { compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { ChangeSet } from '../protocol/messages.js';

/**
 * The change sets one committed message added to the log, ready to push to
 * every other site on the database: each `hlc` is the coordinator's stamp
 * (docs/protocol.md §4, §5), never the origin's. The frame is serialized once, on
 * first use, and shared by every subscriber.
 */
export class Push {
  /** Change sets in stamp order, `hlc` replaced by the stamp. */
  readonly changeSets: readonly ChangeSet[];
  /** Stamp of each change set (30 bytes), same order. */
  readonly stamps: readonly Buffer[];
  private text?: string;
  private bytes?: Buffer;

  /** `accepted[i]` was stamped `stamps[i]`; both in stamp order. At least one change set. */
  constructor(accepted: readonly ChangeSet[], stamps: readonly Buffer[]) {
    if (accepted.length === 0 || accepted.length !== stamps.length) throw new TypeError('Push needs one stamp per change set, and at least one change set');
    this.stamps = stamps;
    this.changeSets = accepted.map((set, i) => ({ ...set, hlc: hlcToWire(stamps[i]!) }));
  }

  /** Stamp of the first change set. */
  get first(): Buffer {
    return this.stamps[0]!;
  }

  /** Stamp of the last change set. */
  get last(): Buffer {
    return this.stamps[this.stamps.length - 1]!;
  }

  /** The `push_changes` frame of every change set. */
  frame(): string {
    return (this.text ??= pushFrame(this.changeSets));
  }

  /**
   * The frame's UTF-8 bytes, encoded once for every subscriber: a socket
   * sent a string encodes it again (ws measures it, the stream writes it),
   * ten times over for ten subscribers.
   */
  frameBytes(): Buffer {
    return (this.bytes ??= Buffer.from(this.frame(), 'utf8'));
  }

  /** The `push_changes` frame of the change sets stamped after `position`, or undefined if there are none. */
  frameAfter(position: Buffer): string | undefined {
    const from = this.stamps.findIndex((stamp) => compareHlc(stamp, position) > 0);
    if (from === -1) return undefined;
    return from === 0 ? this.frame() : pushFrame(this.changeSets.slice(from));
  }
}

function pushFrame(changeSets: readonly ChangeSet[]): string {
  return JSON.stringify({ type: 'push_changes', changeSets });
}
