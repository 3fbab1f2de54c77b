import { compareHlc } from '../protocol/hlc.js';
import type { KvOp } from '../storage/kv.js';
import { META_FLOOR, NS_TOMBSTONE_AGE, tombstoneAgeKey, parseTombstoneAgeKey, factLogKey, factStamp, tombstoneCreatedAt } from './keys.js';
import type { ReplicaContext } from './context.js';

/** What a sweep removed. */
export interface SweepResult {
  /** Tombstones removed. */
  swept: number;
  /** The retention floor after the sweep (stamp), if any sweep ever removed something. */
  floor?: Buffer;
}

const SWEEP_BATCH = 1000;

/**
 * Removes tombstones recorded before `now - horizon`, with their change log
 * entries. Each removed tombstone raises the floor to its stamp: a cursor
 * below the floor may have missed that deletion, so it gets SNAPSHOT_REQUIRED
 * instead of a silently partial answer. Works in bounded batches.
 */
export async function sweepTombstones(replica: ReplicaContext, now: number): Promise<SweepResult> {
  const cutoff = now - replica.retentionHorizonMs;
  if (cutoff <= 0) return { swept: 0, floor: await replica.store.get(META_FLOOR) };
  let floor = await replica.store.get(META_FLOOR);
  let swept = 0;
  for (;;) {
    const ops: KvOp[] = [];
    const it = replica.store.iterator({ gte: Buffer.of(NS_TOMBSTONE_AGE), lt: tombstoneAgeKey(cutoff, Buffer.alloc(0)), limit: SWEEP_BATCH });
    const ageKeys: Buffer[] = [];
    try {
      for (let entry = await it.next(); entry; entry = await it.next()) ageKeys.push(Buffer.from(entry[0]));
    } finally {
      await it.close();
    }
    if (ageKeys.length === 0) break;
    const aged = ageKeys.map(parseTombstoneAgeKey);
    const tombKeys = aged.map((a) => a.tombKey);
    const records = await replica.store.getMany(tombKeys);
    for (let i = 0; i < ageKeys.length; i++) {
      ops.push({ type: 'del', key: ageKeys[i]! });
      const record = records[i];
      // The age index is written with its tombstone; a mismatch means a later
      // delete replaced it, whose own index entry governs.
      if (!record || tombstoneCreatedAt(record) !== aged[i]!.createdAt) continue;
      ops.push({ type: 'del', key: tombKeys[i]! }, { type: 'del', key: factLogKey(record) });
      const stamp = factStamp(record);
      if (!floor || compareHlc(stamp, floor) > 0) floor = Buffer.from(stamp);
      swept++;
    }
    if (floor) ops.push({ type: 'put', key: META_FLOOR, value: floor });
    await replica.store.write(ops, { sync: replica.syncWrites });
    if (ageKeys.length < SWEEP_BATCH) break;
  }
  return { swept, floor };
}
