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
 * (round trip + floor)) beside the ratio reached, and what a bare round trip
 * through libuv's pool costs on the machine. Figures only, never pass/fail.
 *
 * Each is measured twice: back to back, and with the main thread busy for
 * WORK_US before each write or round trip, as a server's is (it validates and
 * merges between writes). Where an idle CPU sleeps deeply (virtual machines
 * that halt an idle vCPU at once), the pool thread has gone to sleep by then
 * and waking it costs much more than back to back.
 */
import { fstat } from 'node:fs';
import { open } from 'node:fs/promises';
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
  /**
   * A bare round trip through libuv's thread pool (an `fs.fstat` of an open
   * file and its callback), µs (mean of POOL_ROUND_TRIPS after a warm-up):
   * the hand-off every write above pays once, and the relay never.
   */
  poolRoundTripUs: number;
  /** `totalUs` with the main thread busy for WORK_US before each write (not counted). */
  totalAfterWorkUs: number;
  /** `poolRoundTripUs` with the main thread busy for WORK_US before each round trip (not counted). */
  poolRoundTripAfterWorkUs: number;
}

/** Round trips timed for poolRoundTripUs (and a tenth as many before, not timed). */
const POOL_ROUND_TRIPS = 5000;

/** µs the main thread works before each write or round trip of the "after work" figures. */
export const WORK_US = 50;

/** Keeps the main thread busy for `us` µs (what a server does between two writes). */
function work(us: number): void {
  const until = performance.now() + us / 1000;
  while (performance.now() < until);
}

/** Mean µs of one `fs.fstat` through libuv's pool and back to its callback, one at a time, each after `workUs` of main-thread work. */
async function poolRoundTripUs(file: string, workUs: number): Promise<number> {
  const handle = await open(file, 'r');
  try {
    const once = (): Promise<void> => new Promise((resolve, reject) => fstat(handle.fd, (err) => (err ? reject(err) : resolve())));
    for (let i = 0; i < POOL_ROUND_TRIPS / 10; i++) await once();
    let total = 0;
    for (let i = 0; i < POOL_ROUND_TRIPS; i++) {
      if (workUs > 0) work(workUs);
      const started = performance.now();
      await once();
      total += performance.now() - started;
    }
    return (total / POOL_ROUND_TRIPS) * 1000;
  } finally {
    await handle.close();
  }
}

/** Mean µs per write of `load` to a fresh store in `dir`, each after `workUs` of main-thread work; the first `skip` are not counted. */
async function replayUs(dir: string, load: KvOp[][], skip: number, workUs: number): Promise<number> {
  const target = await openLevelStore(dir, { writeBufferSize: DEFAULTS.storeWriteBufferBytes });
  let total = 0;
  try {
    for (let i = 0; i < load.length; i++) {
      if (workUs > 0) work(workUs);
      const started = performance.now();
      await target.write(load[i]!);
      if (i >= skip) total += performance.now() - started;
    }
  } finally {
    await target.close();
  }
  return (total / Math.max(1, load.length - skip)) * 1000;
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
  const skip = Math.floor(messages / 10);
  return {
    perMessage,
    opsPerMessage: load[0]?.length ?? 0,
    totalUs: await replayUs(`${dir}/replayed`, load, skip, 0),
    poolRoundTripUs: await poolRoundTripUs(`${dir}/replayed/CURRENT`, 0),
    totalAfterWorkUs: await replayUs(`${dir}/replayed-after-work`, load, skip, WORK_US),
    poolRoundTripAfterWorkUs: await poolRoundTripUs(`${dir}/replayed/CURRENT`, WORK_US),
  };
}
