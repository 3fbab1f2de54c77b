/**
 * Policy through hooks: signed tokens instead of a token list, read-only
 * users, a table clients may not write, and connection logging.
 *
 * A token is `<userId>.<role>.<signature>`, the signature being the base64url
 * HMAC-SHA256 of `<userId>.<role>` under HOOK_SECRET. Whoever holds the
 * secret (your login service) issues tokens; the coordinator only checks them.
 *
 *     HOOK_SECRET=... node --import tsx examples/custom-hooks.ts
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCoordinatorServer, type CoordinatorHooks, type Rejection } from '../lib/index.js';

const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? '127.0.0.1';
// Without DATA_DIR the data is throwaway, so a demo run leaves nothing behind.
const dataDir = process.env.DATA_DIR ?? await mkdtemp(join(tmpdir(), 'sync-example-'));
// Never ship the default: anyone reading this file can sign tokens with it.
const secret = process.env.HOOK_SECRET ?? 'demo-secret-do-not-use-in-production';

type Role = 'reader' | 'writer';
interface User { userId: string; role: Role }

/** Written by the server alone (say, from onAfterApplyChanges); clients may not sync into it. */
const PROTECTED_TABLES = new Set(['audit_log']);

function signature(userId: string, role: string): Buffer {
  return createHmac('sha256', secret).update(`${userId}.${role}`).digest();
}

/** What your login service would run to issue a token. */
function signToken(userId: string, role: Role): string {
  return `${userId}.${role}.${signature(userId, role).toString('base64url')}`;
}

function verifyToken(token: string | undefined): User {
  const [userId, role, sig, ...extra] = (token ?? '').split('.');
  if (!userId || !sig || extra.length > 0 || (role !== 'reader' && role !== 'writer')) {
    throw new Error('token: expected <userId>.<reader|writer>.<signature>');
  }
  const expected = signature(userId, role);
  const given = Buffer.from(sig, 'base64url');
  // timingSafeEqual throws on a length mismatch, and the length is no secret.
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new Error('token: bad signature');
  return { userId, role };
}

const hooks: CoordinatorHooks<User> = {
  onAuthenticate({ token }) {
    return verifyToken(token);
  },

  onAuthorize(identity, { action }) {
    return action !== 'apply_changes' || identity.role === 'writer';
  },

  // Trims protected-table changes out of each transaction and lets the rest through.
  onBeforeApplyChanges(_identity, changeSets) {
    const rejected: Rejection[] = [];
    const approved = changeSets
      .map((set) => ({
        ...set,
        changes: set.changes.filter((change) => {
          if (!PROTECTED_TABLES.has(change.table)) return true;
          rejected.push({ reason: `${change.table} is written by the server only`, code: 'PROTECTED_TABLE', table: change.table });
          return false;
        }),
      }))
      .filter((set) => set.changes.length > 0 || (set.schemaMigrations?.length ?? 0) > 0);
    return { approved, rejected };
  },

  // Logs go to stderr: stdout carries only the "listening on" line.
  onClientConnect(identity, client) {
    const { userId, role } = identity;
    console.error(`connect ${userId} (${role}) to ${client.databaseId} as ${client.connectionId}`);
  },

  onClientDisconnect(identity, client) {
    console.error(`disconnect ${identity.userId} from ${client.databaseId} as ${client.connectionId}`);
  },
};

const coordinator = createCoordinatorServer({ config: { port, host, dataDir }, hooks });
const { url } = await coordinator.start();
console.log(`listening on ${url}`);
if (!process.env.HOOK_SECRET) {
  console.error(`demo tokens: writer ${signToken('alice', 'writer')}, reader ${signToken('bob', 'reader')}`);
}

async function shutdown(): Promise<void> {
  await coordinator.stop();
  if (!process.env.DATA_DIR) await rm(dataDir, { recursive: true, force: true });
}

// `once`: a second Ctrl-C during a stuck shutdown falls back to the default, killing the process.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    shutdown().then(
      () => process.exit(0),
      (err) => { console.error(err); process.exit(1); },
    );
  });
}
