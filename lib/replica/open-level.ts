import { openLevelStore } from '../storage/leveldb.js';
import { Replica, type ReplicaOptions } from './replica.js';

/** Options of {@link openLevelReplica}: the replica's, plus its LevelDB store's memtable size. */
export interface LevelReplicaOptions extends ReplicaOptions {
  /** LevelDB memtable size in bytes (SyncRouterOptions.storeWriteBufferBytes). @default openLevelStore's */
  writeBufferSize?: number;
}

/**
 * Opens (creating if needed) the replica kept in the LevelDB directory
 * `dir`; the store is closed again if the replica cannot open (a store of a
 * newer key format, or not a replica store).
 */
export async function openLevelReplica(dir: string, options: LevelReplicaOptions = {}): Promise<Replica> {
  const { writeBufferSize, ...replicaOptions } = options;
  const store = await openLevelStore(dir, writeBufferSize === undefined ? {} : { writeBufferSize });
  try {
    return await Replica.open(store, replicaOptions);
  } catch (err) {
    await store.close();
    throw err;
  }
}
