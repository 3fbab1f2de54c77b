import type { IncomingHttpHeaders } from 'node:http';
import type { ApplyResult, ChangeSet, Rejection } from '../protocol/messages.js';

/**
 * Who a client is: what `onAuthenticate` returned (any value but
 * null/undefined/false), or `{ databaseId, siteId }` without that hook.
 * Hooks are generic over it, so they need no casts.
 */
export type Identity = unknown;

/** What `onAuthenticate` sees. */
export interface AuthenticateContext {
  databaseId: string;
  /** The client's site id (base64url). */
  siteId: string;
  /** Bearer token (HTTP) or handshake token (WebSocket), if sent. */
  token?: string;
  transport: 'http' | 'websocket';
  remoteAddress?: string;
  headers: IncomingHttpHeaders;
}

/** An action a client wants to take, passed to `onAuthorize`. */
export interface Operation {
  action: 'connect' | 'get_changes' | 'apply_changes' | 'get_snapshot';
  databaseId: string;
  siteId: string;
}

/** What `onBeforeApplyChanges` decides. */
export interface ApplyDecision {
  /** Change sets to apply (may be trimmed copies of the input; they are validated again). */
  approved: ChangeSet[];
  /** What was refused; returned to the client in `apply_result.rejected`. */
  rejected?: Rejection[];
}

/** Context of apply hooks. */
export interface ApplyContext {
  databaseId: string;
  siteId: string;
}

/** A connected WebSocket client. */
export interface ClientInfo {
  databaseId: string;
  siteId: string;
  connectionId: string;
  remoteAddress?: string;
}

/** What `onAuthenticate` may return: the identity, or a falsy value to refuse. */
export type AuthenticateResult<I> = I | null | undefined | false;

/**
 * Optional async hooks, generic over the identity type `I` that
 * `onAuthenticate` returns (e.g. `CoordinatorHooks<{ userId: string }>`), so
 * every other hook gets it typed. A hook that throws refuses that one action
 * with its message; it never takes the server down.
 */
export interface CoordinatorHooks<I = Identity> {
  /** Returns the identity of a client, or throws / returns a falsy value to refuse (AUTH_FAILED). */
  onAuthenticate?(ctx: AuthenticateContext): Promise<AuthenticateResult<I>> | AuthenticateResult<I>;
  /** Returns anything but `true` to refuse an operation (FORBIDDEN). */
  onAuthorize?(identity: I, operation: Operation): Promise<boolean> | boolean;
  /** Filters incoming change sets; rejections reach the client in `apply_result.rejected`. */
  onBeforeApplyChanges?(identity: I, changeSets: ChangeSet[], ctx: ApplyContext): Promise<ApplyDecision> | ApplyDecision;
  /** Runs after a successful apply; errors are logged and ignored (the changes are stored). */
  onAfterApplyChanges?(identity: I, result: ApplyResult, changeSets: ChangeSet[], ctx: ApplyContext): Promise<void> | void;
  /** Returns false to refuse a WebSocket client after authentication. */
  onClientConnect?(identity: I, client: ClientInfo): Promise<boolean | void> | boolean | void;
  /** Runs when a WebSocket client goes away; errors are logged and ignored. */
  onClientDisconnect?(identity: I, client: ClientInfo): Promise<void> | void;
}

/** What a `dashboardAuth` function is asked about one request for the dashboard page or its event stream. */
export interface DashboardAuthContext {
  /** The `token` query parameter, else the `Authorization: Bearer` token; undefined when neither is sent. */
  token: string | undefined;
  /** The client's address (the last `X-Forwarded-For` entry with `trustProxy`). */
  remoteAddress: string;
  headers: IncomingHttpHeaders;
}

/**
 * Decides who may see the status page (README "Dashboard"): returning `true`
 * lets the request through; anything else, or throwing, answers 401
 * AUTH_FAILED (with the thrown message).
 */
export type DashboardAuthHook = (ctx: DashboardAuthContext) => Promise<boolean> | boolean;

/**
 * Who may see the status page: `'off'` anyone, `'token'` a token of
 * `authTokens` or `statusTokens` (as `?token=` or `Authorization: Bearer`),
 * or a function.
 */
export type DashboardAuth = 'off' | 'token' | DashboardAuthHook;
