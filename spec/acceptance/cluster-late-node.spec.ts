import { expect } from 'chai';
import { eventually, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { startRedisServer, type RedisTestServer } from '../helpers/redis-server.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { TestCluster, changesPage, converged } from '../helpers/cluster-acceptance.js';
import { Tally, httpWriter, idsIn, snapshotState, wsWriter } from '../helpers/s3-acceptance.js';
import { ReferenceClient, countRows, readServerState, settle, type RowWrite } from '../helpers/reference-client.js';
import { TestSite } from '../helpers/changes.js';
import { RedisLog, type LogInfo } from '../../lib/cluster/redis-log.js';
import { compareEntryIds } from '../../lib/cluster/stamps.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';

/**
 * The cluster issue's "a node started late (stream trimmed) catches up and
 * serves identical data", the way users run it: node processes of the real
 * CLI (`--redis-url`, `--node-id`, the archive from `S3_*` variables) on one
 * real redis-server and one real S3-compatible server (s3rver). Two nodes
 * take writes and archive them; their logs are trimmed; a third node starts
 * on an empty disk, so the archive is its only source for what came before.
 * spec/cluster/catch-up.spec.ts covers the same in one process with a
 * directory archive.
 *
 * CLUSTER_ACCEPTANCE_DEBUG=sync-coordinator:cluster,... passes DEBUG to the
 * nodes; a failing test prints their stderr.
 */

const DEBUG = process.env.CLUSTER_ACCEPTANCE_DEBUG;
/** Short, so the logs are trimmed within seconds of the last write (the option's minimum is 1000). */
const RETENTION_MS = 1500;
/** Changes per get_changes page: the big database spans about ten pages. */
const BATCH_SIZE = 500;
/** The big database: a device's transactions of ROWS_PER_TXN rows of 2 columns (100 × 40 = 4,000 changes), then raw writes. */
const DEVICE_TXNS = 100;
const ROWS_PER_TXN = 20;
const RAW_BIG_WRITES = 200;
const UNLIMITED = { messagesPerSecond: 0, messagesPerSecondPerIp: 0 };
const BACKOFF_MS = 20;

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** `until` for a raw writer that sends exactly `n` writes. */
function writes(n: number): () => boolean {
  let sent = 0;
  return () => sent++ >= n;
}

/** The archive settings of a node as a user gives them: the CLI's `S3_*` environment variables. */
function s3Env(server: S3TestServer, keyPrefix: string): NodeJS.ProcessEnv {
  return {
    S3_BUCKET: server.bucket, S3_ENDPOINT: server.endpoint, S3_REGION: server.region, S3_FORCE_PATH_STYLE: 'true',
    S3_ACCESS_KEY_ID: server.accessKeyId, S3_SECRET_ACCESS_KEY: server.secretAccessKey, S3_KEY_PREFIX: keyPrefix,
  };
}

/** Commits `transactions` as an app would, waiting for acks before a pending push would pass a client's batch of about 1,000 changes (§8). */
async function commitInBatches(client: ReferenceClient, transactions: RowWrite[][]): Promise<void> {
  let pending = 0;
  for (const rows of transactions) {
    const size = rows.reduce((n, row) => n + Object.keys(row.values).length, 0);
    if (pending + size > 900) {
      await client.whenPushed();
      pending = 0;
    }
    client.write(rows);
    pending += size;
  }
  await client.whenPushed();
}

/** Every page of `GET /:db/changes` on `proc` after `cursor`, as `reader` sees them. */
async function pages(proc: CoordinatorProcess, db: string, cursor: string | undefined, reader: string): Promise<ChangeSet[][]> {
  const out: ChangeSet[][] = [];
  for (let at = cursor; ;) {
    const { changes, hasMore } = await changesPage(proc, db, at, reader);
    out.push(changes);
    if (!hasMore || changes.length === 0) return out;
    at = changes.at(-1)!.hlc;
  }
}

describe('acceptance: a node process started after the logs were trimmed (redis-server, s3rver)', function () {
  this.timeout(120_000);
  let redis: RedisTestServer;
  let s3: S3TestServer;
  let cluster: TestCluster;
  let log: RedisLog;
  const clients: ReferenceClient[] = [];

  before(async () => {
    [redis, s3] = await Promise.all([startRedisServer(), startS3Server('late-node')]);
    cluster = await TestCluster.start(redis, {
      nodes: 2,
      router: { ...UNLIMITED, clusterLogRetentionMs: RETENTION_MS },
      args: ['--batch-size', String(BATCH_SIZE)],
      env: { ...s3Env(s3, 'late/'), ...(DEBUG ? { DEBUG } : {}) },
    });
    log = await RedisLog.open({ url: redis.url });
  });
  afterEach(async function () {
    await Promise.all(clients.splice(0).map((c) => c.stop()));
    if (this.currentTest?.state === 'failed') process.stderr.write(`${cluster.stderr()}\n`);
  });
  after(async () => {
    await log?.close();
    await cluster?.close();
    await Promise.all([redis?.close(), s3?.close()]);
  });

  /** A ReferenceClient whose every connection goes to node `node` (0-based). */
  function client(databaseId: string, node: number): ReferenceClient {
    const c = new ReferenceClient({ databaseId, reconnectDelayMs: BACKOFF_MS, url: () => cluster.proc(node).wsUrl });
    clients.push(c);
    return c;
  }

  async function started(...list: ReferenceClient[]): Promise<void> {
    for (const c of list) c.start();
    await Promise.all(list.map((c) => c.whenReady()));
  }

  it('restores every database from S3 on a third node with an empty disk: identical snapshots, node 1\'s cursor pages on, and its writes reach the other nodes and their clients', async () => {
    const BIG = 'late:big';
    const SMALL = range(3).map((d) => `late:small-${d}`);
    const ALL = [BIG, ...SMALL];

    // A device on node 1 that stays connected through everything.
    const watcher = client(SMALL[0]!, 0);
    await started(watcher);

    // The big database from a device on node 1, then from a raw writer on node 2 (its own rows, overwrites
    // of shared rows, deletes); the small ones from raw writers on both nodes, each written through both.
    const tally = new Tally();
    const device = client(BIG, 0);
    await started(device);
    await Promise.all([
      commitInBatches(device, range(DEVICE_TXNS).map((t) =>
        range(ROWS_PER_TXN).map((k) => ({ pk: [`d-${t}-${k}`], values: { s: `d:${t}:${k}`, n: t * ROWS_PER_TXN + k } })))),
      ...SMALL.flatMap((db, d) => [
        wsWriter(cluster.proc(d % 2), db, `${db}/ws`, tally, { window: 4, until: writes(60) }),
        httpWriter(cluster.proc((d + 1) % 2), db, `${db}/http`, tally, { until: writes(20) }),
      ]),
    ]);
    // After the device's pushes: a client pushes back what it received with clocks above its last
    // acknowledged push (§8), and these writers' clocks run a minute behind, so it never has to.
    await wsWriter(cluster.proc(1), BIG, `${BIG}/ws`, tally, { window: 8, until: writes(RAW_BIG_WRITES) });
    expect(tally.refused.size, `refusals: ${JSON.stringify(tally.codes())}`).to.equal(0);
    const deviceTxns = device.ownChangeSets.map((s) => s.transactionId);
    expect(deviceTxns, 'precondition: every transaction of the device committed').to.have.length(DEVICE_TXNS);

    const [n1, n2] = [cluster.proc(0), cluster.proc(1)];
    const expected = new Map<string, unknown[]>();
    for (const db of ALL) {
      await converged([n1, n2], db);
      const state = await snapshotState(n1, db);
      expect(await snapshotState(n2, db), `${db}: nodes 1 and 2 agree`).to.deep.equal(state);
      expected.set(db, state);
    }

    // A client syncs the first pages of the big database on node 1, before node 3 exists.
    const reader = new TestSite().wire;
    const onNode1 = await pages(n1, BIG, undefined, reader);
    expect(onNode1.length, `precondition: ${BATCH_SIZE}-change pages`).to.be.at.least(6);
    const head = onNode1.slice(0, 3).flat();
    const cursor = head.at(-1)!.hlc;

    // Precondition: every entry written so far is gone from Redis (archived first, then trimmed), so a
    // new node can only get it from S3.
    const lastIds = new Map<string, string>();
    for (const db of ALL) lastIds.set(db, (await log.info(db)).lastId!);
    const infos = new Map<string, LogInfo>();
    const trimmed = await eventually(async () => {
      for (const db of ALL) infos.set(db, await log.info(db));
      return ALL.every((db) => {
        const info = infos.get(db)!;
        return info.trimmedBelow !== undefined && compareEntryIds(info.trimmedBelow, lastIds.get(db)!) > 0 && info.length === 0;
      });
    }, 300, 100);
    expect(trimmed, `every log trimmed past its last entry (last ${JSON.stringify(Object.fromEntries(lastIds))}, now ${JSON.stringify(Object.fromEntries(infos))})`).to.equal(true);
    const trimmedEntries = (await n1.metric('sync_cluster_entries_trimmed_total{node="node-1"}')) + (await n2.metric('sync_cluster_entries_trimmed_total{node="node-2"}'));
    expect(trimmedEntries, 'entries the nodes report trimmed').to.be.at.least(ALL.length);

    const i3 = await cluster.addNode();
    const n3 = cluster.proc(i3);
    expect(cluster.nodes[i3]!.id).to.equal('node-3');
    for (const db of ALL) expect(await snapshotState(n3, db), `${db} on node 3`).to.deep.equal(expected.get(db));
    for (const db of ALL) {
      const mine = [...tally.acked].filter((id) => id.startsWith(`${db}/`));
      expect([...idsIn(expected.get(db)!)].sort(), `${db}: every acknowledged write`).to.deep.equal(mine.sort());
    }
    const deviceRows = range(DEVICE_TXNS * ROWS_PER_TXN).map((i) => [`d-${Math.floor(i / ROWS_PER_TXN)}-${i % ROWS_PER_TXN}`]);
    expect(countRows((await readServerState(n3.baseUrl, BIG)).model, deviceRows), `${BIG}: the device's rows on node 3`).to.equal(deviceRows.length);
    const catchUps = await n3.metric('sync_cluster_catch_ups_total{from="archive",node="node-3"}');
    expect(catchUps, 'node 3 counts a catch-up from the archive for every database').to.equal(ALL.length);
    expect(await n3.metric('sync_archive_restores_total{result="restored",node="node-3"}'), 'databases node 3 restored from S3').to.equal(ALL.length);

    // The client that synced part of the big database on node 1 pages on through node 3: the rest, once each.
    const rest = (await pages(n3, BIG, cursor, reader)).flat();
    expect(rest, 'node 3 after the cursor: what node 1 has after it').to.deep.equal(onNode1.slice(3).flat());
    const ids = [...head, ...rest].map((s) => s.transactionId);
    expect(new Set(ids).size, 'no transaction twice').to.equal(ids.length);
    expect(ids, 'every transaction: the device\'s and the raw writes').to.have.length(DEVICE_TXNS + RAW_BIG_WRITES);
    expect(ids).to.include.members(deviceTxns);

    // Node 3 takes writes and follows the log: a device on node 3 writes, the device on node 1 gets it;
    // the device on node 1 writes, the device on node 3 gets it.
    const late = client(SMALL[0]!, i3);
    await started(late);
    late.write({ pk: ['from-node-3'], values: { s: 'written through node 3' } });
    await late.whenPushed();
    watcher.write({ pk: ['from-node-1'], values: { s: 'written through node 1' } });
    await watcher.whenPushed();
    const state = await converged(cluster.procs, SMALL[0]!);
    expect(state, 'the new writes changed the database').to.not.deep.equal(expected.get(SMALL[0]!));
    const server = (await readServerState(n3.baseUrl, SMALL[0]!)).model;
    for (const proc of [n1, n2]) {
      expect(countRows((await readServerState(proc.baseUrl, SMALL[0]!)).model, [['from-node-3'], ['from-node-1']]), `both rows on ${proc.baseUrl}`).to.equal(2);
    }
    const done = await settle([watcher, late], () => watcher.model.sameAs(server) && late.model.sameAs(server));
    expect(watcher.model.cell('main', 'items', ['from-node-3'], 's')?.value, 'the device on node 1 got the write through node 3').to.equal('written through node 3');
    expect(late.model.cell('main', 'items', ['from-node-1'], 's')?.value, 'the device on node 3 got the write through node 1').to.equal('written through node 1');
    expect(done, `both devices equal the servers: ${JSON.stringify(watcher.model.diff(server))} / ${JSON.stringify(late.model.diff(server))}`).to.equal(true);
    expect(watcher.connections, 'the device on node 1 never reconnected').to.equal(1);
    expect(watcher.errorSummary()).to.equal('none');
  });
});
