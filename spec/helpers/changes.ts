import { encodeHlc, hlcToWire } from '../../lib/protocol/hlc.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import type { Change, ChangeSet, SchemaMigration } from '../../lib/protocol/messages.js';
import type { WireSqlValue } from '../../lib/protocol/values.js';
import { validateChangeSets, type ValidChangeSet } from '../../lib/protocol/validate.js';

/** A client site for tests: builds change sets stamped with its own HLCs. */
export class TestSite {
  readonly id: Buffer;
  readonly wire: string;
  private wall: number;
  private counter = 0;

  constructor(id: Buffer = randomSiteId(), startWall = Date.now() - 60_000) {
    this.id = id;
    this.wire = siteIdToWire(id);
    this.wall = startWall;
  }

  /** The HLC of fact `opSeq` in a transaction at (wall, counter). */
  hlc(wall: number, counter: number, opSeq: number): string {
    return hlcToWire(encodeHlc({ wallTime: wall, counter, siteId: this.id, opSeq }));
  }

  /**
   * A transaction: `facts` receive opSeq 0.. in order (migrations first).
   * Uses the next (wall, counter) of this site unless `at` is given.
   */
  txn(changes: ChangeDraft[], migrations: MigrationDraft[] = [], at?: { wall: number; counter?: number }): ChangeSet {
    let wall: number;
    let counter: number;
    if (at) {
      wall = at.wall;
      counter = at.counter ?? 0;
    } else {
      this.wall += 1;
      wall = this.wall;
      counter = this.counter;
    }
    let op = 0;
    const schemaMigrations: SchemaMigration[] = migrations.map((m) => ({
      type: m.type ?? 'create_table', schema: m.schema ?? 'main', table: m.table,
      ...(m.fromTable ? { fromTable: m.fromTable } : {}),
      ddl: m.ddl ?? `create table ${m.table} (id integer primary key)`, hlc: this.hlc(wall, counter, op++), schemaVersion: m.schemaVersion ?? 1,
    }));
    const out: Change[] = changes.map((c) => {
      const base = { schema: c.schema ?? 'main', table: c.table ?? 'notes', pk: c.pk, hlc: this.hlc(wall, counter, op++) };
      if (c.delete) return { type: 'delete', ...base, ...(c.priorRow ? { priorRow: c.priorRow } : {}) };
      return { type: 'column', ...base, column: c.column ?? 'title', value: c.value === undefined ? null : c.value };
    });
    const hlc = this.hlc(wall, counter, Math.max(0, op - 1));
    return { siteId: this.wire, transactionId: `${wall}:${counter}:${this.wire}`, hlc, changes: out, schemaMigrations };
  }
}

export interface ChangeDraft {
  schema?: string;
  table?: string;
  pk: WireSqlValue[];
  column?: string;
  value?: WireSqlValue;
  delete?: boolean;
  priorRow?: WireSqlValue[];
}

export interface MigrationDraft {
  type?: SchemaMigration['type'];
  schema?: string;
  table: string;
  fromTable?: string;
  ddl?: string;
  schemaVersion?: number;
}

/** Validates wire change sets the way the server does, with a clock far enough ahead for test HLCs. */
export function valid(changeSets: ChangeSet[], now = Date.now() + 3_600_000): ValidChangeSet[] {
  return validateChangeSets(JSON.parse(JSON.stringify(changeSets)), { now });
}
