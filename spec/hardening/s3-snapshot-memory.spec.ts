import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TestSite } from '../helpers/changes.js';
import { cleanupCoordinatorProcesses, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { archiveCaughtUp, metricReaches } from '../helpers/s3-acceptance.js';
import { startS3CoordinatorProcess, s3Options } from '../helpers/s3-coordinator-process.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { S3Archive } from '../../lib/durability/s3-archive.js';
import { databaseKey, parseSnapshotKey } from '../../lib/durability/layout.js';
import { decodeSnapshot } from '../../lib/durability/snapshot-format.js';
import { NS_COLUMN } from '../../lib/replica/keys.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';

const DB = 'big:million';
const ENTRIES = 1_000_000;
/** 20 POSTs of 5 transactions of 10,000 cells: 1,000,000 column versions. */
const PER_SET = 10_000;
const SETS_PER_POST = 5;
const MB = 1024 * 1024;
const NEVER = 2 ** 31 - 1;

describe('hardening: a 1,000,000-entry database snapshots to S3 in bounded memory (coordinator process)', function () {
  this.timeout(240_000);
  let s3: S3TestServer;
  let dataDir: string;
  let archive: S3Archive | undefined;

  before(async () => {
    s3 = await startS3Server('s3-snapshot-memory');
    dataDir = await makeTempDir('s3-snapshot-memory-');
  });
  after(async () => {
    await cleanupCoordinatorProcesses();
    await archive?.close();
    await s3?.close();
    await removeTempDir(dataDir);
  });

  it('streams the snapshot: anonymous RSS growth under 100 MB, file-backed growth no more than its table files', async () => {
    const prefix = 'memory/';
    // Filling: no snapshot (neither by count nor by time), only batches.
    const filler = await startS3CoordinatorProcess({ dataDir, router: { s3: s3Options(s3, prefix), snapshotChanges: 10 * ENTRIES, snapshotIntervalMs: NEVER } });
    const site = new TestSite();
    const fillStarted = Date.now();
    for (let post = 0; post < ENTRIES / (PER_SET * SETS_PER_POST); post++) {
      const sets = [];
      for (let s = 0; s < SETS_PER_POST; s++) {
        const base = (post * SETS_PER_POST + s) * PER_SET;
        sets.push(site.txn(Array.from({ length: PER_SET }, (_, i) => ({ pk: [base + i], value: `value ${base + i}` }))));
      }
      const res = await filler.post(`/${DB}/changes`, JSON.stringify({ changes: sets }), { 'x-site-id': site.wire });
      expect(res.status, res.body.slice(0, 300)).to.equal(200);
      expect((JSON.parse(res.body) as { data: { applied: number } }).data.applied).to.equal(PER_SET * SETS_PER_POST);
    }
    const fillMs = Date.now() - fillStarted;
    await archiveCaughtUp(filler, 120_000);
    expect(await filler.stop()).to.deep.equal({ code: 0, signal: null });

    // The same data dir, now snapshotting a database within a second of a change (by time: a
    // change count would have to reach half the database's size).
    const proc = await startS3CoordinatorProcess({ dataDir, router: { s3: s3Options(s3, prefix), snapshotChanges: 1, snapshotIntervalMs: 1000 } });
    // Warm up: the AWS SDK loads, and a small database takes a snapshot; the server is then in its steady state.
    await write(proc, 'big:warm-up', site);
    await metricReaches(proc, 'sync_archive_snapshots_total', 1);
    // The big database opens (handshake) before the baseline, so only the snapshot is measured.
    const { socket, reply } = await RawSocket.handshake(proc.wsUrl, DB, site.wire);
    expect(reply.type).to.equal('handshake_ack');
    const baseline = memory(proc.pid);
    const peak = { ...baseline };
    const sampler = setInterval(() => {
      if (!proc.alive()) return;
      const now = memory(proc.pid);
      for (const kind of ['rss', 'anon', 'file'] as const) peak[kind] = Math.max(peak[kind], now[kind]);
    }, 10);
    const snapshotStarted = Date.now();
    let snapshotMs: number;
    try {
      const res = await socket.request({ type: 'apply_changes', changes: [site.txn([{ pk: ['trigger'], value: 'x' }])] }, ['apply_result', 'error']);
      expect(res.type).to.equal('apply_result');
      await metricReaches(proc, 'sync_archive_snapshots_total', 2, 180_000);
      snapshotMs = Date.now() - snapshotStarted;
    } finally {
      clearInterval(sampler);
      await socket.close();
    }
    expect(await proc.metric('sync_archive_snapshot_errors_total')).to.equal(0);

    // The snapshot in S3 holds every entry.
    archive = new S3Archive(s3.archiveOptions({ keyPrefix: prefix }));
    const keys: string[] = [];
    let size = 0;
    for await (const object of archive.list(`${databaseKey(DB)}snapshots/`)) {
      if (!parseSnapshotKey(DB, object.key)) continue;
      keys.push(object.key);
      size = object.size;
    }
    expect(keys).to.have.length(1);
    let columns = 0;
    for await (const [key] of decodeSnapshot((await archive.get(keys[0]!))!, () => undefined)) if (key[0] === NS_COLUMN) columns++;
    expect(columns).to.equal(ENTRIES + 1);

    // VmRSS = RssAnon (heap, buffers: what the server allocates) + RssFile (mapped files). LevelDB
    // memory-maps its table files for reading, so a full scan makes every table resident as file-backed
    // pages: clean page cache that the kernel reclaims, bounded by the store's size on disk.
    const tableBytes = await sizeOf(databaseDirectory(dataDir, DB), /\.(ldb|sst)$/);
    const growth = { rss: peak.rss - baseline.rss, anon: peak.anon - baseline.anon, file: peak.file - baseline.file };
    const mb = (n: number): string => (n / MB).toFixed(1);
    if (process.env.S3_FIGURES) process.stderr.write(`      1M entries: filled in ${fillMs} ms; snapshot of ${mb(size)} MB gzipped in ${snapshotMs} ms; `
      + `RSS ${mb(baseline.rss)} MB before, growth ${mb(growth.rss)} MB: anonymous ${mb(growth.anon)} MB, file-backed ${mb(growth.file)} MB (table files ${mb(tableBytes)} MB)\n`);
    expect(growth.anon, `anonymous memory growth during the snapshot (${mb(growth.anon)} MB)`).to.be.below(100 * MB);
    expect(growth.file, `file-backed growth (${mb(growth.file)} MB) is at most the mapped table files (${mb(tableBytes)} MB)`).to.be.at.most(tableBytes + 8 * MB);
  });
});

/** One acknowledged write over WebSocket. */
async function write(proc: CoordinatorProcess, db: string, site: TestSite): Promise<void> {
  const { socket, reply } = await RawSocket.handshake(proc.wsUrl, db, site.wire);
  try {
    expect(reply.type).to.equal('handshake_ack');
    const res = await socket.request({ type: 'apply_changes', changes: [site.txn([{ pk: [1], value: 'warm' }])] }, ['apply_result', 'error']);
    expect(res.type, JSON.stringify(res)).to.equal('apply_result');
  } finally {
    await socket.close();
  }
}

/** The process's resident memory in bytes, from /proc/<pid>/status: all of it, anonymous, and file-backed. */
function memory(pid: number): { rss: number; anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const bytes = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)![1]) * 1024;
  return { rss: bytes('VmRSS'), anon: bytes('RssAnon'), file: bytes('RssFile') };
}

/** Total size of the files in `dir` whose names match `pattern`. */
async function sizeOf(dir: string, pattern: RegExp): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) if (pattern.test(name)) total += (await stat(join(dir, name))).size;
  return total;
}
