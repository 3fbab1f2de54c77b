import { openLevelStore } from '../../lib/storage/leveldb.js';
import { Replica, type ReplicaOptions } from '../../lib/replica/replica.js';
import type { SnapshotChunk } from '../../lib/protocol/messages.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

/** Opens replicas on real LevelDB in temp dirs and removes them afterwards. */
export class ReplicaFixture {
  private readonly dirs: string[] = [];
  private readonly open: Replica[] = [];

  async create(options: ReplicaOptions = {}, dir?: string): Promise<{ replica: Replica; dir: string }> {
    const where = dir ?? await makeTempDir('replica-');
    if (!dir) this.dirs.push(where);
    const replica = await Replica.open(await openLevelStore(where), options);
    this.open.push(replica);
    return { replica, dir: where };
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.open.splice(0).map((r) => r.close()));
    await Promise.all(this.dirs.splice(0).map((d) => removeTempDir(d)));
  }
}

/** Every chunk of a snapshot, parsed. */
export async function collectSnapshot(replica: Replica, options: Parameters<Replica['snapshot']>[0] = {}): Promise<SnapshotChunk[]> {
  const chunks: SnapshotChunk[] = [];
  for await (const text of replica.snapshot(options)) chunks.push(JSON.parse(text));
  return chunks;
}

/** The merged state a replica holds, in a comparable form. */
export interface StateView {
  cells: Record<string, { hlc: string; value: unknown }>;
  tombstones: Record<string, string>;
  migrations: Record<string, string>;
}

/** Reads a replica's whole state through a snapshot. */
export async function stateOf(replica: Replica): Promise<StateView> {
  const state: StateView = { cells: {}, tombstones: {}, migrations: {} };
  for (const chunk of await collectSnapshot(replica)) {
    if (chunk.type === 'column-versions') {
      for (const e of chunk.entries) state.cells[`${chunk.schema}|${chunk.table}|${JSON.stringify(e.pk)}|${e.column}`] = { hlc: e.hlc, value: e.value };
    } else if (chunk.type === 'tombstone') {
      for (const e of chunk.entries) state.tombstones[`${chunk.schema}|${chunk.table}|${JSON.stringify(e.pk)}`] = e.hlc;
    } else if (chunk.type === 'schema-migration') {
      const m = chunk.migration;
      state.migrations[`${m.schema}|${m.type.endsWith('_index') ? 'index' : 'table'}|${m.table}|${m.schemaVersion}`] = m.hlc;
    }
  }
  return state;
}
