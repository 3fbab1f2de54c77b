/**
 * Stable error codes. Clients and operators match on these strings, so they
 * never change once published; the README lists each with its meaning.
 */
export const ErrorCode = {
  // Session (PROTOCOL.md §4)
  NotAuthenticated: 'NOT_AUTHENTICATED',
  AlreadyAuthenticated: 'ALREADY_AUTHENTICATED',
  ProtocolVersionMismatch: 'PROTOCOL_VERSION_MISMATCH',
  MissingDatabaseId: 'MISSING_DATABASE_ID',
  AuthFailed: 'AUTH_FAILED',
  Forbidden: 'FORBIDDEN',
  UnknownMessage: 'UNKNOWN_MESSAGE',
  MessageError: 'MESSAGE_ERROR',
  GetChangesError: 'GET_CHANGES_ERROR',
  ApplyChangesError: 'APPLY_CHANGES_ERROR',
  SnapshotError: 'SNAPSHOT_ERROR',
  // Validation (PROTOCOL.md §7)
  InvalidMessage: 'INVALID_MESSAGE',
  InvalidChangeSet: 'INVALID_CHANGESET',
  InvalidHlc: 'INVALID_HLC',
  InvalidSiteId: 'INVALID_SITE_ID',
  InvalidDatabaseId: 'INVALID_DATABASE_ID',
  InvalidBody: 'INVALID_BODY',
  InvalidCheckpoint: 'INVALID_CHECKPOINT',
  ClockDrift: 'CLOCK_DRIFT',
  PayloadTooLarge: 'PAYLOAD_TOO_LARGE',
  RateLimited: 'RATE_LIMITED',
  Lagging: 'LAGGING',
  SnapshotRequired: 'SNAPSHOT_REQUIRED',
  // Server side
  NotFound: 'NOT_FOUND',
  StoreClosed: 'STORE_CLOSED',
  ShuttingDown: 'SHUTTING_DOWN',
  Internal: 'INTERNAL_ERROR',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** WebSocket close codes used by the coordinator. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  InternalError: 1011,
  TryAgainLater: 1013,
  AuthFailed: 4001,
  MissingDatabaseId: 4002,
  ProtocolVersionMismatch: 4003,
} as const;

export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/**
 * A failure a caller can act on: `code` is stable, `message` names the field
 * and the offending value. `fatal` marks session-ending errors on WebSocket.
 */
export class SyncError extends Error {
  readonly code: ErrorCode;
  readonly fatal: boolean;

  constructor(code: ErrorCode, message: string, options: { fatal?: boolean; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SyncError';
    this.code = code;
    this.fatal = options.fatal ?? false;
  }
}

/** True when `err` is a SyncError (also across duplicated module copies). */
export function isSyncError(err: unknown): err is SyncError {
  return err instanceof SyncError
    || (typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'SyncError'
      && typeof (err as { code?: unknown }).code === 'string');
}

/** Short, bounded rendering of an untrusted value for error messages. */
export function describeValue(value: unknown): string {
  let text: string;
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') text = JSON.stringify(value);
  else if (typeof value === 'number' || typeof value === 'boolean' || value === null) text = String(value);
  else if (typeof value === 'bigint') text = `${value}n`;
  else if (Array.isArray(value)) text = `array(${value.length})`;
  else if (typeof value === 'object') text = 'object';
  else text = typeof value;
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
