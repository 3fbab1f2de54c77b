/**
 * What the S3 acceptance specs observe of a coordinator process, the way a
 * client or an operator would: its snapshot and change feed over HTTP, its
 * /metrics and /status, and writers that keep writing over real sockets
 * while recording exactly which writes were acknowledged and which refused.
 */
import { expect } from 'chai';
import { TestSite } from './changes.js';
import { eventually, type CoordinatorProcess } from './coordinator-process.js';
import { RawSocket } from './raw-socket.js';
import type { ChangeSet, SnapshotChunk } from '../../lib/protocol/messages.js';

/**
 * The database's state as `GET /:db/snapshot` shows it, minus what a restore
 * legitimately changes: the snapshot id, and tombstones' `createdAt` (when
 * this store recorded the delete).
 */
export async function snapshotState(proc: CoordinatorProcess, db: string): Promise<unknown[]> {
  let res = await proc.get(`/${db}/snapshot`, { 'x-site-id': new TestSite().wire });
  // A client retries a transient 503 STORAGE_UNAVAILABLE, and so does this
  // reader, a few times: s3rver (unlike S3) can answer a LIST that races
  // another process's uploads with a 500, even after the SDK's own retries,
  // and a restore that meets it is refused rather than half done. A restore
  // that keeps failing still fails the test.
  for (let retry = 0; retry < 5 && res.status === 503 && res.body.includes('STORAGE_UNAVAILABLE'); retry++) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    res = await proc.get(`/${db}/snapshot`, { 'x-site-id': new TestSite().wire });
  }
  expect(res.status, res.body.slice(0, 300)).to.equal(200);
  return res.body.trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk).map((chunk) => {
    if (chunk.type === 'header' || chunk.type === 'footer') return { ...chunk, snapshotId: '' };
    if (chunk.type === 'tombstone') return { ...chunk, entries: chunk.entries.map((e) => ({ ...e, createdAt: 0 })) };
    return chunk;
  });
}

/** Every change set after `cursor` (all of them when undefined), as a reader site that wrote nothing sees them, page by page. */
export async function changesAfter(proc: CoordinatorProcess, db: string, cursor: string | undefined): Promise<ChangeSet[]> {
  const reader = new TestSite().wire;
  const out: ChangeSet[] = [];
  for (let at = cursor; ;) {
    const res = await proc.get(`/${db}/changes${at ? `?sinceHLC=${encodeURIComponent(at)}` : ''}`, { 'x-site-id': reader });
    expect(res.status, res.body.slice(0, 300)).to.equal(200);
    const { data } = JSON.parse(res.body) as { data: { changes: ChangeSet[]; hasMore?: boolean } };
    out.push(...data.changes);
    if (!data.hasMore || data.changes.length === 0) return out;
    at = data.changes.at(-1)!.hlc;
  }
}

/** The ids written by `message()` that a snapshot state holds (its `notes.a` cells). */
export function idsIn(state: unknown[]): Set<string> {
  const ids = new Set<string>();
  for (const chunk of state as SnapshotChunk[]) {
    if (chunk.type !== 'column-versions' || chunk.table !== 'notes') continue;
    for (const entry of chunk.entries) if (entry.column === 'a') ids.add(String(entry.value));
  }
  return ids;
}

/**
 * One transaction for write `id`: its own row (`notes.a` = id, so a snapshot
 * shows whether it is stored), an overwrite of one of 10 shared rows, and
 * every 9th write a delete of a shared row (tombstones).
 */
export function message(site: TestSite, id: string, n: number): ChangeSet {
  const changes: Parameters<TestSite['txn']>[0] = [
    { pk: [id], column: 'a', value: id },
    { pk: [`hot${n % 10}`], column: 'b', value: id },
  ];
  if (n % 9 === 8) changes.push({ pk: [`hot${(n + 3) % 10}`], delete: true });
  return site.txn(changes);
}

/** What writers saw: acknowledged ids, and refused ids with the error code. */
export class Tally {
  readonly acked = new Set<string>();
  readonly refused = new Map<string, string>();
  /** Refusals per code. */
  codes(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const code of this.refused.values()) out[code] = (out[code] ?? 0) + 1;
    return out;
  }
}

export interface WriterOptions {
  /** Writes in flight at once (WebSocket). @default 4 */
  window?: number;
  /** Pause after each answer, in ms, to keep the rate modest. @default 0 */
  paceMs?: number;
  /** Stop sending once this returns true. */
  until: () => boolean;
}

/**
 * Writes `<tag>/<n>` over one WebSocket, `window` in flight, until `until()`
 * or the socket dies (the process was killed); resolves once every write sent
 * was answered or the socket closed. An `apply_result` adds the id to
 * `tally.acked`; an `error` (answers come in order) adds the oldest
 * unanswered id to `tally.refused`.
 */
export async function wsWriter(proc: CoordinatorProcess, db: string, tag: string, tally: Tally, options: WriterOptions): Promise<void> {
  const site = new TestSite();
  const window = options.window ?? 4;
  const inFlight: string[] = [];
  let n = 0;
  let socket!: RawSocket;
  let done = false;
  const finish = (): void => {
    if (done) return;
    done = true;
    void socket.close();
  };
  const sendNext = (): void => {
    if (options.until()) {
      if (inFlight.length === 0) finish();
      return;
    }
    const id = `${tag}/${n}`;
    inFlight.push(id);
    if (socket.ws.readyState === socket.ws.OPEN) socket.send(JSON.stringify({ type: 'apply_changes', requestId: id, changes: [message(site, id, n)] }));
    n++;
  };
  const answered = (): void => {
    if (options.paceMs) setTimeout(sendNext, options.paceMs);
    else sendNext();
  };
  try {
    socket = await RawSocket.open(proc.wsUrl, {
      onFrame(text) {
        const reply = JSON.parse(text) as { type: string; requestId?: string; code?: string };
        if (reply.type === 'handshake_ack') {
          for (let i = 0; i < window; i++) sendNext();
        } else if (reply.type === 'apply_result') {
          const id = inFlight.shift();
          expect(reply.requestId).to.equal(id);
          tally.acked.add(id!);
          answered();
        } else if (reply.type === 'error') {
          const id = inFlight.shift();
          if (id === undefined) throw new Error(`unexpected error frame ${text.slice(0, 300)}`);
          tally.refused.set(id, reply.code ?? '?');
          answered();
        }
        return true;
      },
    });
  } catch {
    return; // the process is gone before the socket opened
  }
  socket.send(JSON.stringify({ type: 'handshake', databaseId: db, siteId: site.wire, protocolVersion: 1 }));
  await socket.closed;
}

/**
 * Posts `<tag>/<n>` one at a time over HTTP until `until()` or the process
 * is gone: 200 adds the id to `tally.acked`, an error body adds it to
 * `tally.refused` with its code and HTTP status (`STORAGE_UNAVAILABLE@503`).
 */
export async function httpWriter(proc: CoordinatorProcess, db: string, tag: string, tally: Tally, options: WriterOptions): Promise<void> {
  const site = new TestSite();
  for (let n = 0; !options.until(); n++) {
    const id = `${tag}/${n}`;
    let res;
    try {
      res = await proc.post(`/${db}/changes`, JSON.stringify({ changes: [message(site, id, n)] }), { 'x-site-id': site.wire });
    } catch {
      return;
    }
    if (res.status === 200) tally.acked.add(id);
    else tally.refused.set(id, `${(JSON.parse(res.body) as { error: { code: string } }).error.code}@${res.status}`);
    if (options.paceMs) await new Promise((resolve) => setTimeout(resolve, options.paceMs));
  }
}

/**
 * Waits until the process's archive has caught up with every open database:
 * `sync_archive_pending_transactions` and `sync_archive_lag_seconds` both 0
 * on two polls in a row (the lag is the stamp comparison; the pending count
 * is approximate). Returns the ms it took; fails after `timeoutMs`.
 */
export async function archiveCaughtUp(proc: CoordinatorProcess, timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  let streak = 0;
  const ok = await eventually(async () => {
    const pending = await proc.metric('sync_archive_pending_transactions');
    const lag = await proc.metric('sync_archive_lag_seconds');
    streak = pending === 0 && lag === 0 ? streak + 1 : 0;
    return streak >= 2;
  }, Math.ceil(timeoutMs / 200), 200);
  expect(ok, `archive caught up within ${timeoutMs} ms (pending ${await proc.metric('sync_archive_pending_transactions')}, lag ${await proc.metric('sync_archive_lag_seconds')} s)`).to.equal(true);
  return Date.now() - started;
}

/** `GET /status` → `data.archive`. */
export async function archiveStatus(proc: CoordinatorProcess): Promise<Record<string, unknown>> {
  const res = await proc.get('/status');
  expect(res.status).to.equal(200);
  return (JSON.parse(res.body) as { data: { archive?: Record<string, unknown> } }).data.archive ?? {};
}

/** Waits until metric `sample` reaches at least `value`; fails after `timeoutMs`. */
export async function metricReaches(proc: CoordinatorProcess, sample: string, value: number, timeoutMs = 30_000): Promise<void> {
  const ok = await eventually(async () => (await proc.metric(sample)) >= value, Math.ceil(timeoutMs / 100), 100);
  expect(ok, `${sample} reached ${value} within ${timeoutMs} ms (it is ${await proc.metric(sample)})`).to.equal(true);
}
