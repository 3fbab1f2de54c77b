import { expect } from 'chai';
import { rename, rm, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { format } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { eventually } from '../helpers/coordinator-process.js';
import { openFsArchive, type FsArchive } from '../../lib/durability/fs-archive.js';
import { databaseKey, parseBatchKey, parseSnapshotKey } from '../../lib/durability/layout.js';
import { restoreDatabase } from '../../lib/durability/restore.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import { pathExists } from '../../lib/storage/leveldb.js';
import type { Durability } from '../../lib/durability/durability.js';
import { compareHlc, hlcFromWire } from '../../lib/protocol/hlc.js';
import type { SyncRouterOptions } from '../../lib/config/options.js';
import type { ChangeSet, SnapshotChunk } from '../../lib/protocol/messages.js';
import { ReferenceClient } from '../helpers/reference-client.js';
import { SNAPSHOT_MAGIC } from '../../lib/durability/snapshot-format.js';
import { logs } from '../../lib/log.js';

const DB = 'acme:durable';

/** The database's state as a snapshot shows it, minus what a restore legitimately changes. */
async function state(server: TestServer, db = DB): Promise<unknown[]> {
  const res = await fetch(`${server.baseUrl}/${db}/snapshot`, { headers: { 'x-site-id': new TestSite().wire } });
  expect(res.status).to.equal(200);
  return (await res.text()).trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk).map((chunk) => {
    if (chunk.type === 'header' || chunk.type === 'footer') return { ...chunk, snapshotId: '' };
    if (chunk.type === 'tombstone') return { ...chunk, entries: chunk.entries.map((e) => ({ ...e, createdAt: 0 })) };
    return chunk;
  });
}

async function changesAfter(server: TestServer, cursor: string | undefined, db = DB): Promise<ChangeSet[]> {
  const out: ChangeSet[] = [];
  for (let at = cursor; ;) {
    const url = `${server.baseUrl}/${db}/changes${at ? `?sinceHLC=${encodeURIComponent(at)}` : ''}`;
    const body = await (await fetch(url, { headers: { 'x-site-id': new TestSite().wire } })).json() as { data: { changes: ChangeSet[]; hasMore: boolean } };
    out.push(...body.data.changes);
    if (!body.data.hasMore) return out;
    at = body.data.changes.at(-1)!.hlc;
  }
}

/** Writes `n` transactions (some overwrites and deletes) over WebSocket; returns the acks. */
async function write(server: TestServer, site: TestSite, n: number, from = 0, db = DB): Promise<string[]> {
  const { socket, reply } = await RawSocket.handshake(server.wsUrl, db, site.wire);
  expect(reply.type).to.equal('handshake_ack');
  const acks: string[] = [];
  try {
    for (let i = from; i < from + n; i++) {
      const changes = i % 7 === 3 ? [{ pk: [i - 3], delete: true }] : [{ pk: [i % 50], value: `v${i}` }, { pk: [i], column: 'other', value: i }];
      const res = await socket.request({ type: 'apply_changes', requestId: String(i), changes: [site.txn(changes)] }, ['apply_result', 'error']) as { type: string; code?: string };
      acks.push(res.type === 'apply_result' ? 'ok' : String(res.code));
    }
  } finally {
    await socket.close();
  }
  return acks;
}

describe('durability (with a directory archive)', () => {
  let archiveDir: string;
  let dataDir: string;
  const servers: TestServer[] = [];
  const archives: FsArchive[] = [];

  beforeEach(async () => {
    archiveDir = await makeTempDir('archive-');
    dataDir = await makeTempDir('data-');
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
    await Promise.all(archives.splice(0).map((a) => a.close()));
    await removeTempDir(archiveDir);
    await removeTempDir(dataDir);
  });

  async function start(options: SyncRouterOptions = {}): Promise<TestServer> {
    const archive = await openFsArchive(archiveDir);
    archives.push(archive);
    const server = await startTestServer({ dataDir, archive, batchSize: 100, ...options });
    servers.push(server);
    return server;
  }

  function durabilityOf(server: TestServer): Durability {
    return (server.sync.coordinator as unknown as { replicas: Durability }).replicas;
  }

  async function stop(server: TestServer): Promise<void> {
    servers.splice(servers.indexOf(server), 1);
    await server.close();
  }

  it('restores a wiped database identical, keeping its site id, stamps and cursors', async () => {
    const first = await start();
    const site = new TestSite();
    expect(await write(first, site, 300)).to.deep.equal(Array(300).fill('ok'));
    const before = await state(first);
    const log = await changesAfter(first, undefined);
    const cursor = log[Math.floor(log.length / 2)]!.hlc;
    const after = await changesAfter(first, cursor);
    await durabilityOf(first).snapshotNow(DB);
    expect(await write(first, site, 50, 300)).to.deep.equal(Array(50).fill('ok'));
    const final = await state(first);
    const finalAfter = await changesAfter(first, cursor);
    expect(finalAfter.length).to.be.greaterThan(after.length - 50);
    await stop(first);

    await rm(dataDir, { recursive: true, force: true });
    const second = await start();
    expect(await state(second)).to.deep.equal(final);
    expect(before).to.not.deep.equal(final);
    // A cursor handed out before the wipe gets exactly what came after it.
    expect(await changesAfter(second, cursor)).to.deep.equal(finalAfter);
    expect((await second.sync.coordinator.status()).archive).to.include({ restores: 1 });
    // New stamps continue above the restored ones.
    await write(second, site, 1, 1000);
    const newest = (await changesAfter(second, log.at(-1)!.hlc)).at(-1)!;
    expect(compareHlc(hlcFromWire(newest.hlc), hlcFromWire(log.at(-1)!.hlc))).to.equal(1);
  });

  it('honours a snapshot checkpoint handed out before the wipe: the resumed stream keeps its id and hlc and skips the completed table', async () => {
    const first = await start();
    const site = new TestSite();
    const writer = await first.connect(DB, { siteId: site.wire });
    await writer.apply([site.txn([{ pk: [1], value: 'x' }, { table: 'tags', pk: [1], value: 't' }])]);
    const reader = await first.connect(DB);
    const header = (await reader.snapshot())[0] as Extract<SnapshotChunk, { type: 'header' }>;
    // The reader was cut off after the first table; more writes follow.
    await writer.apply([site.txn([{ pk: [2], value: 'y' }, { table: 'tags', pk: [2], value: 'u' }])]);
    await writer.close();
    await reader.close();
    expect(await durabilityOf(first).flush(DB)).to.equal(true);
    await stop(first);

    await rm(dataDir, { recursive: true, force: true });
    const second = await start();
    const resumer = await second.connect(DB);
    const resumed = await resumer.snapshot({
      snapshotId: header.snapshotId, siteId: resumer.options.siteId, hlc: header.hlc, lastTableIndex: 0, lastEntryIndex: 0,
      completedTables: ['main.notes'], entriesProcessed: 1, createdAt: Date.now(),
    });
    // A restore that lost the stamps would find the checkpoint ahead of its log and stream a fresh full snapshot instead.
    expect(resumed[0]).to.include({ type: 'header', siteId: header.siteId, snapshotId: header.snapshotId, hlc: header.hlc });
    expect(resumed.filter((c) => c.type === 'table-start').map((c) => (c as { table: string }).table)).to.deep.equal(['tags']);
    // And the cursor it leaves the client at gets the writes made after the checkpoint.
    const after = await changesAfter(second, header.hlc);
    expect(after.flatMap((set) => set.changes.map((c) => JSON.stringify([c.table, c.pk])))).to.have.members(['["notes",[2]]', '["tags",[2]]']);
    await resumer.close();
  });

  /**
   * Two snapshots of DB, `rows` rows before each and after the second, all
   * archived, the server stopped: the archive, the newest snapshot's key and
   * the state a restore must give back.
   */
  async function twoSnapshotsArchived(rows: number, after: number): Promise<{ archive: FsArchive; newest: string; final: unknown[] }> {
    const first = await start();
    const site = new TestSite();
    await write(first, site, rows);
    await durabilityOf(first).snapshotNow(DB);
    await write(first, site, rows, rows);
    const newest = (await durabilityOf(first).snapshotNow(DB))!;
    await write(first, site, after, 2 * rows);
    expect(await durabilityOf(first).flush(DB)).to.equal(true);
    const final = await state(first);
    await stop(first);
    const archive = await openFsArchive(archiveDir);
    archives.push(archive);
    return { archive, newest, final };
  }

  it('skips a corrupt newest snapshot and still restores identical', async () => {
    const { archive, newest, final } = await twoSnapshotsArchived(100, 20);
    // Flip bytes in the middle of the newest snapshot object.
    const bytes = await readAll(archive, newest);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await archive.put(newest, bytes);

    await rm(dataDir, { recursive: true, force: true });
    const second = await start();
    expect(await state(second)).to.deep.equal(final);
    const metrics = await (await fetch(`${second.baseUrl}/metrics`)).text();
    expect(metrics).to.match(/^sync_archive_snapshots_skipped_total 1$/m);
  });

  it('skips a newest snapshot of an unknown format with a log line and a metric, and still restores identical', async () => {
    const { archive, newest, final } = await twoSnapshotsArchived(60, 10);
    // A snapshot written by a later version: the same container, its header saying format 2.
    const plain = gunzipSync(await readAll(archive, newest));
    const headerLength = plain.readUInt32BE(SNAPSHOT_MAGIC.length);
    const headerAt = SNAPSHOT_MAGIC.length + 4;
    const header = JSON.parse(plain.subarray(headerAt, headerAt + headerLength).toString('utf8')) as { format: number };
    expect(header.format).to.equal(1);
    const future = Buffer.from(JSON.stringify({ ...header, format: 2 }), 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(future.length, 0);
    await archive.put(newest, gzipSync(Buffer.concat([SNAPSHOT_MAGIC, length, future, plain.subarray(headerAt + headerLength)])));

    await rm(dataDir, { recursive: true, force: true });
    const lines: string[] = [];
    const logger = logs.s3;
    const previousLog = logger.log;
    logger.enabled = true;
    logger.log = (...args: unknown[]) => { lines.push(format(...args)); };
    let restored: unknown[];
    let metrics: string;
    try {
      const second = await start();
      restored = await state(second);
      metrics = await (await fetch(`${second.baseUrl}/metrics`)).text();
    } finally {
      // null hands "enabled" back to DEBUG / createDebug.enable.
      logger.enabled = null as unknown as boolean;
      logger.log = previousLog;
    }
    expect(restored).to.deep.equal(final);
    expect(metrics).to.match(/^sync_archive_snapshots_skipped_total 1$/m);
    expect(metrics).to.match(/^sync_archive_restores_total\{result="restored"\} 1$/m);
    const skips = lines.filter((line) => line.includes('skips snapshot'));
    expect(skips).to.have.length(1);
    expect(skips[0]).to.include(`sync-coordinator:s3 restore of ${DB} skips snapshot ${newest}: unknown snapshot format 2`);
  });

  it('in ack mode, refuses writes while the archive is gone and stores nothing of them', async () => {
    const server = await start({ s3Durability: 'ack' });
    const site = new TestSite();
    expect(await write(server, site, 10)).to.deep.equal(Array(10).fill('ok'));
    const before = await state(server);
    // The archive's volume disappears (its marker goes with it).
    await rename(archiveDir, `${archiveDir}.gone`);
    try {
      expect(await write(server, site, 5, 10)).to.deep.equal(Array(5).fill('STORAGE_UNAVAILABLE'));
      expect(await state(server)).to.deep.equal(before);
      const http = await fetch(`${server.baseUrl}/${DB}/changes`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-site-id': site.wire }, body: JSON.stringify({ changes: [site.txn([{ pk: [1], value: 'x' }])] }),
      });
      expect(http.status).to.equal(503);
      expect(((await http.json()) as { error: { code: string } }).error.code).to.equal('STORAGE_UNAVAILABLE');
    } finally {
      await rename(`${archiveDir}.gone`, archiveDir);
    }
    expect(await write(server, site, 5, 20)).to.deep.equal(Array(5).fill('ok'));
  });

  it('in ack mode, pulls a real client\'s refused write back once the archive returns, without another commit of the client', async () => {
    const server = await start({ s3Durability: 'ack' });
    const device = new ReferenceClient({ url: server.wsUrl, databaseId: DB, reconnectDelayMs: 10 });
    try {
      device.start();
      await device.whenReady();
      device.write({ pk: ['before'], values: { s: 'before' } });
      await device.whenPushed();
      await rename(archiveDir, `${archiveDir}.gone`);
      try {
        device.write({ pk: ['during'], values: { s: 'during' } });
        expect(await eventually(() => device.errors.some((e) => e.code === 'STORAGE_UNAVAILABLE'), 200, 25), 'the device was told').to.equal(true);
      } finally {
        await rename(`${archiveDir}.gone`, archiveDir);
      }
      // A real client does not retry (docs/protocol.md §8); the coordinator asks for the change set again.
      const rows = async (): Promise<string[]> => (await changesAfter(server, undefined)).flatMap((set) => set.changes.map((c) => JSON.stringify(c.pk)));
      expect(await eventually(async () => (await rows()).includes('["during"]'), 200, 50), 'the refused write reached the server').to.equal(true);
      expect(device.ownChangeSets).to.have.length(2);
      expect(device.connections, 'on the same connection').to.equal(1);
    } finally {
      await device.stop();
    }
  });

  it('in async mode, acknowledges through an outage and archives everything once the archive is back', async () => {
    const first = await start();
    const site = new TestSite();
    await write(first, site, 20);
    expect(await durabilityOf(first).flush(DB)).to.equal(true);
    await rename(archiveDir, `${archiveDir}.gone`);
    expect(await write(first, site, 30, 20)).to.deep.equal(Array(30).fill('ok'));
    const pending = await (await fetch(`${first.baseUrl}/metrics`)).text();
    expect(Number(/^sync_archive_pending_transactions (\S+)$/m.exec(pending)![1])).to.be.greaterThan(0);
    await rename(`${archiveDir}.gone`, archiveDir);
    expect(await durabilityOf(first).flush(DB, 60_000)).to.equal(true);
    const final = await state(first);
    await stop(first);
    await rm(dataDir, { recursive: true, force: true });
    const second = await start();
    expect(await state(second)).to.deep.equal(final);
  });

  it('evicts an idle, fully archived database from disk; the next read restores it identical', async () => {
    const server = await start({ storeIdleMs: 100, diskEvictionIdleMs: 200 });
    await write(server, new TestSite(), 40);
    const final = await state(server);
    const dir = databaseDirectory(dataDir, DB);
    expect(await eventually(async () => !(await pathExists(dir)), 200, 50), 'evicted from disk').to.equal(true);
    expect(await state(server)).to.deep.equal(final);
    expect(await pathExists(dir)).to.equal(true);
    const metrics = await (await fetch(`${server.baseUrl}/metrics`)).text();
    expect(metrics).to.match(/^sync_disk_evictions_total 1$/m);
    expect(metrics).to.match(/^sync_archive_restores_total\{result="restored"\} 1$/m);
  });

  it('never evicts a database whose archive lags', async () => {
    const server = await start({ storeIdleMs: 100, diskEvictionIdleMs: 200 });
    // Connected until the second write: idle in between, the database could be evicted and need the archive to reopen.
    const holder = await RawSocket.handshake(server.wsUrl, DB, new TestSite().wire);
    expect(holder.reply.type).to.equal('handshake_ack');
    await write(server, new TestSite(), 5);
    expect(await durabilityOf(server).flush(DB)).to.equal(true);
    await rename(archiveDir, `${archiveDir}.gone`);
    try {
      expect(await write(server, new TestSite(), 5, 5)).to.deep.equal(Array(5).fill('ok'));
      await holder.socket.close();
      // Idle long past the eviction time, the archive still lagging.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(await pathExists(databaseDirectory(dataDir, DB)), 'still on disk').to.equal(true);
    } finally {
      await rename(`${archiveDir}.gone`, archiveDir);
    }
    // Once the archive is back, the closed database is archived and then evicted.
    expect(await eventually(async () => !(await pathExists(databaseDirectory(dataDir, DB))), 300, 50)).to.equal(true);
  });

  it('refuses to restore across a missing batch instead of losing changes silently', async () => {
    const first = await start();
    await write(first, new TestSite(), 30);
    expect(await durabilityOf(first).flush(DB)).to.equal(true);
    await stop(first);
    const archive = await openFsArchive(archiveDir);
    archives.push(archive);
    const batches: string[] = [];
    for await (const o of archive.list(`${databaseKey(DB)}batches/`)) batches.push(o.key);
    expect(batches.length).to.be.greaterThan(1);
    await archive.delete([batches[0]!]);
    const target = join(dataDir, 'restored');
    let error: unknown;
    await restoreDatabase(archive, DB, target).catch((err) => { error = err; });
    expect(String(error)).to.contain('gap');
    expect(await pathExists(target), 'nothing left behind').to.equal(false);
    expect((await readdir(dataDir)).filter((name) => name.includes('restoring'))).to.deep.equal([]);
  });

  it('snapshots a large database only once half its size has changed, not every snapshotChanges', async () => {
    const server = await start({ snapshotChanges: 100, snapshotIntervalMs: 3_600_000 });
    const snapshots = async (): Promise<number> => Number(/^sync_archive_snapshots_total (\S+)$/m.exec(await (await fetch(`${server.baseUrl}/metrics`)).text())![1]);
    const site = new TestSite();
    // 2,000 cells in one go: past snapshotChanges and half the (empty) database.
    const post = async (from: number, n: number): Promise<void> => {
      const res = await fetch(`${server.baseUrl}/${DB}/changes`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-site-id': site.wire },
        body: JSON.stringify({ changes: [site.txn(Array.from({ length: n }, (_, i) => ({ pk: [from + i], value: i })))] }),
      });
      expect(res.status).to.equal(200);
    };
    await post(0, 2000);
    expect(await eventually(async () => (await snapshots()) === 1, 200, 25)).to.equal(true);
    // 150 more: past snapshotChanges (100) but not half of 2,150 cells.
    await post(10_000, 150);
    await durabilityOf(server).flush(DB);
    expect(await snapshots()).to.equal(1);
    // 1,000 more: 1,150 changes, a third of 3,150 cells: still none.
    await post(20_000, 1000);
    await durabilityOf(server).flush(DB);
    expect(await snapshots()).to.equal(1);
    // 900 more makes 2,050 changes since the last snapshot: half the database (4,050 cells).
    await post(30_000, 900);
    expect(await eventually(async () => (await snapshots()) === 2, 200, 25)).to.equal(true);
  });

  it('snapshots a database that changed once snapshotIntervalMs has passed, however few its changes; an unchanged one not again', async () => {
    const server = await start({ snapshotChanges: 1_000_000, snapshotIntervalMs: 1000 });
    const snapshots = async (): Promise<number> => Number(/^sync_archive_snapshots_total (\S+)$/m.exec(await (await fetch(`${server.baseUrl}/metrics`)).text())![1]);
    const holder = await RawSocket.handshake(server.wsUrl, DB, new TestSite().wire);
    try {
      await write(server, new TestSite(), 3);
      expect(await eventually(async () => (await snapshots()) === 1, 300, 50), 'a snapshot by time').to.equal(true);
      const archive = await openFsArchive(archiveDir);
      archives.push(archive);
      const manifest = JSON.parse((await readAll(archive, `${databaseKey(DB)}manifest.json`)).toString()) as { snapshots: { key: string; stamp: string }[] };
      expect(manifest.snapshots).to.have.length(1);
      // Its stamp is the last write's: the three writes are in it.
      const last = (await changesAfter(server, undefined)).at(-1)!.hlc;
      expect(manifest.snapshots[0]!.stamp).to.equal(Buffer.from(hlcFromWire(last)).toString('hex'));
      // Two more intervals without a change: no further snapshot.
      await new Promise((resolve) => setTimeout(resolve, 2500));
      expect(await snapshots()).to.equal(1);
    } finally {
      await holder.socket.close();
    }
  });

  it('does not time a client out while its database is restored', async () => {
    const first = await start();
    await write(first, new TestSite(), 30);
    expect(await durabilityOf(first).flush(DB)).to.equal(true);
    await stop(first);
    await rm(dataDir, { recursive: true, force: true });
    // A slow archive (the real directory archive, each read delayed past the handshake timeout).
    const real = await openFsArchive(archiveDir);
    archives.push(real);
    const slow = { ...real, location: real.location, put: real.put.bind(real), list: real.list.bind(real), delete: real.delete.bind(real), close: real.close.bind(real),
      async get(key: string) { await new Promise((resolve) => setTimeout(resolve, 150)); return real.get(key); } };
    const second = await startTestServer({ dataDir, archive: slow, handshakeTimeoutMs: 100 });
    servers.push(second);
    const { socket, reply } = await RawSocket.handshake(second.wsUrl, DB, new TestSite().wire);
    expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
    await socket.close();
  });

  it('keeps only snapshotsKept snapshots and deletes the batches they make unnecessary', async () => {
    const server = await start({ snapshotsKept: 2 });
    const site = new TestSite();
    for (let round = 0; round < 4; round++) {
      await write(server, site, 20, round * 20);
      expect(await durabilityOf(server).flush(DB)).to.equal(true);
      await durabilityOf(server).snapshotNow(DB);
    }
    const archive = await openFsArchive(archiveDir);
    archives.push(archive);
    const keys: string[] = [];
    for await (const o of archive.list(databaseKey(DB))) keys.push(o.key);
    const snapshots = keys.filter((k) => parseSnapshotKey(DB, k));
    expect(snapshots).to.have.length(2);
    const manifest = JSON.parse((await readAll(archive, `${databaseKey(DB)}manifest.json`)).toString()) as { snapshots: { key: string }[] };
    expect(manifest.snapshots.map((s) => s.key).sort()).to.deep.equal(snapshots.sort());
    // Batches the oldest kept snapshot covers are gone; those after it stay (a fallback if the newest is corrupt).
    const oldest = snapshots.map((k) => parseSnapshotKey(DB, k)!.stamp).sort(Buffer.compare)[0]!;
    const batches = keys.map((k) => parseBatchKey(DB, k)).filter((b) => b !== undefined);
    expect(batches.length).to.be.greaterThan(0);
    for (const b of batches) expect(Buffer.compare(b.last, oldest), 'a kept batch ends after the oldest kept snapshot').to.equal(1);
  });
});

async function readAll(archive: FsArchive, key: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of (await archive.get(key))!) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
