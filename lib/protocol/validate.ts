import { SyncError, ErrorCode, describeValue } from '../errors.js';
import { hlcFromWire, checkDrift, DEFAULT_MAX_DRIFT_MS } from './hlc.js';
import { siteIdFromWire } from './site-id.js';
import { validateSqlValue, type WireSqlValue } from './values.js';
import {
  MIGRATION_TYPES, migrationKind,
  type Change, type ChangeSet, type ColumnChange, type DeleteChange,
  type MigrationType, type SchemaMigration, type SnapshotCheckpoint,
} from './messages.js';

/** Longest accepted schema, table, column or index name. */
export const MAX_NAME_LENGTH = 512;
/** Longest accepted primary key (number of values). */
export const MAX_PK_VALUES = 64;

const TRANSACTION_ID = /^(0|[1-9][0-9]{0,19}):(0|[1-9][0-9]{0,4}):[A-Za-z0-9_-]{22}$/;
const MIGRATION_TYPE_SET: ReadonlySet<string> = new Set(MIGRATION_TYPES);

/** What validation checks timestamps against. */
export interface ValidationContext {
  /** The coordinator's wall clock now, in ms. */
  now: number;
  /** @default 60000 */
  maxDriftMs?: number;
}

/** A checked change with its binary HLC. */
export interface ValidChange {
  wire: Change;
  hlc: Buffer;
}

/** A checked migration with its binary HLC and object kind. */
export interface ValidMigration {
  wire: SchemaMigration;
  hlc: Buffer;
  kind: 'table' | 'index';
  /** The object the migration names: the index name for *_index, else the table. */
  name: string;
}

/** A checked change set: canonical wire form plus decoded fields. */
export interface ValidChangeSet {
  wire: ChangeSet;
  siteId: Buffer;
  hlc: Buffer;
  changes: ValidChange[];
  migrations: ValidMigration[];
}

/**
 * Turns an untrusted `changes` array into checked change sets, or throws a
 * SyncError whose message names the path of the first bad field. Every HLC in
 * it is held to the drift bound. Unknown keys are dropped; the returned wire
 * objects hold only the fields of docs/protocol.md §2, present-only.
 */
export function validateChangeSets(value: unknown, ctx: ValidationContext, path = 'changes'): ValidChangeSet[] {
  if (!Array.isArray(value)) throw new SyncError(ErrorCode.InvalidMessage, `${path}: expected an array of change sets, got ${describeValue(value)}`);
  const maxDrift = ctx.maxDriftMs ?? DEFAULT_MAX_DRIFT_MS;
  const out: ValidChangeSet[] = new Array(value.length);
  for (let i = 0; i < value.length; i++) out[i] = validateChangeSet(value[i], ctx.now, maxDrift, `${path}[${i}]`);
  return out;
}

function validateChangeSet(value: unknown, now: number, maxDrift: number, path: string): ValidChangeSet {
  const obj = expectObject(value, path, ErrorCode.InvalidChangeSet);
  const siteId = siteIdFromWire(obj.siteId, `${path}.siteId`);
  const transactionId = obj.transactionId;
  if (typeof transactionId !== 'string' || !TRANSACTION_ID.test(transactionId)) {
    throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.transactionId: expected "<wallTime>:<counter>:<siteId>", got ${describeValue(transactionId)}`);
  }
  const hlc = timestamp(obj.hlc, `${path}.hlc`, now, maxDrift);
  const rawChanges = obj.changes;
  if (!Array.isArray(rawChanges)) throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.changes: expected an array, got ${describeValue(rawChanges)}`);
  const changes: ValidChange[] = new Array(rawChanges.length);
  for (let i = 0; i < rawChanges.length; i++) changes[i] = validateChange(rawChanges[i], now, maxDrift, `${path}.changes[${i}]`);
  const rawMigrations = obj.schemaMigrations ?? [];
  if (!Array.isArray(rawMigrations)) throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.schemaMigrations: expected an array, got ${describeValue(rawMigrations)}`);
  const migrations: ValidMigration[] = new Array(rawMigrations.length);
  for (let i = 0; i < rawMigrations.length; i++) migrations[i] = validateMigration(rawMigrations[i], now, maxDrift, `${path}.schemaMigrations[${i}]`);
  return {
    wire: {
      siteId: obj.siteId as string,
      transactionId,
      hlc: obj.hlc as string,
      changes: changes.map((c) => c.wire),
      schemaMigrations: migrations.map((m) => m.wire),
    },
    siteId,
    hlc,
    changes,
    migrations,
  };
}

function validateChange(value: unknown, now: number, maxDrift: number, path: string): ValidChange {
  const obj = expectObject(value, path, ErrorCode.InvalidChangeSet);
  const type = obj.type;
  const schema = name(obj.schema, `${path}.schema`);
  const table = name(obj.table, `${path}.table`);
  const pk = sqlValues(obj.pk, `${path}.pk`, true);
  const hlc = timestamp(obj.hlc, `${path}.hlc`, now, maxDrift);
  if (type === 'column') {
    const column = name(obj.column, `${path}.column`);
    if (!('value' in obj)) throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.value: required for a column change`);
    const wire: ColumnChange = { type, schema, table, pk, column, value: validateSqlValue(obj.value, `${path}.value`), hlc: obj.hlc as string };
    const hasPriorValue = obj.priorValue !== undefined;
    const hasPriorHlc = obj.priorHlc !== undefined;
    if (hasPriorValue !== hasPriorHlc) {
      throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.${hasPriorValue ? 'priorHlc' : 'priorValue'}: priorValue and priorHlc come together, got only ${hasPriorValue ? 'priorValue' : 'priorHlc'}`);
    }
    if (hasPriorValue) {
      wire.priorValue = validateSqlValue(obj.priorValue, `${path}.priorValue`);
      timestamp(obj.priorHlc, `${path}.priorHlc`, now, maxDrift);
      wire.priorHlc = obj.priorHlc as string;
    }
    return { wire, hlc };
  }
  if (type === 'delete') {
    const wire: DeleteChange = { type, schema, table, pk, hlc: obj.hlc as string };
    if (obj.priorRow !== undefined) wire.priorRow = sqlValues(obj.priorRow, `${path}.priorRow`, false);
    return { wire, hlc };
  }
  throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.type: expected "column" or "delete", got ${describeValue(type)}`);
}

function validateMigration(value: unknown, now: number, maxDrift: number, path: string): ValidMigration {
  const obj = expectObject(value, path, ErrorCode.InvalidChangeSet);
  const type = obj.type;
  if (typeof type !== 'string' || !MIGRATION_TYPE_SET.has(type)) {
    throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.type: expected one of ${MIGRATION_TYPES.join(', ')}, got ${describeValue(type)}`);
  }
  const schema = name(obj.schema, `${path}.schema`);
  const table = name(obj.table, `${path}.table`);
  const ddl = obj.ddl;
  if (typeof ddl !== 'string') throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.ddl: expected a string, got ${describeValue(ddl)}`);
  const hlc = timestamp(obj.hlc, `${path}.hlc`, now, maxDrift);
  const version = obj.schemaVersion;
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 0 || version > 0xffffffff) {
    throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.schemaVersion: expected an integer in 0..4294967295, got ${describeValue(version)}`);
  }
  const migrationType = type as MigrationType;
  let fromTable: string | undefined;
  if (obj.fromTable !== undefined) fromTable = name(obj.fromTable, `${path}.fromTable`);
  else if (migrationType === 'rename_table') throw new SyncError(ErrorCode.InvalidChangeSet, `${path}.fromTable: required for rename_table`);
  const hlcText = obj.hlc as string;
  const wire: SchemaMigration = fromTable === undefined
    ? { type: migrationType, schema, table, ddl, hlc: hlcText, schemaVersion: version }
    : { type: migrationType, schema, table, fromTable, ddl, hlc: hlcText, schemaVersion: version };
  return { wire, hlc, kind: migrationKind(migrationType), name: table };
}

/**
 * Checks an optional cursor (`sinceHLC`, docs/protocol.md §4, §5). Only an ABSENT
 * field (undefined) means "from the beginning"; `null`, `""` and anything
 * else that is not a wire HLC throw INVALID_HLC naming `field`, since
 * reading them as "from the beginning" would answer the whole history to a
 * client that meant a cursor.
 */
export function validateCursor(value: unknown, field = 'sinceHLC'): Buffer | undefined {
  if (value === undefined) return undefined;
  return cursor(value, field);
}

/** A present cursor: a wire HLC, with a plain word for the empty and null look-alikes of "absent". */
function cursor(value: unknown, field: string): Buffer {
  if (value === '' || value === null) {
    throw new SyncError(ErrorCode.InvalidHlc, `${field}: got ${value === null ? 'null' : 'an empty string'}, expected a base64 HLC of 30 bytes; leave the field out to read from the beginning`);
  }
  return hlcFromWire(value, field);
}

/**
 * Checks the shape of a resume checkpoint (types and ranges, docs/protocol.md §6):
 * throws INVALID_CHECKPOINT naming the field and value. `siteId` must be a
 * well-formed site id but is whatever the client stored (real clients put
 * their own, §8), so nothing compares it. What the tables and `hlc` mean
 * against the data is the replica's business (snapshot.ts), which never
 * refuses a well-formed checkpoint.
 */
export function validateCheckpoint(value: unknown, field = 'checkpoint'): SnapshotCheckpoint & { hlcBytes: Buffer } {
  const obj = expectObject(value, field, ErrorCode.InvalidCheckpoint);
  const snapshotId = obj.snapshotId;
  if (typeof snapshotId !== 'string' || snapshotId.length === 0 || snapshotId.length > 128) {
    throw new SyncError(ErrorCode.InvalidCheckpoint, `${field}.snapshotId: expected a string of 1-128 characters, got ${describeValue(snapshotId)}`);
  }
  wrap(() => siteIdFromWire(obj.siteId, `${field}.siteId`));
  const hlcBytes = wrap(() => cursor(obj.hlc, `${field}.hlc`));
  const lastTableIndex = integer(obj.lastTableIndex, `${field}.lastTableIndex`, -1);
  const lastEntryIndex = integer(obj.lastEntryIndex, `${field}.lastEntryIndex`, -1);
  const entriesProcessed = integer(obj.entriesProcessed, `${field}.entriesProcessed`, 0);
  const createdAt = integer(obj.createdAt, `${field}.createdAt`, 0);
  const completed = obj.completedTables;
  if (!Array.isArray(completed) || completed.length > 100_000) {
    throw new SyncError(ErrorCode.InvalidCheckpoint, `${field}.completedTables: expected an array of "schema.table" strings, got ${describeValue(completed)}`);
  }
  const completedTables = completed.map((t, i) => {
    if (typeof t !== 'string' || t.length === 0 || t.length > 2 * MAX_NAME_LENGTH + 1 || !t.includes('.')) {
      throw new SyncError(ErrorCode.InvalidCheckpoint, `${field}.completedTables[${i}]: expected "schema.table", got ${describeValue(t)}`);
    }
    return t;
  });
  return {
    snapshotId, siteId: obj.siteId as string, hlc: obj.hlc as string, lastTableIndex, lastEntryIndex,
    completedTables, entriesProcessed, createdAt, hlcBytes,
  };
}

function wrap<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new SyncError(ErrorCode.InvalidCheckpoint, (err as Error).message);
  }
}

function integer(value: unknown, field: string, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new SyncError(ErrorCode.InvalidCheckpoint, `${field}: expected an integer >= ${min}, got ${describeValue(value)}`);
  }
  return value;
}

function expectObject(value: unknown, path: string, code: typeof ErrorCode[keyof typeof ErrorCode]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new SyncError(code, `${path}: expected an object, got ${describeValue(value)}`);
  }
  return value as Record<string, unknown>;
}

function name(value: unknown, path: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_NAME_LENGTH) {
    throw new SyncError(ErrorCode.InvalidChangeSet, `${path}: expected a name of 1-${MAX_NAME_LENGTH} characters, got ${describeValue(value)}`);
  }
  return value;
}

function sqlValues(value: unknown, path: string, isKey: boolean): WireSqlValue[] {
  if (!Array.isArray(value) || (isKey && (value.length === 0 || value.length > MAX_PK_VALUES))) {
    throw new SyncError(ErrorCode.InvalidChangeSet, `${path}: expected ${isKey ? `an array of 1-${MAX_PK_VALUES} SQL values` : 'an array of SQL values'}, got ${describeValue(value)}`);
  }
  const out: WireSqlValue[] = new Array(value.length);
  for (let i = 0; i < value.length; i++) out[i] = validateSqlValue(value[i], `${path}[${i}]`);
  return out;
}

function timestamp(value: unknown, path: string, now: number, maxDrift: number): Buffer {
  const buf = hlcFromWire(value, path);
  checkDrift(buf, now, maxDrift, path);
  return buf;
}
