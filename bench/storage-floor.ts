/**
 * The storage floor of the apply loads: what LevelDB alone costs per message.
 *
 * A replica applies the load's own change sets once, in a temp store, while
 * the batches it writes are recorded. Those exact batches (same keys, values
 * and op count) are then written again, one at a time, to a fresh store opened
 * as the server opens its stores, each timed from building the native batch
 * to the write's callback (the write itself runs on libuv's pool).
 *
 * A server that stores through LevelDB this way cannot answer a serial
 * message sooner than the transport's round trip plus this floor, so the bench
 * prints the ratio to the relay the floor leaves room for (round trip /
 * (round trip + floor)) beside the ratio reached. Figures only, never pass/fail.
 */
import { randomSiteId } from '../lib/protocol/site-id.js';
import { validateChangeSets } from '../lib/protocol/validate.js';
import { DEFAULTS } from '../lib/config/options.js';
import { Replica } from '../lib/replica/replica.js';
import { openLevelStore } from '../lib/storage/leveldb.js';
import type { KvOp, KvStore } from '../lib/storage/kv.js';
import { loadChangeSets } from './common.js';

export interface StorageFloor {
  /** Changes per message of the load. */
  perMessage: number;
  /** Ops of one message's batch (column records, log entries, stamp, table count). */
  opsPerMessage: number;
  /**
   * From building the native batch to the write's callback, µs per message
   * (mean). Not split into main thread and pool: on a small machine the pool
   * thread that wakes for the write often runs on the main thread's core,
   * so the call that submits the write lasts as long as much of the write.
   */
  totalUs: number;
}

/** A store that records a copy of every batch written through it. */
function recording(store: KvStore, batches: KvOp[][]): KvStore {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'write') return (ops: KvOp[], options?: { sync?: boolean }) => { batches.push([...ops]); return target.write(ops, options); };
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/**
 * The floor of a load of `messages` messages of `perMessage` changes,
 * measured in `dir` (two stores are made there). The first tenth of the
 * messages warms up and is not counted.
 */
export async function storageFloor(dir: string, perMessage: number, messages: number): Promise<StorageFloor> {
  const batches: KvOp[][] = [];
  const source = await openLevelStore(`${dir}/recorded`, { writeBufferSize: DEFAULTS.storeWriteBufferBytes });
  try {
    const replica = await Replica.open(recording(source, batches));
    try {
      for (const set of loadChangeSets(randomSiteId(), perMessage, messages)) {
        await replica.apply(validateChangeSets([set], { now: Date.now() }));
      }
    } finally {
      await replica.close();
    }
  } finally {
    await source.close();
  }
  // The batches of the messages: not the replica's own set-up writes.
  const load = batches.slice(-messages);
  const target = await openLevelStore(`${dir}/replayed`, { writeBufferSize: DEFAULTS.storeWriteBufferBytes });
  const skip = Math.floor(messages / 10);
  let total = 0;
  try {
    for (let i = 0; i < load.length; i++) {
      const started = performance.now();
      await target.write(load[i]!);
      if (i >= skip) total += performance.now() - started;
    }
  } finally {
    await target.close();
  }
  return { perMessage, opsPerMessage: load[0]?.length ?? 0, totalUs: (total / Math.max(1, load.length - skip)) * 1000 };
}
