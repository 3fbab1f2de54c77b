import { compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { ChangeSet } from '../protocol/messages.js';

/**
 * The change sets one committed message added to the log, ready to push to
 * every other site on the database: each `hlc` is the coordinator's stamp
 * (docs/protocol.md §4, §5), never the origin's. The frame is serialized once, on
 * first use, and shared by every subscriber.
 */
export class Push {
  /** Stamp of each change set (30 bytes), same order. */
  readonly stamps: readonly Buffer[];
  private text?: string;
  private bytes?: Buffer;
  private readonly json?: readonly string[];
  private sets?: readonly ChangeSet[];
  private readonly accepted: readonly ChangeSet[];

  /**
   * `accepted[i]` was stamped `stamps[i]`; both in stamp order. At least one
   * change set. `json[i]`, when given, is `accepted[i]` as JSON text with
   * `hlc` replaced by its stamp (ApplyOutcome.acceptedJson): the frame then
   * joins these texts instead of serializing the change sets again.
   * @throws TypeError when the lengths differ or there is no change set.
   */
  constructor(accepted: readonly ChangeSet[], stamps: readonly Buffer[], json?: readonly string[]) {
    if (accepted.length === 0 || accepted.length !== stamps.length || (json && json.length !== stamps.length)) {
      throw new TypeError('Push needs one stamp (and, if given, one JSON text) per change set, and at least one change set');
    }
    this.stamps = stamps;
    this.accepted = accepted;
    if (json) this.json = json;
  }

  /** Change sets in stamp order, `hlc` replaced by the stamp. */
  get changeSets(): readonly ChangeSet[] {
    return (this.sets ??= this.accepted.map((set, i) => ({ ...set, hlc: hlcToWire(this.stamps[i]!) })));
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
    return (this.text ??= this.json ? joinedFrame(this.json) : pushFrame(this.changeSets));
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
    if (from === 0) return this.frame();
    return this.json ? joinedFrame(this.json.slice(from)) : pushFrame(this.changeSets.slice(from));
  }
}

function pushFrame(changeSets: readonly ChangeSet[]): string {
  return JSON.stringify({ type: 'push_changes', changeSets });
}

/** The same text as pushFrame, from each change set's JSON. */
function joinedFrame(json: readonly string[]): string {
  return `{"type":"push_changes","changeSets":[${json.join(',')}]}`;
}
