import { SyncError, ErrorCode } from '../errors.js';
import { compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { ChangeSet } from '../protocol/messages.js';
import { siteIdToWire } from '../protocol/site-id.js';
import { changeSetJson } from '../protocol/values.js';
import { META_FLOOR, NS_LOG, LOG_MIGRATION, logKeyAfter, logEntryFrom, logEntryOrigin, logEntryPayload, logKeyStamp, logKeyHasStamp } from './keys.js';
import type { ReplicaContext } from './context.js';

/** Bytes per native read: about one default page of changes. */
const PAGE_READ_AHEAD = 256 * 1024;

/** One page of `changesSince`. */
export interface ChangesPage {
  /** Whole transactions in cursor order; `hlc` is each one's stamp (parsed on access). */
  readonly changeSets: ChangeSet[];
  /** The same change sets as JSON text of an array, ready to send. */
  readonly json: string;
  /** Whether more transactions follow the last one returned. */
  readonly hasMore: boolean;
  /** Column changes and migrations in the page. */
  readonly changeCount: number;
  /** Transactions in the page. */
  readonly transactionCount: number;
  /** `hlc` of the last change set: the cursor after this page. */
  readonly lastHlc?: string;
  /** The same stamp as 30 bytes. */
  readonly lastStamp?: Buffer;
  /** Stamp of the first change set (30 bytes). */
  readonly firstStamp?: Buffer;
  /** The retention floor when the page was read (absent: nothing was ever swept); see `FloorSeen`. */
  readonly floor?: Buffer;
  /**
   * True when the cursor was above every stamp committed when the read
   * began: a cursor no stamp of this log ever reached (a buggy client's, or
   * one from a copy of the database that got further). The page is then
   * empty, or nearly; a reader that follows the log live goes on from its
   * own position instead.
   */
  readonly cursorAhead?: true;
}

/**
 * What a reader already knows of the retention floor, for a read from a
 * cursor below it (docs/protocol.md §5):
 * - absent: nothing; such a read is refused with SNAPSHOT_REQUIRED;
 * - a floor (as a page returned it): the read goes on unless the floor has
 *   risen past it since, i.e. unless a tombstone after that floor was swept
 *   while the reader went through the log (a stream continuing its own
 *   catch-up: its positions come from pages, not from a client);
 * - `'any'`: the read goes on whatever the floor (a client was told
 *   SNAPSHOT_REQUIRED and is sent what the log still holds all the same).
 */
export type FloorSeen = Buffer | 'any';

/**
 * Reads the change log after `cursor` (docs/protocol.md §5). Transactions are
 * added whole until their changes reach `batchSize` or their JSON reaches
 * `maxBytes`, so the last one may overshoot either (a page always holds at
 * least one transaction). The log only ever holds live facts, so nothing is stale.
 * The page is assembled as JSON text from the stored entries, which are
 * already the canonical wire form: nothing is parsed or re-serialized.
 */
export async function readChangesSince(
  replica: ReplicaContext,
  cursor: Buffer | undefined,
  askingSite: Buffer | undefined,
  batchSize: number,
  maxBytes = Infinity,
  floorSeen?: FloorSeen,
): Promise<ChangesPage> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new TypeError(`batchSize must be a positive integer, got ${batchSize}`);
  if (!(maxBytes > 0)) throw new TypeError(`maxBytes must be positive, got ${maxBytes}`);
  // Taken before the iterator's view: every later commit is stamped above it.
  const end = replica.committedStamp;
  const cursorAhead = cursor !== undefined && (end === undefined || compareHlc(cursor, end) > 0);
  const it = replica.store.iterator({ gt: cursor ? logKeyAfter(cursor) : Buffer.of(NS_LOG), lt: Buffer.of(NS_LOG + 1), readAhead: PAGE_READ_AHEAD });
  try {
    // Read the floor through a point get: it only ever rises, and a floor
    // raised after the iterator opened only removes entries it cannot see.
    const floor = await replica.store.get(META_FLOOR);
    if (cursor && floor && compareHlc(cursor, floor) < 0 && !floorAccepted(floor, floorSeen)) {
      throw new SyncError(ErrorCode.SnapshotRequired, `sinceHLC: cursor ${hlcToWire(cursor)} is older than the retention horizon; bootstrap from a snapshot`);
    }
    const sets: string[] = [];
    let count = 0;
    // Approximate bytes of the page so far (UTF-16 length of its JSON text).
    let bytes = 0;
    let hasMore = false;
    let stampOf: Buffer | undefined;
    let siteIdOf = '';
    let transactionIdOf = '';
    let lastHlc: string | undefined;
    let lastStamp: Buffer | undefined;
    let firstStamp: Buffer | undefined;
    let changes: string[] = [];
    let migrations: string[] = [];
    const finish = (): void => {
      const text = changeSetJson(siteIdOf, transactionIdOf, lastHlc!, changes, migrations);
      sets.push(text);
      bytes += text.length;
      count += changes.length + migrations.length;
    };
    scan: for (let batch = await it.nextBatch(512); batch.length > 0; batch = await it.nextBatch(512)) {
      for (const [key, value] of batch) {
        if (askingSite && logEntryFrom(value, askingSite)) continue;
        const { kind, json } = logEntryPayload(value);
        if (!stampOf || !logKeyHasStamp(key, stampOf)) {
          if (stampOf) {
            finish();
            lastStamp = stampOf;
            // Whole transactions only; a page of huge values also stops at the byte budget.
            if (count >= batchSize || bytes >= maxBytes) { hasMore = true; stampOf = undefined; break scan; }
          }
          stampOf = Buffer.from(logKeyStamp(key));
          firstStamp ??= stampOf;
          lastHlc = hlcToWire(stampOf);
          const { siteId, transactionId } = logEntryOrigin(value);
          siteIdOf = siteIdToWire(siteId);
          transactionIdOf = transactionId;
          changes = [];
          migrations = [];
        }
        if (kind === LOG_MIGRATION) migrations.push(json);
        else changes.push(json);
      }
    }
    if (stampOf) {
      finish();
      lastStamp = stampOf;
    }
    const json = `[${sets.join(',')}]`;
    let parsed: ChangeSet[] | undefined;
    return {
      get changeSets() { return (parsed ??= JSON.parse(json) as ChangeSet[]); },
      json, hasMore, changeCount: count, transactionCount: sets.length, ...(lastHlc ? { lastHlc, lastStamp, firstStamp } : {}),
      ...(floor ? { floor } : {}),
      ...(cursorAhead ? { cursorAhead } : {}),
    };
  } finally {
    await it.close();
  }
}

/** Whether a read below `floor` may go on for a reader that has seen `seen` (see FloorSeen). */
function floorAccepted(floor: Buffer, seen: FloorSeen | undefined): boolean {
  if (seen === undefined) return false;
  return seen === 'any' || compareHlc(floor, seen) <= 0;
}
