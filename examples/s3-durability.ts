/**
 * S3 durability end to end: a coordinator archives every write to S3, its
 * data directory is wiped (a lost disk), and a coordinator started on the
 * empty directory restores the database from S3 the first time it is
 * opened: the same notes, and a device's cursor from before the wipe still
 * works.
 *
 * With S3_BUCKET (and the other S3_* variables, as for the CLI) set, it uses
 * that bucket, under a fresh prefix it leaves behind. Without, it starts a
 * local S3-compatible server (s3rver, a dev dependency) in a temp directory,
 * so it runs on a fresh clone:
 *
 *     node --import tsx examples/s3-durability.ts
 *     S3_BUCKET=my-bucket S3_REGION=eu-west-1 node --import tsx examples/s3-durability.ts
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createCoordinatorServer, loadConfig, SyncClient, HlcClock, decodeHlc, encodeHlc, hlcToWire, randomSiteId, siteIdToWire,
  type ChangeSet, type ColumnChange, type CoordinatorServer, type SnapshotChunk,
} from '../lib/index.js';

// The AWS SDK warns on Node versions it will drop one day; nothing to act on here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const databaseId = 'example:notes';
const scratch = await mkdtemp(join(tmpdir(), 's3-durability-example-'));
const dataDir = join(scratch, 'data');

/** Without S3_BUCKET: a local s3rver over a temp directory, with one bucket. */
async function localS3(): Promise<{ s3: { bucket: string; endpoint: string; forcePathStyle: boolean; accessKeyId: string; secretAccessKey: string }; close(): Promise<void> }> {
  const { default: S3rver } = await import('s3rver');
  const bucket = 'sync-example';
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: join(scratch, 's3'), configureBuckets: [{ name: bucket, configs: [] }] });
  const { port } = await server.run();
  // s3rver checks signatures against these fixed keys.
  return { s3: { bucket, endpoint: `http://127.0.0.1:${port}`, forcePathStyle: true, accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' }, close: () => server.close() };
}

const local = process.env.S3_BUCKET ? undefined : await localS3();
// Each run gets its own corner of a real bucket, so it never restores an older run's notes.
const prefix = `${process.env.S3_KEY_PREFIX ?? ''}sync-coordinator-example-${randomUUID()}/`;
// The S3_* variables, SYNC_* and a sync-coordinator.json are read as the CLI reads them; these win over them.
const config = loadConfig({
  overrides: { host: '127.0.0.1', port: 0, dataDir, s3: { ...local?.s3, keyPrefix: local ? '' : prefix } },
});

/** One device: a site id and a clock that stamps its transactions. */
const device = (() => {
  const site = randomSiteId();
  return { siteId: siteIdToWire(site), clock: new HlcClock(site) };
})();

function note(id: number, title: string): ChangeSet {
  const tick = decodeHlc(device.clock.tick());
  const hlc = hlcToWire(encodeHlc({ ...tick, opSeq: 0 }));
  const change: ColumnChange = { type: 'column', schema: 'main', table: 'notes', pk: [id], column: 'title', value: title, hlc };
  return { siteId: device.siteId, transactionId: `${tick.wallTime}:${tick.counter}:${device.siteId}`, hlc, changes: [change], schemaMigrations: [] };
}

/** A snapshot's notes, without its random id: what must come back identical. */
function state(chunks: SnapshotChunk[]): unknown[] {
  return chunks.map((chunk) => (chunk.type === 'header' || chunk.type === 'footer' ? { ...chunk, snapshotId: '' } : chunk));
}

async function start(): Promise<{ server: CoordinatorServer; client: SyncClient }> {
  const server = createCoordinatorServer({ config });
  const { url } = await server.start();
  const client = await SyncClient.connect({ url: `${url.replace(/^http/, 'ws')}/ws`, databaseId, siteId: siteIdToWire(randomSiteId()) });
  return { server, client };
}

let exitCode = 0;
try {
  const archive = `s3://${config.s3!.bucket}/${config.s3!.keyPrefix ?? ''}${config.s3!.endpoint ? ` at ${config.s3!.endpoint}` : ''}`;
  console.log(`archiving to ${archive}${local ? ' (a local s3rver; set S3_BUCKET to use your own bucket)' : ''}`);

  const first = await start();
  const writer = await SyncClient.connect({ url: first.client.options.url, databaseId, siteId: device.siteId });
  await writer.apply([note(1, 'buy milk'), note(2, 'call the plumber'), note(3, 'back up the laptop')]);
  await writer.close();
  const { cursor } = await first.client.catchUp();
  const before = await first.client.snapshot();
  console.log(`wrote 3 notes to ${databaseId}; a reader's cursor is ${cursor}`);
  await first.client.close();
  // A graceful stop archives whatever is still on its way to S3.
  await first.server.stop();

  await rm(dataDir, { recursive: true, force: true });
  console.log(`stopped the coordinator and wiped its data directory ${dataDir}`);

  const second = await start();
  const after = await second.client.snapshot();
  const same = JSON.stringify(state(after)) === JSON.stringify(state(before));
  const entries = after.find((chunk): chunk is Extract<SnapshotChunk, { type: 'footer' }> => chunk.type === 'footer')?.totalEntries;
  console.log(`restarted on the empty directory: ${databaseId} was restored from S3 with ${entries} notes, ${same ? 'identical' : 'DIFFERENT'}`);

  // The restored database keeps its stamps: new ones continue above them, so old cursors stay valid.
  const later = note(4, 'water the plants');
  const writerAgain = await SyncClient.connect({ url: second.client.options.url, databaseId, siteId: device.siteId });
  await writerAgain.apply([later]);
  await writerAgain.close();
  const since = await second.client.catchUp(cursor);
  const exact = since.changeSets.length === 1 && since.changeSets[0]!.transactionId === later.transactionId;
  console.log(`a note written after the restore; the reader's old cursor gets ${since.changeSets.length} change set after it${exact ? ', exactly that note' : ''}`);
  if (!same || !exact) exitCode = 1;
  await second.client.close();
  await second.server.stop();
  if (!local) console.log(`the archive stays at ${archive} (delete it when done)`);
} finally {
  await local?.close();
  await rm(scratch, { recursive: true, force: true });
}
process.exitCode = exitCode;
