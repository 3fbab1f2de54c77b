import { expect } from 'chai';
import WebSocket from 'ws';
import { TestSite } from '../helpers/changes.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket } from '../helpers/raw-socket.js';

/** A real client's batch: 1,000 changes (docs/protocol.md §8), here of ~40 KB each. */
const CHANGES = 1000;
const VALUE_BYTES = 40 * 1024;
const MiB = 1024 * 1024;

/** One apply_changes frame of CHANGES column writes of VALUE_BYTES each (~40 MB), as UTF-8 bytes; rows from `firstPk` on. */
function bigBatch(site: TestSite, requestId: string, firstPk = 0): Buffer {
  const value = 'v'.repeat(VALUE_BYTES - 8);
  const set = site.txn(Array.from({ length: CHANGES }, (_, i) => ({ pk: [firstPk + i], column: 'body', value: `${String(i).padStart(8, '0')}${value}` })));
  return Buffer.from(JSON.stringify({ type: 'apply_changes', requestId, changes: [set] }));
}

/**
 * A sending client. Frames go out with a zero mask, so ws sends the caller's
 * buffer as it is, without a masked 40 MB copy per send.
 */
class Sender {
  private constructor(readonly ws: WebSocket, private readonly replies: Map<string, (m: Record<string, unknown>) => void>) {}

  static async open(url: string, databaseId: string, siteId: string): Promise<Sender> {
    const ws = new WebSocket(url, { perMessageDeflate: false, generateMask: (mask: Buffer) => { mask.fill(0); } });
    const replies = new Map<string, (m: Record<string, unknown>) => void>();
    const sender = new Sender(ws, replies);
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
      replies.get(String(m.type))?.(m);
    });
    ws.on('error', () => { /* seen through the missing reply */ });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const ack = sender.reply('handshake_ack');
    ws.send(JSON.stringify({ type: 'handshake', databaseId, siteId, protocolVersion: 1 }));
    await ack;
    return sender;
  }

  /** The next message of `type` (or an error message, which fails the test with its text). */
  reply(type: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.replies.set(type, resolve);
      this.replies.set('error', (m) => reject(new Error(`server error: ${JSON.stringify(m).slice(0, 300)}`)));
      this.ws.once('close', (code) => reject(new Error(`closed with ${code} before ${type}`)));
    });
  }

  /** Sends `frame` as one text frame and resolves with the apply_result. */
  apply(frame: Buffer): Promise<Record<string, unknown>> {
    const result = this.reply('apply_result');
    this.ws.send(frame, { binary: false });
    return result;
  }

  close(): void {
    this.ws.terminate();
  }
}

/** Samples `proc`'s RSS every ~20 ms while `work` runs; resolves with the peak. */
async function peakRss<T>(proc: CoordinatorProcess, work: () => Promise<T>): Promise<{ peak: number; result: T }> {
  let peak = proc.rss();
  const timer = setInterval(() => { peak = Math.max(peak, proc.rss()); }, 20);
  try {
    const result = await work();
    peak = Math.max(peak, proc.rss());
    return { peak, result };
  } finally {
    clearInterval(timer);
  }
}

describe('hardening: large frames (against a coordinator process)', function () {
  this.timeout(300_000);
  after(() => cleanupCoordinatorProcesses());

  it('applies one ~40 MB batch of 1,000 changes over WebSocket and pushes it to another client', async () => {
    const proc = await startCoordinatorProcess();
    const writer = new TestSite(undefined, Date.now() - 1000);
    const readerSite = new TestSite();
    const { socket: reader, reply } = await RawSocket.handshake(proc.wsUrl, 'big:one', readerSite.wire);
    expect(reply.type).to.equal('handshake_ack');
    const sender = await Sender.open(proc.wsUrl, 'big:one', writer.wire);
    try {
      const frame = bigBatch(writer, 'apply-1');
      expect(frame.length, 'over the old 16 MiB limit').to.be.above(40_000_000);
      const result = await sender.apply(frame);
      expect(result).to.include({ requestId: 'apply-1', applied: CHANGES, skipped: 0, conflicts: 0, transactions: 1 });
      const push = await reader.until(['push_changes'], 60_000) as unknown as { changeSets: { siteId: string; changes: { pk: number[]; value: string }[] }[] };
      expect(push.changeSets).to.have.length(1);
      expect(push.changeSets[0]!.siteId).to.equal(writer.wire);
      expect(push.changeSets[0]!.changes).to.have.length(CHANGES);
      expect(push.changeSets[0]!.changes[999]!.value).to.have.length(VALUE_BYTES).and.match(/^00000999v/);
      expect(await proc.metric('sync_inbound_bytes'), 'everything received has been released').to.equal(0);
    } finally {
      sender.close();
      await reader.close(true);
      await proc.cleanup();
    }
  });

  /** Peak RSS of fresh processes taking 5, then 20 concurrent ~40 MB batches; `databaseOf(i)` is sender i's database. */
  async function peaksOf(databaseOf: (i: number) => string): Promise<Map<number, number>> {
    // They share a site id, as connections of one device would, so nobody is
    // pushed the others' 40 MB batches: what is measured is what the server takes in.
    const writer = new TestSite(undefined, Date.now() - 1000);
    const frames = Array.from({ length: 20 }, (_, i) => bigBatch(writer, `apply-${i}`, i * CHANGES));
    const peaks = new Map<number, number>();
    // A fresh process per run, so neither run inherits the other's heap.
    for (const senders of [5, 20]) {
      const proc = await startCoordinatorProcess();
      const clients: Sender[] = [];
      try {
        for (let i = 0; i < senders; i++) clients.push(await Sender.open(proc.wsUrl, databaseOf(i), writer.wire));
        const idle = proc.rss();
        const { peak, result } = await peakRss(proc, () => Promise.all(clients.map((client, i) => client.apply(frames[i]!))));
        expect(result, 'every batch applied').to.have.length(senders);
        result.forEach((r, i) => expect(r).to.include({ requestId: `apply-${i}`, applied: CHANGES, skipped: 0, conflicts: 0 }));
        expect(await proc.metric('sync_inbound_bytes'), 'everything received has been released').to.equal(0);
        expect(await proc.metric('sync_inbound_paused_sockets')).to.equal(0);
        peaks.set(senders, peak);
        // Figures for the report; the assertions are what passes or fails.
        console.log(`      ${senders} senders of ${(frames[0]!.length / MiB).toFixed(1)} MiB: idle RSS ${(idle / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB`);
      } finally {
        for (const client of clients) client.close();
        await proc.cleanup();
      }
    }
    return peaks;
  }

  it('keeps memory flat under many concurrent ~40 MB senders on one database: 20 take at most 1.5 × the peak RSS of 5', async () => {
    const peaks = await peaksOf(() => 'big:shared');
    expect(peaks.get(20)!, `peak RSS with 20 senders vs 5 (${[...peaks.values()].map((p) => (p / MiB).toFixed(0)).join(' vs ')} MiB)`).to.be.at.most(1.5 * peaks.get(5)!);
  });

  it('keeps memory flat when each ~40 MB sender has its own database (no database holds its batch after the commit)', async () => {
    const peaks = await peaksOf((i) => `big:${i}`);
    expect(peaks.get(20)!, `peak RSS with 20 senders vs 5 (${[...peaks.values()].map((p) => (p / MiB).toFixed(0)).join(' vs ')} MiB)`).to.be.at.most(1.5 * peaks.get(5)!);
  });
});
