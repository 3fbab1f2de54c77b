import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { compareHlc, hlcFromSite, hlcToWire, transactionIdOf } from '../../lib/protocol/hlc.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import type {
  Change, ChangeSet, ColumnVersionEntry, SchemaMigration, SnapshotChunk, TombstoneEntry,
} from '../../lib/protocol/messages.js';
import type { WireSqlValue } from '../../lib/protocol/values.js';

/** The winning write of one cell, with the prior image when the winner carried one. */
export interface CellVersion {
  value: WireSqlValue;
  hlc: Buffer;
  priorValue?: WireSqlValue;
  priorHlc?: Buffer;
}

/** The live cells of one row, in the order they were first written (that order makes `priorRow`). */
export interface ModelRow {
  schema: string;
  table: string;
  pk: WireSqlValue[];
  cells: Map<string, CellVersion>;
}

export interface ModelTombstone {
  schema: string;
  table: string;
  pk: WireSqlValue[];
  hlc: Buffer;
  priorRow?: WireSqlValue[];
}

/** Counts of one `applyChangeSets` call, as docs/protocol.md §3 counts them. */
export interface ModelApplyCounts { applied: number; skipped: number; conflicts: number }

/** A comparable summary of a replica's merged state. */
export interface ModelDigest {
  rows: number;
  cells: number;
  tombstones: number;
  migrations: number;
  /** sha256 over the sorted canonical lines of `canonicalLines()`. */
  hash: string;
}

/** What differs between two replicas, in cells and tombstones (for failure messages). */
export interface ModelDiff {
  missingCells: number;
  extraCells: number;
  differentCells: number;
  missingTombstones: number;
  extraTombstones: number;
  /** A few example lines of each kind. */
  examples: string[];
}

/** Key of a row: schema, table and the primary key values as wire JSON. */
export function rowKeyOf(schema: string, table: string, pk: readonly WireSqlValue[]): string {
  return JSON.stringify([schema, table, pk]);
}

/** The HLC of fact `opSeq` of the transaction that `base` (opSeq 0) names. */
export function withOpSeq(base: Buffer, opSeq: number): Buffer {
  const out = Buffer.from(base);
  out.writeUInt32BE(opSeq, 26);
  return out;
}

/** The 26-byte prefix that all facts of one transaction share (wallTime, counter, siteId). */
function transactionPrefix(hlc: Buffer): Buffer {
  return hlc.subarray(0, 26);
}

type LogEntry =
  | { hlc: Buffer; kind: 'column'; row: ModelRow; column: string; cell: CellVersion }
  | { hlc: Buffer; kind: 'delete'; tombstone: ModelTombstone }
  | { hlc: Buffer; kind: 'migration'; migration: SchemaMigration };

/**
 * One replica's merged state, by the merge rules of docs/protocol.md §3 with the
 * default setting (no resurrection): column versions last-writer-wins by the
 * change's HLC, row tombstones that block every column write to their row,
 * schema migrations keyed by (schema, kind, name, schemaVersion). It is what
 * a reference client holds, and what `readServerState()` rebuilds from the
 * server's snapshot, so the two can be compared.
 *
 * It also serves the client's "change log": `changeSetsSince()` regroups the
 * current state into transactions by HLC, which is what the real client
 * sends (the fixture `real-client-transcript.jsonl`, seq 136: a client that
 * bootstrapped from a snapshot pushes its content back, grouped by the
 * original transactions, updates without prior images, deletes with priorRow).
 */
export class ReplicaModel {
  readonly rows = new Map<string, ModelRow>();
  readonly tombstones = new Map<string, ModelTombstone>();
  readonly migrations = new Map<string, { migration: SchemaMigration; hlc: Buffer }>();
  /** Bumped by every change of state, so the digest is computed once per state. */
  private version = 0;
  private cachedDigest?: { version: number; digest: ModelDigest };

  /** True when the replica holds nothing at all (no cell, tombstone or migration). */
  isEmpty(): boolean {
    return this.rows.size === 0 && this.tombstones.size === 0 && this.migrations.size === 0;
  }

  /** The live value of a cell, or undefined. */
  cell(schema: string, table: string, pk: WireSqlValue[], column: string): CellVersion | undefined {
    return this.rows.get(rowKeyOf(schema, table, pk))?.cells.get(column);
  }

  /** The live row, or undefined (a row without cells does not exist). */
  row(schema: string, table: string, pk: WireSqlValue[]): ModelRow | undefined {
    return this.rows.get(rowKeyOf(schema, table, pk));
  }

  isDeleted(schema: string, table: string, pk: WireSqlValue[]): boolean {
    return this.tombstones.has(rowKeyOf(schema, table, pk));
  }

  /** Applies whole change sets (migrations, then changes), counting like §3. */
  applyChangeSets(changeSets: readonly ChangeSet[]): ModelApplyCounts {
    const counts: ModelApplyCounts = { applied: 0, skipped: 0, conflicts: 0 };
    for (const set of changeSets) {
      for (const m of set.schemaMigrations ?? []) counts[this.applyMigration(m)]++;
      for (const change of set.changes) counts[this.applyChange(change)]++;
    }
    return counts;
  }

  /** Applies one change by §3. */
  applyChange(change: Change): 'applied' | 'skipped' | 'conflicts' {
    const hlc = Buffer.from(change.hlc, 'base64');
    if (change.type === 'delete') return this.applyDelete(change.schema, change.table, change.pk, hlc, change.priorRow);
    const cell: CellVersion = { value: change.value, hlc };
    if (change.priorHlc !== undefined) {
      cell.priorValue = change.priorValue ?? null;
      cell.priorHlc = Buffer.from(change.priorHlc, 'base64');
    }
    return this.applyCell(change.schema, change.table, change.pk, change.column, cell);
  }

  /** A column-versions entry of a snapshot. */
  applyColumnEntry(schema: string, table: string, entry: ColumnVersionEntry): void {
    this.applyCell(schema, table, entry.pk, entry.column, { value: entry.value, hlc: Buffer.from(entry.hlc, 'base64') });
  }

  /** A tombstone entry of a snapshot. */
  applyTombstoneEntry(schema: string, table: string, entry: TombstoneEntry): void {
    this.applyDelete(schema, table, entry.pk, Buffer.from(entry.hlc, 'base64'), entry.priorRow);
  }

  applyMigration(migration: SchemaMigration): 'applied' | 'skipped' {
    const kind = migration.type === 'add_index' || migration.type === 'drop_index' ? 'index' : 'table';
    const key = JSON.stringify([migration.schema, kind, migration.table, migration.schemaVersion]);
    const hlc = Buffer.from(migration.hlc, 'base64');
    const existing = this.migrations.get(key);
    if (existing && compareHlc(existing.hlc, hlc) >= 0) return 'skipped';
    this.migrations.set(key, { migration, hlc });
    this.version++;
    return 'applied';
  }

  /** Applies the chunks of a snapshot (header and footer carry no data). */
  applySnapshotChunk(chunk: SnapshotChunk): void {
    switch (chunk.type) {
      case 'schema-migration':
        this.applyMigration(chunk.migration);
        return;
      case 'column-versions':
        for (const entry of chunk.entries) this.applyColumnEntry(chunk.schema, chunk.table, entry);
        return;
      case 'tombstone':
        for (const entry of chunk.entries) this.applyTombstoneEntry(chunk.schema, chunk.table, entry);
        return;
      default:
    }
  }

  private applyCell(schema: string, table: string, pk: WireSqlValue[], column: string, cell: CellVersion): 'applied' | 'skipped' | 'conflicts' {
    const key = rowKeyOf(schema, table, pk);
    // No resurrection: a tombstone blocks every write to its row, whatever the HLC.
    if (this.tombstones.has(key)) return 'skipped';
    let row = this.rows.get(key);
    const existing = row?.cells.get(column);
    if (existing) {
      const order = compareHlc(cell.hlc, existing.hlc);
      if (order === 0) return 'skipped';
      if (order < 0) return 'conflicts';
    }
    if (!row) {
      row = { schema, table, pk, cells: new Map() };
      this.rows.set(key, row);
    }
    row.cells.set(column, cell);
    this.version++;
    return 'applied';
  }

  private applyDelete(schema: string, table: string, pk: WireSqlValue[], hlc: Buffer, priorRow?: WireSqlValue[]): 'applied' | 'skipped' {
    const key = rowKeyOf(schema, table, pk);
    const existing = this.tombstones.get(key);
    if (existing && compareHlc(existing.hlc, hlc) >= 0) return 'skipped';
    this.tombstones.set(key, { schema, table, pk, hlc, ...(priorRow !== undefined ? { priorRow } : {}) });
    this.rows.delete(key);
    this.version++;
    return 'applied';
  }

  /**
   * The replica's facts as change sets, the way a real client's
   * `getChangesSince(peer, since)` returns them (docs/protocol.md §8): every fact
   * with an HLC after `since` whose HLC was not stamped by `excludeSite`, in
   * HLC order, grouped into their transactions (one ChangeSet per transaction,
   * `hlc` = its largest fact HLC), whole transactions added until the count
   * of changes and migrations reaches `bound` (so the last may overshoot it).
   */
  changeSetsSince(excludeSite: Buffer | undefined, since: Buffer | undefined, bound = Infinity): ChangeSet[] {
    const entries: LogEntry[] = [];
    const wanted = (hlc: Buffer): boolean =>
      (since === undefined || compareHlc(hlc, since) > 0) && (excludeSite === undefined || !hlcFromSite(hlc, excludeSite));
    for (const row of this.rows.values()) {
      for (const [column, cell] of row.cells) if (wanted(cell.hlc)) entries.push({ hlc: cell.hlc, kind: 'column', row, column, cell });
    }
    for (const tombstone of this.tombstones.values()) if (wanted(tombstone.hlc)) entries.push({ hlc: tombstone.hlc, kind: 'delete', tombstone });
    for (const { migration, hlc } of this.migrations.values()) if (wanted(hlc)) entries.push({ hlc, kind: 'migration', migration });
    entries.sort((a, b) => compareHlc(a.hlc, b.hlc));

    const out: ChangeSet[] = [];
    let count = 0;
    for (let i = 0; i < entries.length && count < bound;) {
      const prefix = transactionPrefix(entries[i]!.hlc);
      const changes: Change[] = [];
      const schemaMigrations: SchemaMigration[] = [];
      let last = entries[i]!.hlc;
      for (; i < entries.length && transactionPrefix(entries[i]!.hlc).equals(prefix); i++) {
        const entry = entries[i]!;
        last = entry.hlc;
        if (entry.kind === 'migration') schemaMigrations.push(entry.migration);
        else changes.push(toChange(entry));
      }
      out.push({ siteId: siteIdToWire(last.subarray(10, 26)), transactionId: transactionIdOf(last), hlc: hlcToWire(last), changes, schemaMigrations });
      count += changes.length + schemaMigrations.length;
    }
    return out;
  }

  /** One sorted line per cell, tombstone and migration: the state two replicas must share. */
  canonicalLines(): string[] {
    const lines: string[] = [];
    for (const [key, row] of this.rows) {
      for (const [column, cell] of row.cells) lines.push(`c\t${key}\t${JSON.stringify(column)}\t${JSON.stringify(cell.value)}\t${hlcToWire(cell.hlc)}`);
    }
    for (const [key, t] of this.tombstones) lines.push(`t\t${key}\t${hlcToWire(t.hlc)}`);
    for (const [key, m] of this.migrations) lines.push(`m\t${key}\t${JSON.stringify(m.migration.type)}\t${JSON.stringify(m.migration.ddl)}\t${hlcToWire(m.hlc)}`);
    return lines.sort();
  }

  digest(): ModelDigest {
    if (this.cachedDigest?.version === this.version) return this.cachedDigest.digest;
    let cells = 0;
    for (const row of this.rows.values()) cells += row.cells.size;
    const hash = createHash('sha256');
    for (const line of this.canonicalLines()) hash.update(line).update('\n');
    const digest = { rows: this.rows.size, cells, tombstones: this.tombstones.size, migrations: this.migrations.size, hash: hash.digest('hex') };
    this.cachedDigest = { version: this.version, digest };
    return digest;
  }

  /** True when both replicas hold exactly the same cells (value and HLC), tombstones and migrations. */
  sameAs(other: ReplicaModel): boolean {
    return this.digest().hash === other.digest().hash;
  }

  /** How `this` differs from `expected`. */
  diff(expected: ReplicaModel): ModelDiff {
    const out: ModelDiff = { missingCells: 0, extraCells: 0, differentCells: 0, missingTombstones: 0, extraTombstones: 0, examples: [] };
    const note = (text: string): void => { if (out.examples.length < 6) out.examples.push(text); };
    for (const [key, row] of expected.rows) {
      const mine = this.rows.get(key);
      for (const [column, cell] of row.cells) {
        const have = mine?.cells.get(column);
        if (!have) { out.missingCells++; note(`missing ${key}.${column}`); } else if (compareHlc(have.hlc, cell.hlc) !== 0 || JSON.stringify(have.value) !== JSON.stringify(cell.value)) {
          out.differentCells++;
          note(`different ${key}.${column}`);
        }
      }
    }
    for (const [key, row] of this.rows) {
      const theirs = expected.rows.get(key);
      for (const column of row.cells.keys()) if (!theirs?.cells.has(column)) { out.extraCells++; note(`extra ${key}.${column}`); }
    }
    for (const key of expected.tombstones.keys()) if (!this.tombstones.has(key)) { out.missingTombstones++; note(`missing tombstone ${key}`); }
    for (const key of this.tombstones.keys()) if (!expected.tombstones.has(key)) { out.extraTombstones++; note(`extra tombstone ${key}`); }
    return out;
  }
}

function toChange(entry: Exclude<LogEntry, { kind: 'migration' }>): Change {
  // Key order as the real client writes them (fixture seq 19 and 47).
  if (entry.kind === 'delete') {
    const t = entry.tombstone;
    return { type: 'delete', schema: t.schema, table: t.table, pk: t.pk, hlc: hlcToWire(t.hlc), ...(t.priorRow !== undefined ? { priorRow: t.priorRow } : {}) };
  }
  const { row, column, cell } = entry;
  const change = { type: 'column', schema: row.schema, table: row.table, pk: row.pk, hlc: hlcToWire(cell.hlc), column, value: cell.value } as Change & { priorValue?: WireSqlValue; priorHlc?: string };
  if (cell.priorHlc !== undefined) {
    change.priorValue = cell.priorValue ?? null;
    change.priorHlc = hlcToWire(cell.priorHlc);
  }
  return change;
}

/** The server's state read from `GET <baseUrl>/<databaseId>/snapshot`, plus its header. */
export interface ServerState {
  model: ReplicaModel;
  /** The header's `hlc` (wire form). */
  hlc: string;
  snapshotId: string;
}

/**
 * Reads a database's full state through the HTTP snapshot route (docs/protocol.md
 * §7: NDJSON, one chunk per line) into a ReplicaModel, for comparison with
 * clients. `baseUrl` is the mount URL, e.g. `http://127.0.0.1:1234/sync`.
 * Rejects on a non-200 answer or a stream that ends with an error line.
 */
export function readServerState(baseUrl: string, databaseId: string, options: { token?: string; siteId?: string } = {}): Promise<ServerState> {
  const headers: Record<string, string> = { connection: 'close', 'x-site-id': options.siteId ?? siteIdToWire(randomSiteId()) };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  return new Promise((resolve, reject) => {
    const req = request(`${baseUrl}/${encodeURIComponent(databaseId)}/snapshot`, { agent: false, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (chunk: Buffer) => parts.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(parts).toString('utf8');
        if (res.statusCode !== 200) {
          reject(new Error(`GET snapshot of ${databaseId}: HTTP ${res.statusCode} ${body.slice(0, 300)}`));
          return;
        }
        try {
          const model = new ReplicaModel();
          let hlc = '';
          let snapshotId = '';
          let footer = false;
          for (const line of body.split('\n')) {
            if (line === '') continue;
            const chunk = JSON.parse(line) as SnapshotChunk | { error: string };
            if ('error' in chunk) throw new Error(`snapshot of ${databaseId} failed midway: ${chunk.error}`);
            if (chunk.type === 'header') ({ hlc, snapshotId } = chunk);
            if (chunk.type === 'footer') footer = true;
            model.applySnapshotChunk(chunk);
          }
          if (!footer) throw new Error(`snapshot of ${databaseId} ended without a footer`);
          resolve({ model, hlc, snapshotId });
        } catch (err) {
          reject(err as Error);
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}
