import { constants } from 'node:fs';
import { access, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ConfigError } from './load-config.js';
import { openLevelStore } from '../storage/leveldb.js';
import type { KvStore } from '../storage/kv.js';
import { logs } from '../log.js';

const log = logs.server;

/** Directory inside the data directory whose LevelDB lock marks it as taken; ids never start with "." (database-id.ts), so no database can be named so. */
const LOCK_DIR = '.sync-coordinator-lock';
/** Informational file in LOCK_DIR naming the holder; the LevelDB lock, not this file, decides. */
const OWNER_FILE = 'owner.json';

/** Who holds a data directory, as written to OWNER_FILE. */
interface DataDirOwner {
  pid: number;
  hostname: string;
  /** `performance.timeOrigin` of the holder: tells this process from an earlier one that had the same pid. */
  processStart: number;
  since: string;
}

/** A claimed data directory; `release` is idempotent. */
export interface DataDirLock {
  release(): Promise<void>;
}

const ERRNO_TEXT: Readonly<Record<string, string>> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOTDIR: 'a parent is not a directory',
  ENOSPC: 'no space left on device',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'name too long',
  ENOENT: 'the file system refuses to create it there',
};

function errnoText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === undefined) return (err as Error).message;
  return ERRNO_TEXT[code] ? `${code}: ${ERRNO_TEXT[code]}` : code;
}

function dataDirError(dir: string, problem: string, cause?: unknown): ConfigError {
  return new ConfigError('dataDir', dir, problem, { cause });
}

async function readOwner(lockDir: string): Promise<DataDirOwner | undefined> {
  try {
    const owner = JSON.parse(await readFile(join(lockDir, OWNER_FILE), 'utf8')) as Partial<DataDirOwner>;
    return typeof owner.pid === 'number' && typeof owner.hostname === 'string' ? (owner as DataDirOwner) : undefined;
  } catch {
    return undefined;
  }
}

function inUseError(dir: string, owner: DataDirOwner | undefined, cause?: unknown): ConfigError {
  const who = owner ? ` (pid ${owner.pid} on ${owner.hostname}${owner.since ? `, since ${owner.since}` : ''})` : '';
  return dataDirError(dir, `${JSON.stringify(dir)} is in use by another running sync coordinator${who}; stop it or use another directory`, cause);
}

/**
 * `mkdir -p` made of single mkdirs, from the nearest existing ancestor down.
 * Node's `mkdir(dir, { recursive: true })` never settles where the file
 * system answers ENOENT although the parent exists (procfs: `/proc/x` spins a
 * pool thread forever); one component at a time, that answer is an error.
 * Throws the failing call's errno error.
 */
async function makeDirectory(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let at = resolve(dir); ; at = dirname(at)) {
    try {
      await stat(at);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    missing.push(at);
    if (dirname(at) === at) break;
  }
  for (const path of missing.reverse()) {
    try {
      await mkdir(path);
    } catch (err) {
      // Made meanwhile by someone else: as good as made here.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/**
 * Makes `dir` ready for one server and takes it: creates it (with parents)
 * when missing, checks that it is a writable directory, and takes an
 * exclusive lock so that a second server on the same directory fails here
 * instead of fighting over the databases.
 *
 * The lock is LevelDB's own (an fcntl lock on `<dir>/.sync-coordinator-lock/LOCK`,
 * LockFileEx on Windows): the kernel drops it when the holder dies, so a
 * crash never leaves a stale lock behind, and pids reused across restarts
 * (a container's pid 1) cannot fool it the way a pid file can. Closing any
 * descriptor of a locked file drops the process's fcntl lock, and LevelDB
 * opens one before refusing a lock its own process holds; the owner file is
 * therefore checked first, so a second server in this process is refused
 * without touching the lock.
 *
 * Throws ConfigError (`setting` "dataDir", `value` the path) naming the problem.
 */
export async function claimDataDir(dir: string): Promise<DataDirLock> {
  try {
    await makeDirectory(dir);
  } catch (err) {
    throw dataDirError(dir, `cannot create directory ${JSON.stringify(dir)} (${errnoText(err)})`, err);
  }
  let info;
  try {
    info = await stat(dir);
  } catch (err) {
    throw dataDirError(dir, `cannot read ${JSON.stringify(dir)} (${errnoText(err)})`, err);
  }
  if (!info.isDirectory()) throw dataDirError(dir, `${JSON.stringify(dir)} is a file, not a directory`);
  try {
    // X as well as W: creating entries in a directory needs search permission too.
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw dataDirError(dir, `directory ${JSON.stringify(dir)} is not writable (${errnoText(err)})`, err);
  }

  const lockDir = join(dir, LOCK_DIR);
  const previous = await readOwner(lockDir);
  if (previous && previous.pid === process.pid && previous.processStart === performance.timeOrigin && previous.hostname === hostname()) {
    throw inUseError(dir, previous);
  }
  let store: KvStore;
  try {
    // The store is never written: small buffers keep its footprint to a few descriptors.
    store = await openLevelStore(lockDir, { writeBufferSize: 64 * 1024, cacheSize: 8 * 1024 });
  } catch (err) {
    const message = err instanceof Error ? `${err.message} ${(err.cause as Error | undefined)?.message ?? ''}` : String(err);
    // POSIX: "lock <path>/LOCK: Resource temporarily unavailable"; Windows: "LockFile ...: ... being used by another process".
    if (/lock/i.test(message) && /(unavailable|already held|in use|being used|locked)/i.test(message)) throw inUseError(dir, await readOwner(lockDir), err);
    throw dataDirError(dir, `cannot lock directory ${JSON.stringify(dir)} (${(err as Error).message})`, err);
  }
  const owner: DataDirOwner = { pid: process.pid, hostname: hostname(), processStart: performance.timeOrigin, since: new Date().toISOString() };
  try {
    await writeFile(join(lockDir, OWNER_FILE), `${JSON.stringify(owner)}\n`);
  } catch (err) {
    await store.close();
    throw dataDirError(dir, `directory ${JSON.stringify(dir)} is not writable (${errnoText(err)})`, err);
  }
  log('claimed data directory %s', dir);
  let released: Promise<void> | undefined;
  return {
    release() {
      released ??= (async () => {
        try {
          // The owner file goes first: once the lock is free, a file naming this process would be a lie.
          await rm(join(lockDir, OWNER_FILE), { force: true });
        } finally {
          await store.close();
        }
        log('released data directory %s', dir);
      })();
      return released;
    },
  };
}

