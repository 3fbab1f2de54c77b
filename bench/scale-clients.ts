/**
 * The load generator of the scale figures (bench/scale.ts), in a process of
 * its own: it holds thousands of WebSockets, more than the bench process's
 * file descriptor limit may allow, and its own event loop keeps the bench's
 * bookkeeping out of the receipt times. bench/scale.ts spawns it with a
 * raised limit and drives it over the IPC channel: each request
 * `{ id, op, ... }` gets one reply `{ id, result }` or `{ id, error }`.
 *
 * Times are absolute (`performance.timeOrigin + performance.now()`, ms with
 * µs resolution), so that sends and receipts in different generator
 * processes on the same machine can be compared.
 *
 * Requests:
 * - `subscribe { url, databases, perDatabase, token?, concurrency }`: opens
 *   `perDatabase` sockets on each database, each past its handshake and the
 *   one `get_changes` real clients send (docs/protocol.md §8), then idle
 *   apart from recording the pushes they receive.
 * - `writers { url, databases, token? }`: one writer socket per database.
 * - `write { databases }`: sends one small `apply_changes` (one change) from
 *   the writer of each database, back to back; returns the transaction ids
 *   and send times.
 * - `receipts { transactionIds, perTransaction, timeoutMs }`: waits until
 *   this process's subscribers received every transaction `perTransaction`
 *   times; returns their receipt times (and forgets them).
 * - `close`: closes every socket; the process then exits.
 *
 * It sends `{ ready: true }` once it listens for requests.
 */
import WebSocket from 'ws';
import { TestSite } from '../spec/helpers/changes.js';
import { randomSiteId, siteIdToWire } from '../lib/protocol/site-id.js';

const now = (): number => performance.timeOrigin + performance.now();

interface Request { id: number; op: string; [field: string]: unknown }

const subscribers: WebSocket[] = [];
const writers = new Map<string, { ws: WebSocket; site: TestSite; next: number }>();
/** Receipt times by transaction id, not yet collected. */
const receipts = new Map<string, number[]>();
/** Sockets the server closed while they were meant to stay open. */
let unexpectedCloses = 0;
let closing = false;
let waiting: (() => void) | undefined;

const PUSH_PREFIX = Buffer.from('{"type":"push_changes"');
const TX_MARK = Buffer.from('"transactionId":"');

/** Records a push's transaction id; only locates it in the frame, to stay far lighter than the server. */
function onSubscriberFrame(data: Buffer): void {
  const at = now();
  if (data.compare(PUSH_PREFIX, 0, PUSH_PREFIX.length, 0, PUSH_PREFIX.length) !== 0) return;
  let from = 0;
  for (;;) {
    const mark = data.indexOf(TX_MARK, from);
    if (mark < 0) break;
    const start = mark + TX_MARK.length;
    const end = data.indexOf(0x22, start);
    const id = data.toString('latin1', start, end);
    let times = receipts.get(id);
    if (!times) receipts.set(id, (times = []));
    times.push(at);
    from = end;
  }
  waiting?.();
}

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once('open', () => { ws.off('error', reject); resolve(ws); });
    ws.once('error', reject);
  });
}

/** The next frame of `type` on `ws`; rejects on an error frame or a close. */
function next(ws: WebSocket, type: string): Promise<void> {
  const prefix = `{"type":"${type}"`;
  return new Promise((resolve, reject) => {
    const done = (): void => { ws.off('message', onMessage); ws.off('close', onClose); };
    const onMessage = (data: Buffer): void => {
      const head = data.toString('utf8', 0, 200);
      if (head.startsWith(prefix)) { done(); resolve(); }
      else if (head.startsWith('{"type":"error"')) { done(); reject(new Error(`waiting for ${type}: ${data.toString()}`)); }
    };
    const onClose = (code: number, reason: Buffer): void => { done(); reject(new Error(`the server closed the socket (${code} ${reason.toString()}) before ${type}`)); };
    ws.on('message', onMessage);
    ws.on('close', onClose);
  });
}

async function handshake(url: string, databaseId: string, siteId: string, token: string | undefined): Promise<WebSocket> {
  const ws = await open(url);
  ws.on('error', () => undefined);
  const ack = next(ws, 'handshake_ack');
  ws.send(JSON.stringify({ type: 'handshake', databaseId, siteId, protocolVersion: 1, ...(token ? { token } : {}) }));
  await ack;
  return ws;
}

/** Runs `work` over `items` with at most `concurrency` at a time. */
async function pool<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let index = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (index < items.length) await work(items[index++]!);
  }));
}

async function subscribe(req: Request): Promise<unknown> {
  const { url, databases, perDatabase, token, concurrency } = req as unknown as { url: string; databases: string[]; perDatabase: number; token?: string; concurrency: number };
  const jobs: string[] = [];
  for (let i = 0; i < perDatabase; i++) jobs.push(...databases);
  const started = now();
  await pool(jobs, concurrency, async (databaseId) => {
    const ws = await handshake(url, databaseId, siteIdToWire(randomSiteId()), token);
    const caughtUp = next(ws, 'changes');
    ws.send('{"type":"get_changes"}');
    await caughtUp;
    ws.on('message', onSubscriberFrame);
    ws.on('close', () => { if (!closing) unexpectedCloses++; });
    subscribers.push(ws);
  });
  return { sockets: subscribers.length, ms: now() - started };
}

async function connectWriters(req: Request): Promise<unknown> {
  const { url, databases, token } = req as unknown as { url: string; databases: string[]; token?: string };
  await pool(databases, 50, async (databaseId) => {
    const site = new TestSite(randomSiteId(), Date.now() - 60_000);
    const ws = await handshake(url, databaseId, site.wire, token);
    ws.on('close', () => { if (!closing) unexpectedCloses++; });
    writers.set(databaseId, { ws, site, next: 0 });
  });
  return { writers: writers.size };
}

function write(req: Request): unknown {
  const { databases } = req as unknown as { databases: string[] };
  const frames: [WebSocket, string, string][] = [];
  for (const databaseId of databases) {
    const writer = writers.get(databaseId);
    if (!writer) throw new Error(`no writer on ${databaseId} in this process`);
    const n = writer.next++;
    const set = writer.site.txn([{ pk: [n], column: 'title', value: `write ${n}` }]);
    frames.push([writer.ws, set.transactionId, JSON.stringify({ type: 'apply_changes', requestId: String(n), changes: [set] })]);
  }
  // Built first, then sent back to back: the send times are as close together as they can be.
  const sent: { transactionId: string; at: number }[] = [];
  for (const [ws, transactionId, frame] of frames) {
    sent.push({ transactionId, at: now() });
    ws.send(frame);
  }
  return { sent };
}

async function collect(req: Request): Promise<unknown> {
  const { transactionIds, perTransaction, timeoutMs } = req as unknown as { transactionIds: string[]; perTransaction: number; timeoutMs: number };
  const complete = (): boolean => transactionIds.every((id) => (receipts.get(id)?.length ?? 0) >= perTransaction);
  if (!complete()) {
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      waiting = () => { if (complete()) resolve(); };
      timer = setTimeout(resolve, timeoutMs);
    });
    waiting = undefined;
    clearTimeout(timer);
  }
  const out: Record<string, number[]> = {};
  for (const id of transactionIds) {
    out[id] = receipts.get(id) ?? [];
    receipts.delete(id);
  }
  return { receipts: out, unexpectedCloses };
}

async function closeAll(): Promise<unknown> {
  closing = true;
  const sockets = [...subscribers, ...[...writers.values()].map((w) => w.ws)];
  await Promise.all(sockets.map((ws) => new Promise<void>((resolve) => {
    if (ws.readyState === ws.CLOSED) return resolve();
    // A server that does not answer the close frame must not hold the bench.
    const timer = setTimeout(() => { ws.terminate(); resolve(); }, 5000);
    ws.once('close', () => { clearTimeout(timer); resolve(); });
    ws.close();
  })));
  return { closed: sockets.length };
}

const OPS: Record<string, (req: Request) => unknown> = { subscribe, writers: connectWriters, write, receipts: collect, close: closeAll };

// The bench process gone (its IPC channel closed), nothing may hold this one up.
process.on('disconnect', () => {
  closing = true;
  for (const ws of [...subscribers, ...[...writers.values()].map((w) => w.ws)]) ws.terminate();
});

process.on('message', (req: Request) => {
  void (async () => {
    try {
      const op = OPS[req.op];
      if (!op) throw new Error(`unknown op ${JSON.stringify(req.op)}`);
      const result = await op(req);
      process.send!({ id: req.id, result });
      if (req.op === 'close') process.disconnect();
    } catch (err) {
      process.send!({ id: req.id, error: (err as Error).stack ?? String(err) });
    }
  })();
});

// Requests sent before this listener existed would be lost: the bench waits for this.
process.send!({ ready: true });
