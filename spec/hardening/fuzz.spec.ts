import { expect } from 'chai';
import { Random } from '../helpers/random.js';
import { TestSite } from '../helpers/changes.js';
import { ReplicaFixture, stateOf, type StateView } from '../helpers/replicas.js';
import { startCoordinatorProcess, cleanupCoordinatorProcesses, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { RawSocket, type Received } from '../helpers/raw-socket.js';
import { Replica } from '../../lib/replica/replica.js';
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import { validateChangeSets } from '../../lib/protocol/validate.js';
import { encodeHlc, hlcToWire } from '../../lib/protocol/hlc.js';

const SEED = 0x5eed_f022;
const WORKERS = 4;
/** Mutated frames per worker; unmutated ones come on top. */
const MUTATED_PER_WORKER = 2600;
const DB = 'fuzz:db';
const MAX_MESSAGE_BYTES = 128 * 1024;
/** Every frame is answered by one of these, after any snapshot chunks and pushes. */
const TERMINAL = ['handshake_ack', 'changes', 'apply_result', 'snapshot_complete', 'pong', 'error'];
/** Close codes a frame may end its socket with: invalid UTF-8, a malformed handshake flag, too big, and the fatal handshake codes. */
const DOCUMENTED_CLOSES = new Set([1007, 1008, 1009, 4001, 4002, 4003]);

/** Placeholder for a deeply nested value, replaced in the serialized text. */
const DEEP = '\u0001deep\u0001';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Every path to a node of `value` (the root is []). */
function nodePaths(value: Json, path: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(path);
  if (Array.isArray(value)) value.forEach((v, i) => nodePaths(v, [...path, i], out));
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) nodePaths(v, [...path, k], out);
  return out;
}

function getAt(root: Json, path: (string | number)[]): Json {
  let node = root;
  for (const p of path) node = (node as Record<string, Json>)[p as string]!;
  return node;
}

function setAt(root: Json, path: (string | number)[], value: Json): Json {
  if (path.length === 0) return value;
  (getAt(root, path.slice(0, -1)) as Record<string, Json>)[path.at(-1) as string] = value;
  return root;
}

/** Builds valid messages and mutates them, deterministically from a seed. */
class FrameFactory {
  readonly r: Random;
  private readonly sites: TestSite[];
  private n = 0;
  /** Text that replaces the DEEP placeholder once the message is serialized. */
  private deep?: string;

  constructor(seed: number) {
    this.r = new Random(seed);
    this.sites = [0, 1, 2].map(() => new TestSite(this.r.bytes(16), Date.now() - 50_000));
  }

  value(): Json {
    const r = this.r;
    switch (r.int(8)) {
      case 0: return null;
      case 1: return r.int(2000) - 1000;
      case 2: return r.next() * 1e6;
      case 3: return r.next() < 0.5;
      case 4: return { __bin: r.bytes(r.int(24)).toString('base64') };
      case 5: return { __bigint: r.pick(['9223372036854775807', '-9223372036854775808', '18446744073709551615']) };
      case 6: return r.pick(['', 'héllo', '日本語', '😀 emoji', '"quoted" \\ back', 'line\nbreak', '\u0000nul']);
      default: return `v${r.int(1_000_000)}`;
    }
  }

  changeSet(): Json {
    const r = this.r;
    const site = r.pick(this.sites);
    const drafts = Array.from({ length: 1 + r.int(4) }, () => {
      const pk: Json[] = r.next() < 0.7 ? [r.int(40)] : [r.int(10), `k${r.int(3)}`];
      const table = r.pick(['notes', 'tags', 'people']);
      if (r.next() < 0.25) return { table, pk, delete: true, ...(r.next() < 0.3 ? { priorRow: [pk[0]!, this.value()] } : {}) };
      return { table, pk, column: r.pick(['title', 'body', 'n']), value: this.value() };
    });
    const migrations = r.next() < 0.1
      ? [{ type: r.pick(['create_table', 'add_column', 'rename_table', 'add_index'] as const), table: r.pick(['notes', 'tags']), fromTable: 'old', schemaVersion: 1 + r.int(3) }]
      : [];
    const set = site.txn(drafts as never, migrations.map((m) => (m.type === 'rename_table' ? m : { ...m, fromTable: undefined })));
    for (const change of set.changes) {
      if (change.type === 'column' && r.next() < 0.15) Object.assign(change, { priorValue: this.value(), priorHlc: site.hlc(Date.now() - 80_000, 0, 0) });
    }
    return JSON.parse(JSON.stringify(set)) as Json;
  }

  handshake(siteId: string): Json {
    // clientPaging: this client reads one reply per frame, so it asks for one page per get_changes (docs/protocol.md §9).
    return { type: 'handshake', databaseId: DB, siteId, protocolVersion: 1, clientPaging: true, ...(this.r.next() < 0.2 ? { token: 'whatever' } : {}) };
  }

  base(siteId: string): Json {
    const r = this.r;
    const p = r.next();
    if (p < 0.55) {
      const changes = Array.from({ length: 1 + r.int(3) }, () => this.changeSet());
      return r.next() < 0.7 ? { type: 'apply_changes', requestId: `r${this.n++}`, changes } : { type: 'apply_changes', changes };
    }
    if (p < 0.7) return r.next() < 0.5 ? { type: 'get_changes' } : { type: 'get_changes', sinceHLC: r.pick(this.sites).hlc(Date.now() - 40_000 - r.int(20_000), 0, 0) };
    if (p < 0.8) return { type: 'ping' };
    if (p < 0.84) return this.handshake(siteId);
    if (p < 0.845) return { type: 'get_snapshot' };
    if (p < 0.87) {
      const site = r.pick(this.sites);
      return {
        type: 'resume_snapshot',
        checkpoint: {
          snapshotId: `s${r.int(100)}`, siteId: site.wire, hlc: site.hlc(Date.now() - 60_000, 0, 0), lastTableIndex: r.int(3) - 1, lastEntryIndex: r.int(3) - 1,
          completedTables: r.pick([[], ['main.notes'], ['main.notes', 'main.tags'], ['main.missing'], ['nodot']]), entriesProcessed: r.int(10), createdAt: Date.now(),
        },
      };
    }
    return { type: r.pick(['frobnicate', 'push_changes', 'apply_result', 'changes', 'error', 'pong', 'request_changes', '', 'PING']) };
  }

  /** Structural mutations on the parsed message. */
  private mutateValue(message: Json): Json {
    const r = this.r;
    const paths = nodePaths(message);
    const path = r.pick(paths);
    switch (r.int(8)) {
      case 0: { // missing key
        const objects = paths.filter((p) => { const v = getAt(message, p); return v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0; });
        if (objects.length === 0) return message;
        const obj = getAt(message, r.pick(objects)) as Record<string, Json>;
        delete obj[r.pick(Object.keys(obj))];
        return message;
      }
      case 1: // swapped type
        return setAt(message, path, r.pick<Json>([null, 0, -1, 1.5, 1e308, -1e308, '', 'x', true, false, [], {}, [null], { type: 'column' }, '💥'.repeat(10)]));
      case 2: { // junk change, migration or message type
        const typed = paths.filter((p) => p.at(-1) === 'type');
        if (typed.length === 0) return message;
        return setAt(message, r.pick(typed), r.pick<Json>(['update', 'COLUMN', 'delete ', '', 'column\u0000', 'create_tablex', 'drop', 'upsert', 7, null, ['column']]));
      }
      case 3: { // far-future, maximal or malformed HLC
        const hlcs = paths.filter((p) => ['hlc', 'priorHlc', 'sinceHLC'].includes(String(p.at(-1))));
        if (hlcs.length === 0) return message;
        const far = hlcToWire(encodeHlc({ wallTime: Date.now() + 3_600_000 + r.int(1e9), counter: 0, siteId: r.bytes(16), opSeq: 0 }));
        return setAt(message, r.pick(hlcs), r.pick<Json>(['/'.repeat(40), far, 'AAAA', `${far}==`, far.slice(0, 39), 'A'.repeat(40).replace(/A$/, '-')]));
      }
      case 4: { // deep nesting, spliced in as text (JSON.stringify itself would overflow the stack)
        const depth = r.pick([20, 33, 100, 5000]);
        const inner = JSON.stringify(getAt(message, path)) ?? 'null';
        this.deep = r.next() < 0.5 ? `${'['.repeat(depth)}${inner}${']'.repeat(depth)}` : `${'{"x":'.repeat(depth)}${inner}${'}'.repeat(depth)}`;
        return setAt(message, path, DEEP);
      }
      case 5: { // long string
        const strings = paths.filter((p) => typeof getAt(message, p) === 'string');
        if (strings.length === 0) return message;
        return setAt(message, r.pick(strings), 'x'.repeat(r.pick([1000, 60_000, 200_000])));
      }
      case 6: { // duplicated array element
        const arrays = paths.filter((p) => { const v = getAt(message, p); return Array.isArray(v) && v.length > 0; });
        if (arrays.length === 0) return message;
        const arr = getAt(message, r.pick(arrays)) as Json[];
        arr.splice(r.int(arr.length + 1), 0, JSON.parse(JSON.stringify(r.pick(arr))) as Json);
        return message;
      }
      default: { // a name where a value is expected and the reverse
        const named = paths.filter((p) => ['schema', 'table', 'column', 'databaseId', 'siteId', 'transactionId', 'requestId'].includes(String(p.at(-1))));
        if (named.length === 0) return message;
        return setAt(message, r.pick(named), r.pick<Json>([1, null, ['notes'], { name: 'notes' }, '', 'x'.repeat(600), '../../etc', 'a b']));
      }
    }
  }

  /** Byte-level mutations on the encoded frame. */
  private mutateBytes(bytes: Buffer): Buffer {
    const r = this.r;
    const at = (): number => r.int(bytes.length + 1);
    switch (r.int(7)) {
      case 0: { // byte flips
        const out = Buffer.from(bytes);
        for (let i = 0, n = 1 + r.int(4); i < n && out.length > 0; i++) out[r.int(out.length)] = r.int(256);
        return out;
      }
      case 1: // truncation
        return bytes.subarray(0, r.int(bytes.length));
      case 2: { // duplicated key, before (original wins) or after (duplicate wins) the original
        const text = bytes.toString('utf8');
        const dup = `"${r.pick(['type', 'changes', 'hlc', 'siteId', 'requestId', 'value', 'pk'])}":${r.pick(['"ping"', '5', 'null', '[]', '{"a":1}', '"AAAA"'])}`;
        const opens = [...text.matchAll(/\{/g)].map((m) => m.index!);
        const closes = [...text.matchAll(/\}/g)].map((m) => m.index!);
        if (opens.length === 0) return bytes;
        if (r.next() < 0.5) { const i = r.pick(opens) + 1; return Buffer.from(`${text.slice(0, i)}${dup},${text.slice(i)}`); }
        const i = r.pick(closes);
        return Buffer.from(`${text.slice(0, i)},${dup}${text.slice(i)}`);
      }
      case 3: { // invalid UTF-8
        const junk = Buffer.from(r.pick([[0xff], [0xc3, 0x28], [0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]));
        const i = at();
        return Buffer.concat([bytes.subarray(0, i), junk, bytes.subarray(i)]);
      }
      case 4: { // huge, tiny and odd numbers
        const text = bytes.toString('utf8');
        const numbers = [...text.matchAll(/(?<=[:[,])-?\d+(\.\d+)?/g)];
        if (numbers.length === 0) return bytes;
        const m = r.pick(numbers);
        const repl = r.pick(['1e999', '-1e999', '123456789012345678901234567890', '1e-400', '-0', '0.1e1', '9007199254740993', '4294967296']);
        return Buffer.from(text.slice(0, m.index) + repl + text.slice(m.index! + m[0].length));
      }
      case 5: // random bytes
        return r.bytes(r.int(200));
      default: // empty frame
        return Buffer.alloc(0);
    }
  }

  /** The next frame: bytes, whether it goes binary, and whether it was mutated. */
  frame(message: Json): { bytes: Buffer; binary: boolean; mutated: boolean } {
    const r = this.r;
    if (r.next() < 0.15) return { bytes: Buffer.from(JSON.stringify(message)), binary: false, mutated: false };
    let value = message;
    const structural = r.next() < 0.6;
    this.deep = undefined;
    if (structural) value = this.mutateValue(value);
    let text = JSON.stringify(value);
    if (this.deep !== undefined) text = text.replace(JSON.stringify(DEEP), () => this.deep!);
    let bytes: Buffer = Buffer.from(text);
    if (!structural || r.next() < 0.2) bytes = this.mutateBytes(bytes);
    return { bytes, binary: r.next() < 0.03, mutated: true };
  }
}

interface Tally {
  frames: number;
  mutated: number;
  accepted: Map<string, string[]>;
  replies: Map<string, number>;
  closes: Map<number, number>;
}

function count<K>(map: Map<K, number>, key: K): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/** One client sending its share of frames in order, each answered before the next. */
async function runWorker(proc: CoordinatorProcess, seed: number, tally: Tally): Promise<void> {
  const f = new FrameFactory(seed);
  const me = new TestSite(f.r.bytes(16));
  let socket!: RawSocket;
  let db = DB;
  // Whether the session pages on request: a fuzzed handshake that loses its
  // clientPaging flag gets server-driven paging, so one get_changes is
  // answered by every page up to the one with hasMore: false.
  let clientPaging = true;
  async function clean(): Promise<void> {
    const { socket: s, reply } = await RawSocket.handshake(proc.wsUrl, DB, me.wire, { clientPaging: true });
    expect(reply.type, JSON.stringify(reply)).to.equal('handshake_ack');
    socket = s;
    db = DB;
    clientPaging = true;
  }
  await clean();
  let mutated = 0;
  while (mutated < MUTATED_PER_WORKER) {
    // Now and then a fresh socket whose first frame, the handshake, is the one fuzzed.
    const fresh = f.r.next() < 0.04;
    if (fresh) {
      await socket.close();
      socket = await RawSocket.open(proc.wsUrl);
    }
    const frame = f.frame(fresh ? f.handshake(me.wire) : f.base(me.wire));
    if (frame.mutated) mutated++;
    tally.frames++;
    socket.send(frame.bytes, frame.binary);
    let reply: Received = await socket.until(TERMINAL);
    while (!clientPaging && reply.type === 'changes' && (reply as { hasMore?: unknown }).hasMore === true) reply = await socket.until(TERMINAL);
    if (reply.type === '#closed') {
      const code = (reply as { code: number }).code;
      count(tally.closes, code);
      expect(DOCUMENTED_CLOSES.has(code), `close ${code} after ${frame.bytes.toString('utf8').slice(0, 300)}`).to.equal(true);
      await clean();
      continue;
    }
    if (reply.type === 'error') {
      const err = reply as unknown as { code: string; fatal: boolean };
      count(tally.replies, err.code);
      if (err.fatal && err.code !== 'ALREADY_AUTHENTICATED') {
        const code = await socket.closed;
        count(tally.closes, code);
        expect(DOCUMENTED_CLOSES.has(code), `close ${code} after fatal ${err.code}`).to.equal(true);
        await clean();
      } else if (fresh) {
        // Still not authenticated: complete a clean handshake on the same socket.
        expect((await socket.request(f.handshake(me.wire), TERMINAL)).type).to.equal('handshake_ack');
        db = DB;
        clientPaging = true;
      }
      continue;
    }
    count(tally.replies, reply.type);
    if (reply.type === 'handshake_ack') {
      db = String((reply as { databaseId?: unknown }).databaseId);
      clientPaging = (JSON.parse(frame.bytes.toString('utf8')) as { clientPaging?: unknown }).clientPaging === true;
    }
    if (reply.type === 'apply_result') {
      const list = tally.accepted.get(db) ?? [];
      list.push(frame.bytes.toString('utf8'));
      tally.accepted.set(db, list);
    }
  }
  tally.mutated += mutated;
  await socket.close();
}

describe('hardening: fuzzed frames (against a coordinator process)', function () {
  this.timeout(240_000);
  const fixture = new ReplicaFixture();
  let proc: CoordinatorProcess | undefined;
  after(async () => {
    await fixture.cleanup();
    await cleanupCoordinatorProcesses();
  });

  it('answers every frame or closes with a documented code, never exits, and stores exactly what it acknowledged', async () => {
    proc = await startCoordinatorProcess({ router: { maxMessageBytes: MAX_MESSAGE_BYTES, messagesPerSecond: 0, messagesPerSecondPerIp: 0 } });
    const tally: Tally = { frames: 0, mutated: 0, accepted: new Map(), replies: new Map(), closes: new Map() };
    await Promise.all(Array.from({ length: WORKERS }, (_, w) => runWorker(proc!, SEED + w, tally)));
    expect(proc.alive(), 'the process is still running').to.equal(true);
    expect((await proc.get('/status')).status).to.equal(200);
    expect(await proc.stop(), 'graceful exit on SIGTERM').to.deep.equal({ code: 0, signal: null });

    if (process.env.FUZZ_TALLY) process.stderr.write(`${JSON.stringify({ frames: tally.frames, mutated: tally.mutated, accepted: [...tally.accepted].map(([k, v]) => [k, v.length]), replies: [...tally.replies], closes: [...tally.closes] })}\n`);
    expect(tally.mutated).to.be.at.least(10_000);
    // The fuzzer reached the interesting paths.
    expect(tally.accepted.get(DB)?.length ?? 0, 'frames that got apply_result').to.be.greaterThan(1000);
    for (const code of ['INVALID_CHANGESET', 'INVALID_HLC', 'CLOCK_DRIFT', 'MESSAGE_ERROR', 'INVALID_MESSAGE', 'UNKNOWN_MESSAGE', 'ALREADY_AUTHENTICATED']) {
      expect(tally.replies.get(code) ?? 0, `replies ${code}`).to.be.greaterThan(0);
    }
    expect(tally.closes.get(1007) ?? 0, 'closes 1007').to.be.greaterThan(0);
    expect(tally.closes.get(1009) ?? 0, 'closes 1009').to.be.greaterThan(0);

    // The store holds exactly the merge of the acknowledged frames: a replica
    // fed only those frames must read back the same, key by key.
    for (const [db, frames] of tally.accepted) {
      const { replica: expected } = await fixture.create();
      for (const text of frames) {
        const message = JSON.parse(text) as { changes: unknown };
        expect(message.changes, `a frame that got apply_result: ${text.slice(0, 300)}`).to.be.an('array');
        await expected.apply(validateChangeSets(message.changes, { now: Date.now() + 3_600_000 }));
      }
      const stored = await Replica.open(await openLevelStore(databaseDirectory(proc.dataDir, db)));
      let actual: StateView;
      try {
        actual = await stateOf(stored);
      } finally {
        await stored.close();
      }
      const wanted = await stateOf(expected);
      expect(Object.keys(actual.cells).length, `${db}: cells`).to.equal(Object.keys(wanted.cells).length);
      expect(actual, db).to.deep.equal(wanted);
    }
  });
});
