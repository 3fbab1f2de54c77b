import { expect } from 'chai';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Random } from '../helpers/random.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { cleanupCoordinatorProcesses, eventually, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { startS3CoordinatorProcess, s3Options, type S3ProcessRouterOptions } from '../helpers/s3-coordinator-process.js';
import {
  Tally, archiveCaughtUp, archiveStatus, changesAfter, httpWriter, idsIn, metricReaches, snapshotState, wsWriter,
} from '../helpers/s3-acceptance.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { S3Archive } from '../../lib/durability/s3-archive.js';
import { databaseKey, parseSnapshotKey } from '../../lib/durability/layout.js';
import { restoreDatabase } from '../../lib/durability/restore.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import { compareHlc, hlcFromWire } from '../../lib/protocol/hlc.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';

/** Ids that differ only in ".", ":" and "_" must never share archive objects. */
const DBS = ['acme:notes-1', 'acme.notes-1', 'acme_notes-1', 'team:x'];
/** S3_ACCEPTANCE_DEBUG=sync-coordinator:s3,... passes DEBUG to the coordinator processes (their stderr shows in failures); S3_FIGURES=1 prints the outage figures. */
const DEBUG = process.env.S3_ACCEPTANCE_DEBUG;
const UNLIMITED = { messagesPerSecond: 0, messagesPerSecondPerIp: 0 };

/** `until` for a writer that sends exactly `n` writes. */
function writes(n: number): () => boolean {
  let sent = 0;
  return () => sent++ >= n;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('acceptance: S3 durability (coordinator processes against a real S3-compatible server)', function () {
  this.timeout(120_000);
  let s3: S3TestServer;
  let prefixes = 0;
  const dirs: string[] = [];
  const archives: S3Archive[] = [];

  before(async () => {
    s3 = await startS3Server('s3-acceptance');
  });
  const procs: CoordinatorProcess[] = [];
  afterEach(async function () {
    // A failure shows what the coordinators wrote to stderr (with S3_ACCEPTANCE_DEBUG, their debug log).
    if (this.currentTest?.state === 'failed') {
      for (const p of procs) if (p.stderr()) process.stderr.write(`--- coordinator ${p.pid} stderr ---\n${p.stderr().slice(-6000)}\n`);
      const crash = s3.crash();
      const state = crash ?? (s3.running() ? `running, ${(await s3.probe()) ?? 'answering'} at ${s3.endpoint}` : 'stopped by the test');
      process.stderr.write(`--- s3rver: ${state} ---\n`);
    }
    procs.length = 0;
    await cleanupCoordinatorProcesses();
    await Promise.all(archives.splice(0).map((a) => a.close()));
    await Promise.all(dirs.splice(0).map((d) => removeTempDir(d)));
    if (!s3.running()) await s3.restart();
  });
  after(async () => {
    await s3?.close();
  });

  /** A fresh data dir and a fresh key prefix: each test has its own archive in the one bucket. */
  async function fixture(): Promise<{ dataDir: string; prefix: string }> {
    const dataDir = await makeTempDir('s3-acceptance-');
    dirs.push(dataDir);
    return { dataDir, prefix: `t${++prefixes}-${Date.now()}/` };
  }

  async function start(dataDir: string, prefix: string, router: Omit<S3ProcessRouterOptions, 's3'> = {}): Promise<CoordinatorProcess> {
    const proc = await startS3CoordinatorProcess({ dataDir, router: { s3: s3Options(s3, prefix), ...UNLIMITED, ...router }, env: DEBUG ? { DEBUG } : {} });
    procs.push(proc);
    return proc;
  }

  /** The archive as a second party sees it through the S3 API. */
  function archiveOf(prefix: string): S3Archive {
    const archive = new S3Archive(s3.archiveOptions({ keyPrefix: prefix }));
    archives.push(archive);
    return archive;
  }

  /** Stops the process gracefully, deletes its data dir whole (the disk is lost) and starts a new one on the same path. */
  async function wipeAndRestart(proc: CoordinatorProcess, prefix: string, router: Omit<S3ProcessRouterOptions, 's3'> = {}): Promise<CoordinatorProcess> {
    expect(await proc.stop()).to.deep.equal({ code: 0, signal: null });
    await rm(proc.dataDir, { recursive: true, force: true });
    return start(proc.dataDir, prefix, router);
  }

  it('restores every database identical after the data dir is wiped, and old cursors get exactly the changes after them', async () => {
    const { dataDir, prefix } = await fixture();
    // Small snapshot threshold: each database restores from a snapshot plus the batches after it.
    const first = await start(dataDir, prefix, { snapshotChanges: 150 });
    const tally = new Tally();
    const cursors = new Map<string, string>();
    for (const [i, db] of DBS.entries()) {
      await wsWriter(first, db, `${db}/ws`, tally, { until: writes(120 + 20 * i) });
      await httpWriter(first, db, `${db}/http`, tally, { until: writes(30) });
      // A client syncs here: its cursor is the last stamp it received.
      cursors.set(db, (await changesAfter(first, db, undefined)).at(-1)!.hlc);
      await wsWriter(first, db, `${db}/ws2`, tally, { window: 8, until: writes(60) });
    }
    expect(tally.refused.size).to.equal(0);
    await metricReaches(first, 'sync_archive_snapshots_total', DBS.length);
    await archiveCaughtUp(first);
    const status = await archiveStatus(first);
    expect(status).to.include({ mode: 'async', pendingTransactions: 0, outboxBytes: 0, lagSeconds: 0, restores: 0 });
    expect(status.openDatabases).to.equal(DBS.length);
    expect(status.lastUploadAt).to.be.a('number');
    expect(status.lastSnapshotAt).to.be.a('number');
    expect(status).to.not.have.property('lastError');

    const before = new Map<string, { state: unknown[]; after: ChangeSet[]; last: string }>();
    for (const db of DBS) {
      const state = await snapshotState(first, db);
      const after = await changesAfter(first, db, cursors.get(db));
      expect(after.length, `${db}: changes after the cursor`).to.be.greaterThan(0);
      before.set(db, { state, after, last: (await changesAfter(first, db, undefined)).at(-1)!.hlc });
      // Exactly this database's writes: ids that differ only in ".", ":" or "_" share nothing.
      expect([...idsIn(state)].sort()).to.deep.equal([...tally.acked].filter((id) => id.startsWith(`${db}/`)).sort());
    }

    const second = await wipeAndRestart(first, prefix);
    for (const db of DBS) {
      const { state, after, last } = before.get(db)!;
      expect(await snapshotState(second, db), `${db} restored identical`).to.deep.equal(state);
      expect(await changesAfter(second, db, cursors.get(db)), `${db}: an old cursor gets exactly the changes after it`).to.deep.equal(after);
      // The restored replica stamps new writes above everything it handed out before.
      await wsWriter(second, db, `${db}/after`, tally, { until: writes(1) });
      const newest = (await changesAfter(second, db, last)).at(-1)!;
      expect(compareHlc(hlcFromWire(newest.hlc), hlcFromWire(last))).to.equal(1);
    }
    expect(await second.metric('sync_archive_restores_total{result="restored"}')).to.equal(DBS.length);
    expect(await archiveStatus(second)).to.include({ restores: DBS.length });
  });

  it('evicts an idle, archived database and restores it identical on the next read; never evicts one whose archive lags', async () => {
    const { dataDir, prefix } = await fixture();
    const proc = await start(dataDir, prefix, { storeIdleMs: 200, diskEvictionIdleMs: 300 });
    const [idle, lagging] = ['evict:idle', 'evict:lagging'];
    const tally = new Tally();
    await wsWriter(proc, idle, 'idle', tally, { until: writes(80) });
    const idleState = await snapshotState(proc, idle);
    expect(await eventually(async () => !(await exists(databaseDirectory(dataDir, idle))), 100, 100), 'idle database evicted from disk').to.equal(true);
    expect(await proc.metric('sync_disk_evictions_total')).to.equal(1);
    expect(await snapshotState(proc, idle), 'restored identical on the next read').to.deep.equal(idleState);
    expect(await proc.metric('sync_archive_restores_total{result="restored"}')).to.equal(1);
    // A client stays connected until the outage writes are in: without it the database could go idle,
    // be evicted and need S3 to reopen between the two writers (on a slow machine 500 ms pass easily).
    const holder = await RawSocket.handshake(proc.wsUrl, lagging, new TestSite().wire);
    expect(holder.reply.type).to.equal('handshake_ack');
    await wsWriter(proc, lagging, 'lag1', tally, { until: writes(20) });
    await archiveCaughtUp(proc);
    await s3.stop();
    await wsWriter(proc, lagging, 'lag2', tally, { until: writes(20) });
    expect(tally.refused.size, 'async mode acknowledges through the outage').to.equal(0);
    const laggingState = await snapshotState(proc, lagging);
    await holder.socket.close();
    // Closing (it starts once the database is idle) waits up to 5 s (CLOSE_FLUSH_MS) for the archive;
    // then the database is closed with its archive behind, and its shipper has stopped.
    expect(await eventually(async () => (await archiveStatus(proc)).openDatabases === 0, 100, 100), 'both databases closing').to.equal(true);
    await sleep(5500);
    expect(await exists(databaseDirectory(dataDir, lagging)), 'a database whose archive lags stays on disk').to.equal(true);
    // An eviction round finds it (it tries to finish archiving it, and fails: more upload errors)...
    const errors = await proc.metric('sync_archive_upload_errors_total');
    await metricReaches(proc, 'sync_archive_upload_errors_total', errors + 1);
    // ...and keeps it through that attempt (it gives up after 5 s) and the next rounds.
    for (let i = 0; i < 14; i++) {
      expect(await exists(databaseDirectory(dataDir, lagging)), 'a database whose archive lags stays on disk').to.equal(true);
      await sleep(500);
    }
    await s3.restart();
    // Once S3 is back, the closed database is archived, then evicted; a read restores every acknowledged write.
    expect(await eventually(async () => !(await exists(databaseDirectory(dataDir, lagging))), 300, 100), 'evicted once archived').to.equal(true);
    const restored = await snapshotState(proc, lagging);
    expect(restored).to.deep.equal(laggingState);
    expect([...tally.acked].filter((id) => id.startsWith('lag')).every((id) => idsIn(restored).has(id))).to.equal(true);
  });

  it('skips a corrupt newest snapshot (counted in /metrics) and still restores identical', async () => {
    const { dataDir, prefix } = await fixture();
    const db = 'corrupt:db';
    const first = await start(dataDir, prefix, { snapshotChanges: 100 });
    const tally = new Tally();
    for (let round = 1; round <= 2; round++) {
      await wsWriter(first, db, `r${round}`, tally, { window: 1, until: writes(100) });
      await metricReaches(first, 'sync_archive_snapshots_total', round);
    }
    await wsWriter(first, db, 'tail', tally, { window: 1, until: writes(10) });
    await archiveCaughtUp(first);
    const final = await snapshotState(first, db);
    expect(await first.stop()).to.deep.equal({ code: 0, signal: null });

    const archive = archiveOf(prefix);
    const snapshots: { key: string; stamp: Buffer }[] = [];
    for await (const object of archive.list(`${databaseKey(db)}snapshots/`)) snapshots.push({ key: object.key, stamp: parseSnapshotKey(db, object.key)!.stamp });
    expect(snapshots.length, 'snapshots in S3').to.be.at.least(2);
    const newest = snapshots.sort((a, b) => compareHlc(b.stamp, a.stamp))[0]!.key;
    const bytes = await readAll((await archive.get(newest))!);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x5a;
    await archive.put(newest, bytes);

    await rm(dataDir, { recursive: true, force: true });
    const second = await start(dataDir, prefix);
    expect(await snapshotState(second, db)).to.deep.equal(final);
    expect(await second.metric('sync_archive_snapshots_skipped_total')).to.equal(1);
    expect(await second.metric('sync_archive_restores_total{result="restored"}')).to.equal(1);
  });

  it('survives S3 down for 60 s under continuous writes: async loses nothing acknowledged; ack answers STORAGE_UNAVAILABLE and stores nothing it refused', async function () {
    this.timeout(240_000);
    const OUTAGE_MS = 60_000;
    const asyncFx = await fixture();
    const ackFx = await fixture();
    const [asyncDb, ackDb] = ['outage:async', 'outage:ack'];
    const router = { snapshotChanges: 2000 };
    let asyncProc = await start(asyncFx.dataDir, asyncFx.prefix, router);
    const ackProc = await start(ackFx.dataDir, ackFx.prefix, { ...router, s3Durability: 'ack' });
    const asyncTally = new Tally();
    const ackTally = new Tally();
    let stop = false;
    const until = (): boolean => stop;
    const writers = (phase: string, proc: CoordinatorProcess): Promise<void>[] => [
      wsWriter(proc, asyncDb, `${phase}-ws`, asyncTally, { window: 2, paceMs: 5, until }),
      httpWriter(proc, asyncDb, `${phase}-http`, asyncTally, { paceMs: 10, until }),
    ];
    const ackWriters = [
      wsWriter(ackProc, ackDb, 'ack-ws', ackTally, { window: 2, paceMs: 5, until }),
      httpWriter(ackProc, ackDb, 'ack-http', ackTally, { paceMs: 10, until }),
    ];
    let asyncWriters = writers('a', asyncProc);
    await sleep(3000);
    expect(ackTally.refused.size, 'ack mode takes writes while S3 is up').to.equal(0);
    const ackedBeforeOutage = ackTally.acked.size;

    await s3.stop();
    const outageStart = Date.now();
    // Every write acknowledged from here until the kill is certainly not archived when the kill comes.
    const ackedAtOutage = asyncTally.acked.size;
    await sleep(5000);
    const ackedEarly = ackTally.acked.size;
    const during = {
      pending: await asyncProc.metric('sync_archive_pending_transactions'),
      outbox: await asyncProc.metric('sync_archive_outbox_bytes'),
      uploadErrors: await asyncProc.metric('sync_archive_upload_errors_total'),
      status: await archiveStatus(asyncProc),
      ackStatus: await archiveStatus(ackProc),
    };
    expect(during.pending, 'async: writes wait in the outbox').to.be.greaterThan(0);
    expect(during.outbox, 'sync_archive_outbox_bytes counts them').to.be.greaterThan(0);
    expect(during.uploadErrors).to.be.greaterThan(0);
    expect(during.status.lastError, '/status names the failure').to.be.a('string');
    expect(during.status.pendingTransactions, '/status shows the backlog').to.be.greaterThan(0);
    expect(during.status.outboxBytes).to.be.greaterThan(0);
    expect(during.ackStatus.lastError).to.be.a('string');

    // Halfway through the outage the async coordinator is killed: its outbox is on disk.
    await sleep(OUTAGE_MS / 2 - 5000);
    const ackedAtKill = new Set(asyncTally.acked);
    expect(await asyncProc.kill()).to.deep.equal({ code: null, signal: 'SIGKILL' });
    await Promise.all(asyncWriters);
    asyncProc = await start(asyncFx.dataDir, asyncFx.prefix, router);
    asyncWriters = writers('b', asyncProc);
    await sleep(2000);
    const afterRestart = {
      pending: await asyncProc.metric('sync_archive_pending_transactions'),
      lag: await asyncProc.metric('sync_archive_lag_seconds'),
      /** The oldest unarchived write is at most this old (it came after the outage began). */
      down: (Date.now() - outageStart) / 1000,
    };
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - outageStart)));
    const lagAtEnd = await asyncProc.metric('sync_archive_lag_seconds');
    const outboxAtEnd = await asyncProc.metric('sync_archive_outbox_bytes');
    const pendingAtEnd = await asyncProc.metric('sync_archive_pending_transactions');
    const ackedDuringOutage = ackTally.acked.size - ackedEarly;
    await s3.restart();
    const back = Date.now();
    await sleep(3000);
    stop = true;
    await Promise.all([...asyncWriters, ...ackWriters]);
    await archiveCaughtUp(asyncProc, 90_000);
    const catchUpMs = Date.now() - back;
    expect(await asyncProc.metric('sync_archive_outbox_bytes'), 'the outbox drained').to.equal(0);
    if (process.env.S3_FIGURES) process.stderr.write(`      outage: async acked ${asyncTally.acked.size} (${ackedAtKill.size} before the kill), pending ${during.pending} after 5 s, ${pendingAtEnd} at the end `
      + `(outbox ${outboxAtEnd} B, lag ${lagAtEnd} s); after the restart pending ${afterRestart.pending} (${ackedAtKill.size - ackedAtOutage} left by the kill), lag ${afterRestart.lag} s (down ${afterRestart.down.toFixed(1)} s); `
      + `caught up ${catchUpMs} ms after S3 returned; ack acked ${ackTally.acked.size} (${ackedBeforeOutage} before), refused ${JSON.stringify(ackTally.codes())}, acked during the outage ${ackedDuringOutage}\n`);

    // Async: every acknowledged write, before, during and after the outage and across the kill, is archived.
    expect(asyncTally.refused.size, `async refusals ${JSON.stringify(asyncTally.codes())}`).to.equal(0);
    const asyncFinal = await snapshotState(asyncProc, asyncDb);
    const asyncRestored = await wipeAndRestart(asyncProc, asyncFx.prefix);
    expect(await snapshotState(asyncRestored, asyncDb), 'async: wipe + restore identical').to.deep.equal(asyncFinal);
    const asyncIds = idsIn(asyncFinal);
    const lost = [...asyncTally.acked].filter((id) => !asyncIds.has(id));
    expect(lost, 'acknowledged writes missing after restore').to.deep.equal([]);

    // Ack: refused with STORAGE_UNAVAILABLE (503 over HTTP) while S3 was down, nothing refused stored, everything acknowledged archived.
    expect(ackedDuringOutage, 'ack mode acknowledges nothing while S3 is down').to.equal(0);
    expect(Object.keys(ackTally.codes()).sort()).to.deep.equal(['STORAGE_UNAVAILABLE', 'STORAGE_UNAVAILABLE@503']);
    const ackFinal = await snapshotState(ackProc, ackDb);
    const ackIds = idsIn(ackFinal);
    expect([...ackTally.acked].filter((id) => !ackIds.has(id)), 'acknowledged writes missing').to.deep.equal([]);
    expect([...ackTally.refused.keys()].filter((id) => ackIds.has(id)), 'refused writes stored').to.deep.equal([]);
    const ackRestored = await wipeAndRestart(ackProc, ackFx.prefix);
    expect(await snapshotState(ackRestored, ackDb), 'ack: wipe + restore identical').to.deep.equal(ackFinal);

    // What an operator sees after the coordinator restarted mid-outage: the backlog it inherited, not just what came since.
    const unarchivedAtKill = ackedAtKill.size - ackedAtOutage;
    expect(outboxAtEnd, 'sync_archive_outbox_bytes at the end of the outage').to.be.greaterThan(0);
    expect(afterRestart.pending, `sync_archive_pending_transactions after the restart counts the ${unarchivedAtKill} transactions left unarchived by the kill`).to.be.at.least(unarchivedAtKill);
    expect(afterRestart.lag, `sync_archive_lag_seconds after the restart is the age of the oldest unarchived write (S3 down ${afterRestart.down.toFixed(1)} s)`).to.be.at.least(afterRestart.down - 1.5);
  });

  it('keeps every acknowledged change across 5 SIGKILLs during uploads, through a later wipe and restore', async function () {
    this.timeout(180_000);
    const { dataDir, prefix } = await fixture();
    const dbs = ['kill:one', 'kill:two'];
    const router = { snapshotChanges: 300 };
    const rng = new Random(0x5ec7);
    const tally = new Tally();
    for (let round = 0; round < 5; round++) {
      const proc = await start(dataDir, prefix, router);
      const uploadsAtStart = await proc.metric('sync_archive_uploads_total');
      let killed = false;
      const until = (): boolean => killed;
      const writers = [
        wsWriter(proc, dbs[0]!, `${round}/ws0`, tally, { window: 8, until }),
        wsWriter(proc, dbs[0]!, `${round}/ws1`, tally, { window: 8, until }),
        httpWriter(proc, dbs[0]!, `${round}/http`, tally, { until }),
        wsWriter(proc, dbs[1]!, `${round}/ws2`, tally, { window: 4, until }),
      ];
      // Uploads (batches, and snapshots every 300 changes) under way, then a random moment.
      await metricReaches(proc, 'sync_archive_uploads_total', uploadsAtStart + 3);
      await sleep(rng.int(400));
      killed = true;
      expect(await proc.kill()).to.deep.equal({ code: null, signal: 'SIGKILL' });
      await Promise.all(writers);
    }
    expect(tally.refused.size).to.equal(0);
    expect(tally.acked.size).to.be.greaterThan(200);

    // Restart; the clients come back (a read opens each database) and the archive catches up.
    const proc = await start(dataDir, prefix, router);
    const states = new Map<string, unknown[]>();
    for (const db of dbs) states.set(db, await snapshotState(proc, db));
    await archiveCaughtUp(proc);
    const local = new Set(dbs.flatMap((db) => [...idsIn(states.get(db)!)]));
    expect([...tally.acked].filter((id) => !local.has(id)), 'acknowledged and lost before the wipe').to.deep.equal([]);

    const restored = await wipeAndRestart(proc, prefix);
    for (const db of dbs) expect(await snapshotState(restored, db), `${db} identical after wipe + restore`).to.deep.equal(states.get(db));
    expect(await restored.metric('sync_archive_restores_total{result="restored"}')).to.equal(dbs.length);
  });

  it('archives, after a crash, the unarchived writes of a database that no client opens again', async function () {
    this.timeout(90_000);
    const { dataDir, prefix } = await fixture();
    const db = 'crash:quiet';
    let proc = await start(dataDir, prefix);
    const tally = new Tally();
    await wsWriter(proc, db, 'early', tally, { until: writes(20) });
    await archiveCaughtUp(proc);
    // Written while S3 is down (acknowledged in async mode), then the coordinator dies.
    await s3.stop();
    await wsWriter(proc, db, 'late', tally, { until: writes(20) });
    expect(tally.refused.size).to.equal(0);
    expect(await proc.kill()).to.deep.equal({ code: null, signal: 'SIGKILL' });
    proc = await start(dataDir, prefix);
    await s3.restart();

    // Nobody opens the database again; its disk may be lost at any time, so its last writes must reach S3 on their own.
    const archive = archiveOf(prefix);
    let missing: string[] = [];
    const archived = await eventually(async () => {
      const archivedIds = await idsInArchive(archive, db);
      missing = [...tally.acked].filter((id) => !archivedIds.has(id));
      return missing.length === 0;
    }, 10, 2000);
    expect(archived, `acknowledged writes in the archive ~20 s after the restart (missing ${missing.length} of ${tally.acked.size}: ${missing.slice(0, 3).join(', ')}...)`).to.equal(true);
    expect(proc.alive()).to.equal(true);
  });

  it('ack mode: a write whose upload answer was lost (S3 stored it, the coordinator never heard) is refused and never comes back in a restore', async () => {
    const { dataDir, prefix } = await fixture();
    const db = 'ack:lost-answer';
    const proxy = await answerDroppingProxy(Number(new URL(s3.endpoint).port));
    try {
      const proc = await startS3CoordinatorProcess({
        dataDir, router: { s3: { ...s3Options(s3, prefix), endpoint: proxy.endpoint }, ...UNLIMITED, s3Durability: 'ack' }, env: DEBUG ? { DEBUG } : {},
      });
      procs.push(proc);
      const tally = new Tally();
      await wsWriter(proc, db, 'before', tally, { window: 1, until: writes(5) });
      proxy.dropAnswers(true);
      await wsWriter(proc, db, 'lost', tally, { window: 1, until: writes(1) });
      expect(tally.codes()).to.deep.equal({ STORAGE_UNAVAILABLE: 1 });
      proxy.dropAnswers(false);
      await wsWriter(proc, db, 'after', tally, { window: 1, until: writes(5) });
      expect(tally.acked.size).to.equal(10);
      const final = await snapshotState(proc, db);
      expect(idsIn(final).has('lost/0'), 'the refused write is not stored').to.equal(false);

      const restored = await wipeAndRestart(proc, prefix);
      const after = await snapshotState(restored, db);
      expect(idsIn(after).has('lost/0'), 'the refused write is not in the restored database').to.equal(false);
      expect(after, 'restored identical to what was acknowledged').to.deep.equal(final);
    } finally {
      await proxy.close();
    }
  });
});

/** The `notes.a` ids that a restore from `archive` holds right now (restored into a temp dir that is removed after). */
async function idsInArchive(archive: S3Archive, db: string): Promise<Set<string>> {
  const dir = await mkdtemp(join(tmpdir(), 's3-acceptance-restore-'));
  try {
    const result = await restoreDatabase(archive, db, join(dir, 'db'));
    const ids = new Set<string>();
    if (!result.restored) return ids;
    const replica = await Replica.open(await openLevelStore(join(dir, 'db')));
    try {
      for (const set of await allChanges(replica)) for (const c of set.changes) if (c.type === 'column' && c.column === 'a') ids.add(String(c.value));
    } finally {
      await replica.close();
    }
    return ids;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy to the S3 server on 127.0.0.1:`port`. While `dropAnswers(true)`,
 * requests still reach the server (which acts on them) but the connection is
 * cut the moment its answer starts: the client never learns the outcome, as
 * when a network drops a response.
 */
async function answerDroppingProxy(port: number): Promise<{ endpoint: string; dropAnswers(on: boolean): void; close(): Promise<void> }> {
  let dropping = false;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      if (dropping) client.destroy();
      else client.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    dropAnswers(on) { dropping = on; },
    close: () => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    }),
  };
}

/** Every change set in a replica's log, from the start. */
async function allChanges(replica: Replica): Promise<ChangeSet[]> {
  const out: ChangeSet[] = [];
  let after: Buffer | undefined;
  for (;;) {
    const page = await replica.changesSince(after, undefined, 10_000, 64 * 1024 * 1024);
    if (page.transactionCount === 0 || !page.lastStamp) return out;
    out.push(...(JSON.parse(page.json) as ChangeSet[]));
    after = page.lastStamp;
  }
}

