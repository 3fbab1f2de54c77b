import { compareHlc } from '../protocol/hlc.js';
import type { ChangeSet } from '../protocol/messages.js';

/**
 * What one commit accepted, as the write paths hand it to the hub (an
 * ApplyOutcome is one): `accepted[i]` was stamped `stamps[i]`, in stamp
 * order, and `acceptedJson[i]` is `accepted[i]` as JSON text with `hlc`
 * replaced by that stamp, the text the merge built for the log.
 */
export interface CommittedSets {
  readonly accepted: readonly ChangeSet[];
  readonly stamps: readonly Buffer[];
  readonly acceptedJson: readonly string[];
}

/**
 * The change sets one committed message added to the log, ready to push to
 * every other site on the database: each `hlc` is the coordinator's stamp
 * (docs/protocol.md §4, §5), never the origin's. The frame is joined from the
 * change sets' texts once, on first use, and shared by every subscriber.
 */
export class Push {
  /** Stamp of each change set (30 bytes), same order. */
  readonly stamps: readonly Buffer[];
  /** Each change set's JSON text, same order. */
  private readonly json: readonly string[];
  private text?: string;
  private bytes?: Buffer;

  /**
   * `json[i]` is the change set stamped `stamps[i]` as JSON text, `hlc` being
   * that stamp (CommittedSets.acceptedJson); both in stamp order.
   * @throws TypeError when the lengths differ or there is no change set.
   */
  constructor(stamps: readonly Buffer[], json: readonly string[]) {
    if (stamps.length === 0 || json.length !== stamps.length) {
      throw new TypeError('Push needs one JSON text per stamp, and at least one change set');
    }
    this.stamps = stamps;
    this.json = json;
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
    return (this.text ??= pushFrame(this.json));
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
    return from === 0 ? this.frame() : pushFrame(this.json.slice(from));
  }
}

function pushFrame(json: readonly string[]): string {
  return `{"type":"push_changes","changeSets":[${json.join(',')}]}`;
}
