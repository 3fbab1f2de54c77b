import { compareHlc, hlcToWire } from '../protocol/hlc.js';
import type { ValidChangeSet } from '../protocol/validate.js';

/**
 * A real client pushes at most about this many changes per `apply_changes`
 * (whole transactions, so a batch may overshoot it) and sends nothing more
 * until its next local commit (docs/protocol.md §8). A batch at least this large
 * may have more behind it.
 */
export const CLIENT_BATCH_CHANGES = 1000;

/**
 * The `request_changes` frame that pulls a client's next batch after an
 * applied batch of `changeCount` changes whose largest change-set HLC is
 * `lastHlc` (docs/protocol.md §9), or undefined when the batch was smaller than a
 * full client batch (nothing is left on the device). `serverSiteId` is the
 * database's server site id: the client then sends what did not originate
 * there, after `lastHlc` in its own HLC order.
 */
export function backlogRequest(changeCount: number, lastHlc: Buffer | undefined, serverSiteId: string): string | undefined {
  if (changeCount < CLIENT_BATCH_CHANGES || !lastHlc) return undefined;
  return JSON.stringify({ type: 'request_changes', siteId: serverSiteId, sinceHLC: hlcToWire(lastHlc) });
}

/** The largest of the change sets' HLCs (their own, as the client sent them). */
export function largestHlc(hlcs: Iterable<Buffer>): Buffer | undefined {
  let max: Buffer | undefined;
  for (const hlc of hlcs) if (!max || compareHlc(hlc, max) > 0) max = hlc;
  return max;
}

/** The smallest of the change sets' HLCs (their own, as the client sent them). */
export function smallestHlc(hlcs: Iterable<Buffer>): Buffer | undefined {
  let min: Buffer | undefined;
  for (const hlc of hlcs) if (!min || compareHlc(hlc, min) < 0) min = hlc;
  return min;
}

/**
 * The smallest HLC anywhere in `sets`: of a change set, a change or a
 * migration. A real client answers `request_changes` with its facts whose
 * own HLC is after `sinceHLC`, fact by fact (docs/protocol.md §8), and a
 * change set's `hlc` is not below its changes' HLCs, so pulling a whole
 * refused message again needs `sinceHLC` below this, not below its
 * change-set HLCs.
 */
export function smallestFactHlc(sets: readonly ValidChangeSet[]): Buffer | undefined {
  let min: Buffer | undefined;
  for (const set of sets) {
    if (!min || compareHlc(set.hlc, min) < 0) min = set.hlc;
    for (const change of set.changes) if (compareHlc(change.hlc, min) < 0) min = change.hlc;
    for (const migration of set.migrations) if (compareHlc(migration.hlc, min) < 0) min = migration.hlc;
  }
  return min;
}
