import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { startTestServer, type TestServer } from '../helpers/server.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/reference-transcript.jsonl', import.meta.url));
interface Line { seq: number; conn: string; dir: string; step: string; msg: Record<string, unknown> }
const transcript: Line[] = readFileSync(FIXTURE, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const RECORDED_AT = 1795619935600;

// Where docs/protocol.md asks for better than the reference did, the code differs
// by design (its validation errors were opaque APPLY_CHANGES_ERROR texts).
const SAME_CODE = new Set(['NOT_AUTHENTICATED', 'ALREADY_AUTHENTICATED', 'PROTOCOL_VERSION_MISMATCH', 'MISSING_DATABASE_ID', 'AUTH_FAILED', 'UNKNOWN_MESSAGE', 'MESSAGE_ERROR', 'INVALID_DATABASE_ID', 'INVALID_BODY']);
// Fields we add on purpose: hasMore on every page, the package version in /status.
const EXTRA_KEYS = new Set(['hasMore', 'version']);

/** Compares the shape (keys and JSON types, recursively) of our value with the reference's. */
function sameShape(ours: unknown, theirs: unknown, path: string): void {
  const kind = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);
  expect(kind(ours), `${path}: type`).to.equal(kind(theirs));
  if (Array.isArray(ours) && Array.isArray(theirs)) {
    if (ours.length > 0 && theirs.length > 0) sameShape(ours[0], theirs[0], `${path}[0]`);
  } else if (kind(ours) === 'object') {
    const a = ours as Record<string, unknown>;
    const b = theirs as Record<string, unknown>;
    const missing = Object.keys(b).filter((k) => !(k in a));
    const extra = Object.keys(a).filter((k) => !(k in b) && !EXTRA_KEYS.has(k));
    expect(missing, `${path}: keys the reference sent`).to.deep.equal([]);
    expect(extra, `${path}: keys the reference did not send`).to.deep.equal([]);
    for (const k of Object.keys(b)) sameShape(a[k], b[k], `${path}.${k}`);
  }
}

describe('reference transcript', function () {
  this.timeout(60_000);
  let server: TestServer;
  const started = Date.now();
  before(async () => { server = await startTestServer({ now: () => RECORDED_AT + (Date.now() - started) }); });
  after(() => server.close());

  it('replays every client message and answers with the reference shapes', async () => {
    const sockets = new Map<string, { ws: WebSocket; inbox: unknown[]; waiters: ((m: unknown) => void)[]; closed: Promise<number> }>();
    const take = (conn: string): Promise<unknown> => {
      const s = sockets.get(conn)!;
      if (s.inbox.length > 0) return Promise.resolve(s.inbox.shift());
      return new Promise((resolve) => s.waiters.push(resolve));
    };
    let compared = 0;
    for (const line of transcript) {
      if (line.dir === 'open') {
        const ws = new WebSocket(server.wsUrl);
        const entry = { ws, inbox: [] as unknown[], waiters: [] as ((m: unknown) => void)[], closed: new Promise<number>((resolve) => ws.once('close', resolve)) };
        ws.on('message', (data) => {
          const message = JSON.parse(data.toString());
          const waiter = entry.waiters.shift();
          if (waiter) waiter(message);
          else entry.inbox.push(message);
        });
        await new Promise((resolve) => ws.once('open', resolve));
        sockets.set(line.conn, entry);
      } else if (line.dir === 'c2s') {
        const raw = 'raw' in line.msg ? String(line.msg.raw) : JSON.stringify(line.msg);
        sockets.get(line.conn)!.ws.send(raw);
      } else if (line.dir === 's2c') {
        const ours = await take(line.conn) as Record<string, unknown>;
        expect(ours.type, `seq ${line.seq} (${line.step})`).to.equal(line.msg.type);
        if (line.msg.type === 'error') {
          if (SAME_CODE.has(String(line.msg.code))) expect(ours.code, `seq ${line.seq}`).to.equal(line.msg.code);
          expect(ours.fatal, `seq ${line.seq}`).to.equal(line.msg.fatal);
        }
        sameShape(ours, line.msg, `seq ${line.seq} ${line.step}`);
        compared++;
      } else if (line.dir === 'close' && line.msg.code !== 1005) {
        expect(await sockets.get(line.conn)!.closed, `seq ${line.seq} close code`).to.equal(line.msg.code);
      } else if (line.dir === 'http') {
        const req = line.msg.request as { method: string; url: string; headers: Record<string, string>; body?: unknown };
        const expected = line.msg.response as { status: number; contentType: string; body: unknown };
        const url = new URL(req.url);
        const res = await fetch(`${server.baseUrl}${url.pathname.replace(/^\/sync/, '')}${url.search}`, {
          method: req.method,
          headers: { ...req.headers, ...(req.body ? { 'content-type': 'application/json' } : {}) },
          body: req.body ? JSON.stringify(req.body) : undefined,
        });
        expect(res.status, `${line.step} status`).to.equal(expected.status);
        expect(res.headers.get('content-type'), `${line.step} content type`).to.equal(expected.contentType);
        if (expected.contentType.includes('ndjson')) {
          const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l));
          expect(lines.map((l) => l.type)).to.deep.equal((expected.body as { type: string }[]).map((l) => l.type));
          lines.forEach((l, i) => sameShape(l, (expected.body as unknown[])[i], `${line.step}[${i}]`));
        } else {
          const body = await res.json() as Record<string, unknown>;
          if (expected.status >= 400) expect((body.error as { code: string }).code).to.equal((expected.body as { error: { code: string } }).error.code);
          sameShape(body, expected.body, line.step);
        }
        compared++;
      }
    }
    for (const s of sockets.values()) s.ws.close();
    await Promise.all([...sockets.values()].map((s) => s.closed));
    expect(compared).to.be.greaterThan(40);
  });
});
