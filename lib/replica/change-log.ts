import { SyncError, ErrorCode } from '../errors.js';
import { HLC_BYTES, compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { ChangeSet } from '../protocol/messages.js';
import { siteIdToWire } from '../protocol/site-id.js';
import { META_FLOOR, NS_LOG, LOG_MIGRATION, logKeyAfter, decodeLogEntry } from './keys.js';
import type { ReplicaContext } from './replica.js';

/** One page of `changesSince`. */
export interface ChangesPage {
  /** Whole transactions in cursor order; `hlc` is each one's stamp. */
  changeSets: ChangeSet[];
  /** Whether more transactions follow the last one returned. */
  hasMore: boolean;
  /** Column changes and migrations in the page. */
  changeCount: number;
}

/**
 * Reads the change log after `cursor` (PROTOCOL.md §5). Transactions are
 * added whole until their changes reach `batchSize`, so the last one may
 * overshoot it. The log only ever holds live facts, so nothing is stale.
 */
export async function readChangesSince(
  replica: ReplicaContext,
  cursor: Buffer | undefined,
  askingSite: Buffer | undefined,
  batchSize: number,
): Promise<ChangesPage> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new TypeError(`batchSize must be a positive integer, got ${batchSize}`);
  const it = replica.store.iterator({ gt: cursor ? logKeyAfter(cursor) : Buffer.of(NS_LOG), lt: Buffer.of(NS_LOG + 1) });
  try {
    if (cursor) {
      // Read the floor through a point get: it only ever rises, and a floor
      // raised after the iterator opened only removes entries it cannot see.
      const floor = await replica.store.get(META_FLOOR);
      if (floor && compareHlc(cursor, floor) < 0) {
        throw new SyncError(ErrorCode.SnapshotRequired, `sinceHLC: cursor ${hlcToWire(cursor)} is older than the retention horizon; bootstrap from a snapshot`);
      }
    }
    const changeSets: ChangeSet[] = [];
    let count = 0;
    let current: ChangeSet | undefined;
    let currentStamp: Buffer | undefined;
    let hasMore = false;
    for (let entry = await it.next(); entry; entry = await it.next()) {
      const [key, value] = entry;
      if (askingSite && value.subarray(0, 16).equals(askingSite)) continue;
      const stamp = key.subarray(1, 1 + HLC_BYTES);
      if (!currentStamp || !stamp.equals(currentStamp)) {
        if (current) {
          changeSets.push(current);
          count += current.changes.length + current.schemaMigrations.length;
          if (count >= batchSize) { hasMore = true; current = undefined; break; }
        }
        const decoded = decodeLogEntry(value);
        currentStamp = Buffer.from(stamp);
        current = {
          siteId: siteIdToWire(decoded.siteId),
          transactionId: decoded.transactionId,
          hlc: hlcToWire(currentStamp),
          changes: [],
          schemaMigrations: [],
        };
        pushEntry(current, decoded.kind, decoded.json);
      } else {
        const decoded = decodeLogEntry(value);
        pushEntry(current!, decoded.kind, decoded.json);
      }
    }
    if (current) {
      changeSets.push(current);
      count += current.changes.length + current.schemaMigrations.length;
    }
    return { changeSets, hasMore, changeCount: count };
  } finally {
    await it.close();
  }
}

function pushEntry(set: ChangeSet, kind: number, json: string): void {
  if (kind === LOG_MIGRATION) set.schemaMigrations.push(JSON.parse(json));
  else set.changes.push(JSON.parse(json));
}
