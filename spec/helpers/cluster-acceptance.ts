/**
 * Node processes of a cluster for the acceptance specs: the real CLI,
 * joined to one redis-server with `--redis-url` and `--node-id`, each on a
 * data dir of its own that survives a `kill -9` and a restart. Plus what
 * the specs read back from a node the way a client or an operator would.
 */
import { expect } from 'chai';
import { TestSite } from './changes.js';
import { startCoordinatorProcess, type CoordinatorProcess, type ExitStatus, type ProcessRouterOptions } from './coordinator-process.js';
import type { RedisTestServer } from './redis-server.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';
import type { ChangeSet, SnapshotChunk } from '../../lib/protocol/messages.js';

/** How to start the nodes of a TestCluster. */
export interface TestClusterOptions {
  /** Number of node processes. */
  nodes: number;
  /** Router options (config file) of every node. */
  router?: ProcessRouterOptions;
  /** Further CLI arguments of every node, e.g. ['--batch-size', '50']. */
  args?: string[];
  /** Extra environment of every node, e.g. `{ DEBUG: 'sync-coordinator:cluster' }`. */
  env?: NodeJS.ProcessEnv;
}

/** One node of a TestCluster: its name, data dir, and the process now running on it (if any). */
export interface ClusterNode {
  /** `node-1`, `node-2`, ... (its `--node-id`). */
  readonly id: string;
  readonly dataDir: string;
  /** The current process; a restart replaces it (new port). */
  proc: CoordinatorProcess;
  /** Processes this node ran so far (1 + restarts). */
  runs: number;
}

/**
 * N coordinator processes in one cluster on `redis`. `kill(i)` is
 * `kill -9`; `restart(i)` starts node i again on the same data dir (and
 * node id), on a new port; `addNode()` starts one more on an empty data dir.
 * Every process ends at `close()`.
 */
export class TestCluster {
  readonly nodes: ClusterNode[] = [];
  private readonly redis: RedisTestServer;
  private readonly options: TestClusterOptions;
  /** Node ids handed out so far (`node-1` ... `node-<named>`), including nodes still starting. */
  private named = 0;

  private constructor(redis: RedisTestServer, options: TestClusterOptions) {
    this.redis = redis;
    this.options = options;
  }

  /** Starts `options.nodes` node processes on `redis`, all at once. */
  static async start(redis: RedisTestServer, options: TestClusterOptions): Promise<TestCluster> {
    const cluster = new TestCluster(redis, options);
    cluster.named = options.nodes;
    try {
      const dirs = await Promise.all(Array.from({ length: options.nodes }, () => makeTempDir('cluster-node-')));
      const procs = await Promise.all(dirs.map((dir, i) => cluster.launch(dir, `node-${i + 1}`)));
      procs.forEach((proc, i) => cluster.nodes.push({ id: `node-${i + 1}`, dataDir: dirs[i]!, proc, runs: 1 }));
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  private launch(dataDir: string, id: string): Promise<CoordinatorProcess> {
    return startCoordinatorProcess({
      dataDir,
      router: this.options.router,
      args: ['--redis-url', this.redis.url, '--node-id', id, ...(this.options.args ?? [])],
      env: this.options.env,
    });
  }

  /**
   * Starts one more node process, `node-<n+1>`, on a fresh, empty data dir
   * and with the options of the others: a node that joins the running
   * cluster. Resolves with its index (for `proc(i)`, `kill(i)`, ...) once it
   * listens; its data dir goes at `close()`.
   */
  async addNode(): Promise<number> {
    const id = `node-${++this.named}`;
    const dataDir = await makeTempDir('cluster-node-');
    let proc: CoordinatorProcess;
    try {
      proc = await this.launch(dataDir, id);
    } catch (err) {
      await removeTempDir(dataDir);
      throw err;
    }
    this.nodes.push({ id, dataDir, proc, runs: 1 });
    return this.nodes.length - 1;
  }

  /** The process of node `i` (0-based). */
  proc(i: number): CoordinatorProcess {
    return this.nodes[i]!.proc;
  }

  get procs(): CoordinatorProcess[] {
    return this.nodes.map((n) => n.proc);
  }

  alive(i: number): boolean {
    return this.nodes[i]!.proc.alive();
  }

  /** SIGKILL of node `i`'s process; resolves with its exit status once it is gone. */
  kill(i: number): Promise<ExitStatus> {
    return this.nodes[i]!.proc.kill();
  }

  /** Starts node `i` again on its data dir (after a kill or a stop). */
  async restart(i: number): Promise<CoordinatorProcess> {
    const node = this.nodes[i]!;
    if (node.proc.alive()) throw new Error(`${node.id} still runs; kill or stop it first`);
    await node.proc.cleanup();
    node.proc = await this.launch(node.dataDir, node.id);
    node.runs++;
    return node.proc;
  }

  /** The stderr of every process that ran, for a failure message. */
  stderr(): string {
    return this.nodes.map((n) => `--- ${n.id} (pid ${n.proc.pid}, run ${n.runs}) stderr ---\n${n.proc.stderr().slice(-6000)}`).join('\n');
  }

  /** Kills every process and removes the data dirs. */
  async close(): Promise<void> {
    await Promise.all(this.nodes.map(async (n) => {
      await n.proc.cleanup();
      await removeTempDir(n.dataDir);
    }));
  }
}

/**
 * The database's state as `GET /:db/snapshot` on `proc` shows it, with only
 * the snapshot id blanked (each stream has its own): two nodes that hold the
 * same data give equal states, tombstones included.
 */
export async function nodeState(proc: CoordinatorProcess, db: string): Promise<unknown[]> {
  const res = await proc.get(`/${db}/snapshot`, { 'x-site-id': new TestSite().wire });
  expect(res.status, `GET /${db}/snapshot on ${proc.baseUrl}: ${res.body.slice(0, 300)}`).to.equal(200);
  return res.body.trim().split('\n').map((line) => JSON.parse(line) as SnapshotChunk)
    .map((chunk) => (chunk.type === 'header' || chunk.type === 'footer' ? { ...chunk, snapshotId: '' } : chunk));
}

/** One page of `GET /:db/changes?sinceHLC=<cursor>` on `proc`, read as site `reader` (which wrote nothing). */
export async function changesPage(proc: CoordinatorProcess, db: string, cursor: string | undefined, reader: string): Promise<{ changes: ChangeSet[]; hasMore: boolean }> {
  const res = await proc.get(`/${db}/changes${cursor ? `?sinceHLC=${encodeURIComponent(cursor)}` : ''}`, { 'x-site-id': reader });
  expect(res.status, `GET /${db}/changes on ${proc.baseUrl}: ${res.body.slice(0, 300)}`).to.equal(200);
  const { data } = JSON.parse(res.body) as { data: { changes: ChangeSet[]; hasMore?: boolean } };
  return { changes: data.changes, hasMore: data.hasMore === true };
}

/**
 * Waits until every process in `procs` shows the same state of `db` (see
 * {@link nodeState}) on two reads in a row; returns that state. Fails,
 * showing how the states differ in size, if they are still apart after
 * `timeoutMs` (the assertion is on the state reached, not on the time).
 */
export async function converged(procs: CoordinatorProcess[], db: string, timeoutMs = 60_000): Promise<unknown[]> {
  const until = Date.now() + timeoutMs;
  let previous = '';
  let states: unknown[][] = [];
  for (;;) {
    states = await Promise.all(procs.map((p) => nodeState(p, db)));
    const texts = states.map((s) => JSON.stringify(s));
    const same = texts.every((t) => t === texts[0]);
    if (same && texts[0] === previous) return states[0]!;
    previous = same ? texts[0]! : '';
    if (Date.now() > until) break;
    await new Promise((resolve) => setTimeout(resolve, same ? 50 : 200));
  }
  const sizes = states.map((s) => `${s.length} chunks, ${JSON.stringify(s).length} bytes`);
  expect.fail(`${db}: the nodes did not converge within ${timeoutMs} ms (${sizes.join(' / ')})`);
}
