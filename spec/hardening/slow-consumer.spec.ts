import { expect } from 'chai';
import { TestSite } from '../helpers/changes.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, eventually, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';

const DB = 'slow:db';
const MESSAGES = 800;
const CHANGES_PER_MESSAGE = 32;
const VALUE_BYTES = 8192;
const MB = 1024 * 1024;

/** The value written at (message, change): distinct per cell, 8 KiB. */
function valueOf(i: number, j: number): string {
  const head = `${i}/${j}:`;
  return head + 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(Math.ceil(VALUE_BYTES / 36)).slice(0, VALUE_BYTES - head.length);
}

interface RunResult {
  /** Peak server RSS during the writes minus its RSS before them. */
  growth: number;
  /** Transaction ids each normal subscriber received by push. */
  pushed: Set<string>[];
  /** The slow subscriber, when one stalled. */
  slow?: { cells: Map<string, string>; lagging: boolean };
}

const TRANSACTION_ID = /"transactionId":"([^"]+)"/g;

/** Adds every cell of `changeSets` to `cells` (key "i/j" from the pk), checking its value. */
function collect(changeSets: ChangeSet[], cells: Map<string, string>): void {
  for (const set of changeSets) {
    for (const change of set.changes) {
      if (change.type !== 'column') continue;
      const [i, j] = change.pk as number[];
      expect(change.value, `cell ${i}/${j}`).to.equal(valueOf(i!, j!));
      cells.set(`${i}/${j}`, change.value as string);
    }
  }
}

/**
 * Writes ~200 MiB of changes through one writer while three subscribers
 * listen; with `stall`, the third stops reading for the whole run, then
 * reads again and catches up.
 */
async function run(stall: boolean): Promise<RunResult> {
  const proc: CoordinatorProcess = await startCoordinatorProcess({ router: { heartbeatIntervalMs: 0, sendHardLimitMs: 0 } });
  try {
    const writerSite = new TestSite();
    const pushed = [new Set<string>(), new Set<string>()];
    const subscribers = await Promise.all(pushed.map(async (set) => {
      const socket = await RawSocket.open(proc.wsUrl, {
        onFrame(text) {
          if (!text.startsWith('{"type":"push_changes"')) return false;
          for (const m of text.matchAll(TRANSACTION_ID)) set.add(m[1]!);
          return true;
        },
      });
      socket.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: new TestSite().wire, protocolVersion: 1 }));
      expect((await socket.next()).type).to.equal('handshake_ack');
      return socket;
    }));
    const slowCells = new Map<string, string>();
    const slow = await RawSocket.open(proc.wsUrl, {
      onFrame(text) {
        if (!text.startsWith('{"type":"push_changes"')) return false;
        collect((JSON.parse(text) as { changeSets: ChangeSet[] }).changeSets, slowCells);
        return true;
      },
    });
    slow.send(JSON.stringify({ type: 'handshake', databaseId: DB, siteId: new TestSite().wire, protocolVersion: 1 }));
    expect((await slow.next()).type).to.equal('handshake_ack');
    // Its cursor before the writes: the database is empty, so "from the beginning".
    const first = await slow.request({ type: 'get_changes' }, ['changes']) as unknown as { changeSets: ChangeSet[] };
    expect(first.changeSets).to.deep.equal([]);
    const { socket: writer, reply } = await RawSocket.handshake(proc.wsUrl, DB, writerSite.wire);
    expect(reply.type).to.equal('handshake_ack');

    const before = proc.rss();
    let peak = before;
    const sampler = setInterval(() => { peak = Math.max(peak, proc.rss()); }, 50);
    if (stall) slow.pauseReading();
    const transactionIds: string[] = [];
    try {
      for (let i = 0; i < MESSAGES; i++) {
        const set = writerSite.txn(Array.from({ length: CHANGES_PER_MESSAGE }, (_, j) => ({ pk: [i, j], column: 'v', value: valueOf(i, j) })));
        transactionIds.push(set.transactionId);
        const result = await writer.request({ type: 'apply_changes', requestId: String(i), changes: [set] }, ['apply_result', 'error']);
        expect(result.type, JSON.stringify(result).slice(0, 200)).to.equal('apply_result');
      }
      expect(await eventually(() => pushed.every((set) => set.size === MESSAGES), 600)).to.equal(true);
    } finally {
      clearInterval(sampler);
    }
    peak = Math.max(peak, proc.rss());
    for (const set of pushed) expect([...set].sort()).to.deep.equal([...transactionIds].sort());

    let lagging = false;
    if (stall) {
      lagging = (await proc.metric('sync_lagging_sessions_total')) > 0;
      slow.resumeReading();
      // What was queued before it fell behind arrives first, then what it
      // missed, read back from the log: all as pushes, without asking.
      expect(await eventually(() => slowCells.size === MESSAGES * CHANGES_PER_MESSAGE, 1200), `slow subscriber has ${slowCells.size} cells`).to.equal(true);
      const extra = await slow.request({ type: 'ping' }, ['pong', 'error']);
      expect(extra.type, 'no error was sent to the slow subscriber').to.equal('pong');
    }
    await Promise.all([...subscribers, slow, writer].map((s) => s.close()));
    expect(proc.alive()).to.equal(true);
    return { growth: peak - before, pushed, slow: stall ? { cells: slowCells, lagging } : undefined };
  } finally {
    await proc.stop();
    await proc.cleanup();
  }
}

describe('hardening: a subscriber that stops reading (against a coordinator process)', function () {
  this.timeout(240_000);
  after(() => cleanupCoordinatorProcesses());

  it('keeps server memory flat, serves the others fully, and the slow one ends with every change', async () => {
    const normal = await run(false);
    const stalled = await run(true);
    if (process.env.SLOW_TALLY) process.stderr.write(`RSS growth: nobody stalled ${(normal.growth / MB).toFixed(1)} MB, one stalled ${(stalled.growth / MB).toFixed(1)} MB\n`);
    expect(stalled.slow!.lagging, 'the stalled subscriber fell behind (sync_lagging_sessions_total)').to.equal(true);
    expect(stalled.slow!.cells.size).to.equal(MESSAGES * CHANGES_PER_MESSAGE);
    expect((stalled.growth - normal.growth) / MB, 'extra RSS growth (MB) with a stalled subscriber').to.be.below(50);
  });
});
