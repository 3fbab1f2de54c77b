/**
 * Stable error codes. Clients and operators match on these strings, so they
 * never change once published; the README lists each with its meaning.
 */
export const ErrorCode = {
  // Session (docs/protocol.md §4)
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
  // Validation (docs/protocol.md §7)
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
  SnapshotRequired: 'SNAPSHOT_REQUIRED',
  // Server side
  NotFound: 'NOT_FOUND',
  MethodNotAllowed: 'METHOD_NOT_ALLOWED',
  StoreClosed: 'STORE_CLOSED',
  StorageUnavailable: 'STORAGE_UNAVAILABLE',
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

/** How each error code travels: HTTP status, and on WebSocket whether it ends the session and with which close code. */
export interface ErrorDisposition {
  /** HTTP status of the §7 error envelope. */
  readonly status: number;
  /**
   * Sent with `fatal: true` on WebSocket. Real clients stop reconnecting for
   * good on a fatal error (docs/protocol.md §8), so only a refusal that a retry
   * cannot cure is fatal; a server-side fault never is.
   */
  readonly fatal: boolean;
  /** Close code when the error ends a WebSocket session (handshake refusals and server faults). */
  readonly close?: CloseCode;
}

/**
 * The one table of every code's disposition (docs/protocol.md §4, §7). Codes not
 * listed here do not exist; `dispositionOf` maps anything else to INTERNAL_ERROR.
 */
export const ERROR_DISPOSITIONS: Readonly<Record<ErrorCode, ErrorDisposition>> = Object.freeze({
  NOT_AUTHENTICATED: { status: 401, fatal: false },
  ALREADY_AUTHENTICATED: { status: 400, fatal: true },
  PROTOCOL_VERSION_MISMATCH: { status: 400, fatal: true, close: CloseCode.ProtocolVersionMismatch },
  MISSING_DATABASE_ID: { status: 400, fatal: true, close: CloseCode.MissingDatabaseId },
  AUTH_FAILED: { status: 401, fatal: true, close: CloseCode.AuthFailed },
  // Transient as a reply; a connect refused by onAuthorize/onClientConnect is made fatal by the handshake.
  FORBIDDEN: { status: 403, fatal: false, close: CloseCode.AuthFailed },
  UNKNOWN_MESSAGE: { status: 400, fatal: false },
  MESSAGE_ERROR: { status: 400, fatal: false },
  GET_CHANGES_ERROR: { status: 500, fatal: false },
  APPLY_CHANGES_ERROR: { status: 500, fatal: false },
  SNAPSHOT_ERROR: { status: 500, fatal: false },
  INVALID_MESSAGE: { status: 400, fatal: false },
  INVALID_CHANGESET: { status: 400, fatal: false },
  INVALID_HLC: { status: 400, fatal: false },
  INVALID_SITE_ID: { status: 400, fatal: false },
  INVALID_DATABASE_ID: { status: 400, fatal: false },
  INVALID_BODY: { status: 400, fatal: false },
  INVALID_CHECKPOINT: { status: 400, fatal: false },
  CLOCK_DRIFT: { status: 400, fatal: false },
  PAYLOAD_TOO_LARGE: { status: 413, fatal: false },
  RATE_LIMITED: { status: 429, fatal: false },
  SNAPSHOT_REQUIRED: { status: 410, fatal: false },
  NOT_FOUND: { status: 404, fatal: false },
  METHOD_NOT_ALLOWED: { status: 405, fatal: false },
  STORE_CLOSED: { status: 503, fatal: false, close: CloseCode.TryAgainLater },
  // The archive (S3 or a mounted volume) did not answer in time: a retry may succeed.
  STORAGE_UNAVAILABLE: { status: 503, fatal: false, close: CloseCode.TryAgainLater },
  SHUTTING_DOWN: { status: 503, fatal: false, close: CloseCode.GoingAway },
  INTERNAL_ERROR: { status: 500, fatal: false, close: CloseCode.InternalError },
});

/** The disposition of `code`; unknown codes are treated as INTERNAL_ERROR. */
export function dispositionOf(code: string): ErrorDisposition {
  return (ERROR_DISPOSITIONS as Record<string, ErrorDisposition>)[code] ?? ERROR_DISPOSITIONS.INTERNAL_ERROR;
}

/** HTTP status for an error code (docs/protocol.md §7). */
export function httpStatusOf(code: string): number {
  return dispositionOf(code).status;
}

/** The message of an error, or its text. */
export function messageOf(err: unknown): string {
  if (isSyncError(err) || err instanceof Error) return err.message;
  return String(err);
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
