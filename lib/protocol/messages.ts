import type { WireSqlValue } from './values.js';

/** The protocol version this coordinator speaks. */
export const PROTOCOL_VERSION = 1;

/** Standard base64 of a 30-byte HLC. */
export type HlcString = string;
/** base64url of a 16-byte site id, 22 characters. */
export type SiteIdString = string;

/** A column write (docs/protocol.md §2). prior* are both present or both absent. */
export interface ColumnChange {
  type: 'column';
  schema: string;
  table: string;
  pk: WireSqlValue[];
  column: string;
  value: WireSqlValue;
  hlc: HlcString;
  priorValue?: WireSqlValue;
  priorHlc?: HlcString;
}

/** A row deletion. */
export interface DeleteChange {
  type: 'delete';
  schema: string;
  table: string;
  pk: WireSqlValue[];
  hlc: HlcString;
  priorRow?: WireSqlValue[];
}

export type Change = ColumnChange | DeleteChange;

export const MIGRATION_TYPES = [
  'create_table', 'drop_table', 'rename_table', 'add_column',
  'drop_column', 'alter_column', 'add_index', 'drop_index',
] as const;
export type MigrationType = (typeof MIGRATION_TYPES)[number];

/** The object kind a migration names: indexes for *_index, tables otherwise. */
export function migrationKind(type: MigrationType): 'table' | 'index' {
  return type === 'add_index' || type === 'drop_index' ? 'index' : 'table';
}

export interface SchemaMigration {
  type: MigrationType;
  schema: string;
  table: string;
  /** rename_table only. */
  fromTable?: string;
  ddl: string;
  hlc: HlcString;
  schemaVersion: number;
}

/** One source transaction. */
export interface ChangeSet {
  siteId: SiteIdString;
  transactionId: string;
  hlc: HlcString;
  changes: Change[];
  schemaMigrations: SchemaMigration[];
}

/** Something a validation hook refused. */
export interface Rejection {
  reason: string;
  code?: string;
  table?: string;
  column?: string;
}

export interface ApplyResult {
  applied: number;
  skipped: number;
  conflicts: number;
  transactions: number;
  rejected?: Rejection[];
}

// ---- Snapshots (§6) ----

export interface SnapshotHeader {
  type: 'header'; siteId: SiteIdString; hlc: HlcString; snapshotFormat: 1;
  tableCount: number; migrationCount: number; snapshotId: string;
}
export interface SnapshotMigrationChunk { type: 'schema-migration'; migration: SchemaMigration }
export interface SnapshotTableStart { type: 'table-start'; schema: string; table: string; estimatedEntries: number }
export interface ColumnVersionEntry { column: string; hlc: HlcString; value: WireSqlValue; pk: WireSqlValue[] }
export interface SnapshotColumnVersions { type: 'column-versions'; schema: string; table: string; entries: ColumnVersionEntry[] }
export interface SnapshotTableEnd { type: 'table-end'; schema: string; table: string; entriesWritten: number }
export interface TombstoneEntry { pk: WireSqlValue[]; hlc: HlcString; createdAt: number; priorRow?: WireSqlValue[] }
export interface SnapshotTombstones { type: 'tombstone'; schema: string; table: string; entries: TombstoneEntry[] }
export interface SnapshotFooter { type: 'footer'; snapshotId: string; totalTables: number; totalEntries: number; totalMigrations: number }

export type SnapshotChunk =
  | SnapshotHeader | SnapshotMigrationChunk | SnapshotTableStart | SnapshotColumnVersions
  | SnapshotTableEnd | SnapshotTombstones | SnapshotFooter;

/** Where an interrupted snapshot download stopped (resume_snapshot). */
export interface SnapshotCheckpoint {
  snapshotId: string;
  siteId: SiteIdString;
  hlc: HlcString;
  lastTableIndex: number;
  lastEntryIndex: number;
  completedTables: string[];
  entriesProcessed: number;
  createdAt: number;
}

// ---- WebSocket messages (§4) ----

export interface HandshakeMessage { type: 'handshake'; databaseId: string; siteId: SiteIdString; token?: string; protocolVersion: number }
export interface GetChangesMessage { type: 'get_changes'; sinceHLC?: HlcString }
export interface ApplyChangesMessage { type: 'apply_changes'; changes: ChangeSet[]; requestId?: string }
export interface GetSnapshotMessage { type: 'get_snapshot' }
export interface ResumeSnapshotMessage { type: 'resume_snapshot'; checkpoint: SnapshotCheckpoint }
export interface PingMessage { type: 'ping' }

export type ClientMessage =
  | HandshakeMessage | GetChangesMessage | ApplyChangesMessage
  | GetSnapshotMessage | ResumeSnapshotMessage | PingMessage;

export interface HandshakeAckMessage { type: 'handshake_ack'; databaseId: string; serverSiteId: SiteIdString; connectionId: string; protocolVersion: 1 }
export interface ChangesMessage { type: 'changes'; changeSets: ChangeSet[]; hasMore?: boolean }
export interface PushChangesMessage { type: 'push_changes'; changeSets: ChangeSet[] }
export interface ApplyResultMessage extends ApplyResult { type: 'apply_result'; requestId?: string }
export interface SnapshotChunkMessage { type: 'snapshot_chunk'; chunk: SnapshotChunk }
export interface SnapshotCompleteMessage { type: 'snapshot_complete' }
export interface RequestChangesMessage { type: 'request_changes'; siteId?: SiteIdString; sinceHLC?: HlcString }
export interface ErrorMessage { type: 'error'; code: string; message: string; fatal: boolean }
export interface PongMessage { type: 'pong' }

export type ServerMessage =
  | HandshakeAckMessage | ChangesMessage | PushChangesMessage | ApplyResultMessage
  | SnapshotChunkMessage | SnapshotCompleteMessage | RequestChangesMessage | ErrorMessage | PongMessage;

/** Changes plus schema migrations of `sets`: what a batch's size is counted in (docs/protocol.md §8). */
export function changeCount(sets: readonly ChangeSet[]): number {
  let n = 0;
  for (const set of sets) n += set.changes.length + (set.schemaMigrations?.length ?? 0);
  return n;
}
