import { openLevelStore } from '../storage/leveldb.js';
import { Replica, type ReplicaOptions } from './replica.js';

/**
 * Opens (creating if needed) the replica kept in the LevelDB directory
 * `dir`; the store is closed again if the replica cannot open (a store of a
 * newer key format, or not a replica store).
 */
export async function openLevelReplica(dir: string, options: ReplicaOptions = {}): Promise<Replica> {
  const store = await openLevelStore(dir);
  try {
    return await Replica.open(store, options);
  } catch (err) {
    await store.close();
    throw err;
  }
}
