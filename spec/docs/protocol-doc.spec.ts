import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CloseCode, ERROR_DISPOSITIONS, ErrorCode } from '../../lib/errors.js';
import { DEFAULTS } from '../../lib/config/options.js';
import { CLIENT_BATCH_CHANGES } from '../../lib/delivery/backlog.js';
import { decodeHlc, encodeHlc, hlcFromWire, hlcToWire } from '../../lib/protocol/hlc.js';
import { MIGRATION_TYPES, type ChangeSet } from '../../lib/protocol/messages.js';
import { siteIdFromWire, siteIdToWire } from '../../lib/protocol/site-id.js';
import { validateChangeSets, validateCheckpoint, validateCursor } from '../../lib/protocol/validate.js';
import { validateSqlValue } from '../../lib/protocol/values.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { RawSocket } from '../helpers/raw-socket.js';
import { TestSite } from '../helpers/changes.js';
import { documentedRoutes, servedRoutes } from '../helpers/doc-routes.js';
import { SyncClient } from '../../lib/client/sync-client.js';

/**
 * Keeps docs/protocol.md and docs/client.md true: the HLC test vectors
 * decode, every example frame a client would send is accepted by a real
 * server, every server frame has the keys the server really sends, the
 * error and close code tables match lib/errors.ts, stated defaults match the
 * code, and the SyncClient example runs and prints what the doc says.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PROTOCOL = readFileSync(`${ROOT}docs/protocol.md`, 'utf8');
const CLIENT = readFileSync(`${ROOT}docs/client.md`, 'utf8');

const CLIENT_TYPES = new Set(['handshake', 'get_changes', 'apply_changes', 'get_snapshot', 'resume_snapshot', 'ping']);
const SERVER_TYPES = new Set(['handshake_ack', 'changes', 'push_changes', 'apply_result', 'snapshot_chunk', 'snapshot_complete', 'request_changes', 'error', 'pong']);
const CHUNK_TYPES = new Set(['header', 'schema-migration', 'table-start', 'column-versions', 'table-end', 'tombstone', 'footer']);
const MIGRATION_TYPE_SET: ReadonlySet<string> = new Set(MIGRATION_TYPES);
/** Far enough ahead that no HLC of the doc trips the drift check in local validation. */
const LATER = Date.now() + 10 * 365 * 24 * 3600 * 1000;

type Json = Record<string, unknown>;
type Kind = 'client' | 'server' | 'chunk' | 'changeSet' | 'change' | 'migration' | 'value' | 'envelope' | 'body';
interface Example { value: Json; line: number; kind: Kind }

interface Block { lang: string; text: string; line: number }

/** Fenced code blocks, also indented ones (inside list items), with their first line number. */
function fencedBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^( *)```(\w*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const indent = open[1]!;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && lines[j] !== `${indent}\`\`\``; j++) body.push(lines[j]!.startsWith(indent) ? lines[j]!.slice(indent.length) : lines[j]!);
    blocks.push({ lang: open[2]!, text: body.join('\n'), line: i + 1 });
    i = j;
  }
  return blocks;
}

function classify(value: unknown, line: number): Kind {
  expect(value, `line ${line}: an example is a JSON object`).to.be.an('object').and.not.be.an('array');
  const obj = value as Json;
  const type = obj.type;
  if (typeof type === 'string') {
    if (CLIENT_TYPES.has(type)) return 'client';
    if (SERVER_TYPES.has(type)) return 'server';
    if (CHUNK_TYPES.has(type)) return 'chunk';
    if (type === 'column' || type === 'delete') return 'change';
    if (MIGRATION_TYPE_SET.has(type)) return 'migration';
    expect.fail(`line ${line}: unknown example type ${type}`);
  }
  if ('transactionId' in obj) return 'changeSet';
  if ('__bin' in obj || '__bigint' in obj) return 'value';
  if ('ok' in obj) return 'envelope';
  if (Array.isArray(obj.changes)) return 'body';
  return expect.fail(`line ${line}: example of no known kind: ${JSON.stringify(obj).slice(0, 80)}`);
}

/** Every JSON example of a document: `json` blocks hold one value, `ndjson` blocks one per line. */
function examplesOf(markdown: string): Example[] {
  const out: Example[] = [];
  for (const block of fencedBlocks(markdown)) {
    if (block.lang === 'json') {
      let value: unknown;
      try {
        value = JSON.parse(block.text);
      } catch (err) {
        expect.fail(`line ${block.line}: not JSON: ${(err as Error).message}`);
      }
      out.push({ value: value as Json, line: block.line, kind: classify(value, block.line) });
    } else if (block.lang === 'ndjson') {
      block.text.split('\n').filter((l) => l.trim() !== '').forEach((text, i) => {
        const value = JSON.parse(text) as Json;
        out.push({ value, line: block.line + 1 + i, kind: classify(value, block.line + 1 + i) });
      });
    }
  }
  return out;
}

/** Validates change sets as the server does; returns their canonical wire form. */
function validSets(value: unknown, line: number): ChangeSet[] {
  try {
    return validateChangeSets(JSON.parse(JSON.stringify(value)), { now: LATER }).map((set) => set.wire);
  } catch (err) {
    return expect.fail(`line ${line}: ${(err as Error).message}`);
  }
}

/** Wraps a lone change or migration in a change set of its own HLC's site, for validation. */
function wrap(fact: Json, kind: 'change' | 'migration'): Json {
  const hlc = decodeHlc(hlcFromWire(fact.hlc));
  const siteId = siteIdToWire(hlc.siteId);
  return {
    siteId, transactionId: `${hlc.wallTime}:${hlc.counter}:${siteId}`, hlc: fact.hlc,
    changes: kind === 'change' ? [fact] : [], schemaMigrations: kind === 'migration' ? [fact] : [],
  };
}

/** Rows of the markdown table under the heading `heading` (until the next heading). */
function tableRows(markdown: string, heading: string): string[][] {
  const start = markdown.indexOf(`\n${heading}\n`);
  expect(start, `heading "${heading}"`).to.be.greaterThan(-1);
  const rest = markdown.slice(start + heading.length + 2);
  const section = rest.slice(0, rest.search(/\n#{1,4} /) === -1 ? undefined : rest.search(/\n#{1,4} /));
  return section.split('\n')
    .filter((l) => l.startsWith('|') && !/^\|[-| ]+\|$/.test(l))
    .map((l) => l.slice(1, -1).split('|').map((cell) => cell.trim()))
    .slice(1);
}

function keys(value: unknown): string {
  return Object.keys(value as Json).sort().join(',');
}

const examples = examplesOf(PROTOCOL);

describe('docs/protocol.md', () => {
  describe('§1 HLC test vectors', () => {
    const rows = PROTOCOL.split('\n')
      .map((l) => /^\| (\d+) \| (\d+) \| `([A-Za-z0-9_-]{22})` \| (\d+) \| `([0-9a-f]{60})` \| `([A-Za-z0-9+/]{40})` \|$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null);

    it('lists the vectors', () => {
      expect(rows.length).to.be.at.least(3);
    });

    it('decodes every wire form to the stated fields and bytes, and encodes them back', () => {
      for (const [, wall, counter, site, opSeq, hex, wire] of rows) {
        const bytes = hlcFromWire(wire);
        expect(bytes.toString('hex'), wire).to.equal(hex);
        const fields = decodeHlc(bytes);
        expect({ ...fields, siteId: siteIdToWire(fields.siteId) }, wire).to.deep.equal({
          wallTime: Number(wall), counter: Number(counter), siteId: site, opSeq: Number(opSeq),
        });
        expect(hlcToWire(encodeHlc({ wallTime: Number(wall), counter: Number(counter), siteId: siteIdFromWire(site!), opSeq: Number(opSeq) }))).to.equal(wire);
      }
    });
  });

  describe('§4 error codes', () => {
    const rows = tableRows(PROTOCOL, '### Errors');
    const documented = rows.map((r) => /^`([A-Z_]+)`$/.exec(r[0]!)?.[1]).filter((c): c is string => c !== undefined);

    it('lists every code of lib/errors.ts, and no other', () => {
      expect([...documented].sort()).to.deep.equal(Object.values(ErrorCode).sort());
      expect([...documented].sort()).to.deep.equal(Object.keys(ERROR_DISPOSITIONS).sort());
    });

    it('gives each code its HTTP status, fatality and close code', () => {
      // Handshake-only closes the session makes outside the disposition table (lib/ws/session.ts).
      const sessionCloses: Record<string, number> = { INVALID_MESSAGE: CloseCode.PolicyViolation };
      for (const [cell, status, fatal, close] of rows) {
        const code = cell!.slice(1, -1) as ErrorCode;
        const disposition = ERROR_DISPOSITIONS[code];
        expect(Number(status), `${code} status`).to.equal(disposition.status);
        expect(fatal!.startsWith(disposition.fatal ? 'yes' : 'no'), `${code} fatal`).to.equal(true);
        const allowed = [disposition.close, sessionCloses[code]].filter((c) => c !== undefined);
        const stated = (close!.match(/\b\d{4}\b/g) ?? []).map(Number);
        expect(stated, `${code} close code`).to.deep.equal(allowed);
      }
    });

    it('mentions no code that does not exist', () => {
      // Any upper-case word in backticks reads as an error code (LAGGING too).
      const mentioned = new Set([...PROTOCOL.matchAll(/`([A-Z][A-Z0-9_]{3,})`/g)].map((m) => m[1]!));
      expect(mentioned.size).to.be.at.least(10);
      const codes: Set<string> = new Set(Object.values(ErrorCode));
      expect([...mentioned].filter((code) => !codes.has(code))).to.deep.equal([]);
    });
  });

  describe('§4 close codes', () => {
    const rows = tableRows(PROTOCOL, '### Close codes').map((r) => Number(r[0]));

    it('lists every close code of lib/errors.ts, plus only those the ws library or the network produce', () => {
      for (const code of Object.values(CloseCode)) expect(rows, `close code ${code}`).to.include(code);
      const known: Set<number> = new Set([...Object.values(CloseCode), 1006, 1007]);
      expect(rows.filter((code) => !known.has(code))).to.deep.equal([]);
    });
  });

  describe('§7 HTTP routes', () => {
    it('lists every route the router serves, with its method, and no other', async () => {
      expect(documentedRoutes(PROTOCOL, 'method and route')).to.deep.equal([...await servedRoutes(), 'GET /ws'].sort());
    });
  });

  describe('stated defaults', () => {
    const MiB = 1024 * 1024;
    const claims: [RegExp, number][] = [
      [/`maxMessageBytes` \(default (\d+) MiB\)/g, DEFAULTS.maxMessageBytes / MiB],
      [/`batchSize` \(default (\d+)\)/g, DEFAULTS.batchSize],
      [/more than ([\d ]+) ms \(the `maxDriftMs` option\)/g, DEFAULTS.maxDriftMs],
      [/within (\d+) s \(`handshakeTimeoutMs`\)/g, DEFAULTS.handshakeTimeoutMs / 1000],
      [/\(`pushHighWaterBytes`, (\d+) MiB\)/g, DEFAULTS.pushHighWaterBytes / MiB],
      [/more than ([\d ]+) changes plus migrations in one message/g, DEFAULTS.maxChangesPerMessage],
      [/holding ([\d,]+) or\s+more changes plus migrations/g, CLIENT_BATCH_CHANGES],
    ];

    it('match the code', () => {
      for (const [pattern, value] of claims) {
        const found = [...PROTOCOL.matchAll(pattern)].map((m) => Number(m[1]!.replace(/[ ,]/g, '')));
        expect(found, String(pattern)).to.not.deep.equal([]);
        for (const n of found) expect(n, String(pattern)).to.equal(value);
      }
    });
  });

  describe('JSON examples, checked on their own', () => {
    it('are all of a known kind', () => {
      expect(examples.filter((e) => e.kind === 'client').length).to.be.at.least(6);
      expect(new Set(examples.filter((e) => e.kind === 'client').map((e) => e.value.type))).to.deep.equal(CLIENT_TYPES);
    });

    it('pass the server validation: change sets, changes, migrations, values, cursors, checkpoints', () => {
      for (const { value, line, kind } of examples) {
        if (kind === 'changeSet') validSets([value], line);
        else if (kind === 'change' || kind === 'migration') validSets([wrap(value, kind)], line);
        else if (kind === 'body') validSets(value.changes, line);
        else if (kind === 'value') expect(validateSqlValue(value, `line ${line}`)).to.deep.equal(value);
        else if (kind === 'client' && value.type === 'apply_changes') validSets(value.changes, line);
        else if (kind === 'client' && value.type === 'get_changes') validateCursor(value.sinceHLC);
        else if (kind === 'client' && value.type === 'resume_snapshot') validateCheckpoint(value.checkpoint);
      }
    });

    it('show server change sets exactly as the server writes them (canonical, keys in order)', () => {
      const sent = examples.flatMap(({ value, line, kind }) => {
        if (kind === 'server' && Array.isArray(value.changeSets)) return [{ sets: value.changeSets, line }];
        if (kind === 'envelope' && value.ok === true && Array.isArray((value.data as Json).changes)) return [{ sets: (value.data as Json).changes, line }];
        return [];
      });
      expect(sent.length).to.be.at.least(3);
      for (const { sets, line } of sent) expect(JSON.stringify(validSets(sets, line)), `line ${line}`).to.equal(JSON.stringify(sets));
    });

    it('give error frames and envelopes only existing codes', () => {
      const codes: Set<string> = new Set(Object.values(ErrorCode));
      for (const { value, line, kind } of examples) {
        if (kind === 'server' && value.type === 'error') expect(codes.has(value.code as string), `line ${line}`).to.equal(true);
        if (kind === 'envelope' && value.ok === false) expect(codes.has((value.error as Json).code as string), `line ${line}`).to.equal(true);
      }
    });
  });

  describe('against a real server', function () {
    let server: TestServer;
    const sockets: RawSocket[] = [];
    /** Every frame the server sent in this suite, by type (snapshot chunks by `chunk:<type>`). */
    const seen = new Map<string, Json[]>();
    const envelopes: Json[] = [];
    const handshake = examples.find((e) => e.kind === 'client' && e.value.type === 'handshake')!.value;
    const DB = handshake.databaseId as string;

    function record(frame: Json): void {
      const key = frame.type === 'snapshot_chunk' ? `chunk:${(frame.chunk as Json).type}` : String(frame.type);
      seen.set(key, [...(seen.get(key) ?? []), frame.type === 'snapshot_chunk' ? frame.chunk as Json : frame]);
    }

    async function open(): Promise<RawSocket> {
      const socket = await RawSocket.open(server.wsUrl, { onFrame: (text) => { record(JSON.parse(text) as Json); return false; } });
      sockets.push(socket);
      return socket;
    }

    /** A socket past its handshake, and the database's server site id. */
    async function session(siteId: string, databaseId = DB): Promise<{ socket: RawSocket; serverSiteId: string }> {
      const socket = await open();
      const ack = await socket.request({ type: 'handshake', databaseId, siteId, protocolVersion: 1, clientPaging: true }, ['handshake_ack', 'error']);
      expect(ack.type, JSON.stringify(ack)).to.equal('handshake_ack');
      return { socket, serverSiteId: (ack as Json).serverSiteId as string };
    }

    async function post(path: string, siteId: string | undefined, body: unknown): Promise<{ status: number; json: Json }> {
      const res = await fetch(`${server.baseUrl}/${path}`, {
        method: body === undefined ? 'GET' : 'POST',
        headers: { 'content-type': 'application/json', ...(siteId ? { 'x-site-id': siteId } : {}) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const json = await res.json() as Json;
      envelopes.push(json);
      return { status: res.status, json };
    }

    async function drainSnapshot(socket: RawSocket): Promise<Json[]> {
      const chunks: Json[] = [];
      for (;;) {
        const frame = await socket.next() as Json;
        if (frame.type === 'snapshot_complete') return chunks;
        expect(frame.type, JSON.stringify(frame)).to.equal('snapshot_chunk');
        chunks.push(frame.chunk as Json);
      }
    }

    before(async () => {
      // The doc's stamps come from a server whose clock may be ahead of this
      // machine's: run the server's clock past every HLC of the doc, so a
      // checkpoint of the doc is not "later than anything issued".
      const walls = [...PROTOCOL.matchAll(/"([A-Za-z0-9+/]{40})"/g)].map((m) => decodeHlc(hlcFromWire(m[1])).wallTime);
      const offset = Math.max(0, Math.max(...walls) + 1000 - Date.now());
      server = await startTestServer({ now: () => Date.now() + offset });
      // A live subscriber, so that the applies below produce real pushes.
      const { socket: observer } = await session(new TestSite().wire);
      await observer.request({ type: 'get_changes' }, ['changes']);
    });

    after(async () => {
      await Promise.all(sockets.splice(0).map((s) => s.close()));
      await server.close();
    });

    it('applies every apply_changes frame and HTTP body of the doc', async () => {
      for (const { value, line, kind } of examples) {
        if (kind === 'client' && value.type === 'apply_changes') {
          const { socket: writer } = await session(((value.changes as Json[])[0]!.siteId) as string);
          const reply = await writer.request(value, ['apply_result', 'error']) as Json;
          expect(reply.type, `line ${line}: ${JSON.stringify(reply)}`).to.equal('apply_result');
          expect(reply.requestId, `line ${line}: requestId echoed`).to.equal(value.requestId);
          if (value.requestId === undefined) expect(reply, `line ${line}`).to.not.have.property('requestId');
        } else if (kind === 'body') {
          const { status, json } = await post(`${DB}/changes`, (value.changes as Json[])[0]!.siteId as string, value);
          expect(status, `line ${line}: ${JSON.stringify(json)}`).to.equal(200);
          expect(json.ok).to.equal(true);
        }
      }
    });

    it('accepts every other client frame of the doc as it stands', async () => {
      for (const { value, line, kind } of examples) {
        if (kind !== 'client' || value.type === 'apply_changes') continue;
        const label = `line ${line}`;
        if (value.type === 'handshake') {
          const socket = await open();
          const reply = await socket.request(value, ['handshake_ack', 'error']);
          expect(reply.type, `${label}: ${JSON.stringify(reply)}`).to.equal('handshake_ack');
          continue;
        }
        const { socket, serverSiteId } = await session(new TestSite().wire);
        let frame = value;
        if (value.type === 'resume_snapshot') {
          // The doc's checkpoint names the doc's server; this server has its own site id (see the next test).
          frame = { ...value, checkpoint: { ...(value.checkpoint as Json), siteId: serverSiteId } };
        }
        socket.send(JSON.stringify(frame));
        const reply = await socket.next() as Json;
        expect(reply.type, `${label}: ${JSON.stringify(reply)}`).to.not.equal('error');
        const expected: Record<string, string> = {
          get_changes: 'changes', get_snapshot: 'snapshot_chunk', resume_snapshot: 'snapshot_chunk', ping: 'pong',
        };
        expect(reply.type, label).to.equal(expected[value.type as string]);
        if (reply.type === 'snapshot_chunk') {
          expect((reply.chunk as Json).type).to.equal('header');
          await drainSnapshot(socket);
        }
      }
    });

    it('says what this server does with a checkpoint holding the client\'s own site id', async () => {
      const site = new TestSite();
      const { socket } = await session(site.wire);
      socket.send(JSON.stringify({ type: 'get_snapshot' }));
      const header = (await drainSnapshot(socket))[0]!;
      const reply = await socket.request({
        type: 'resume_snapshot',
        checkpoint: { snapshotId: header.snapshotId, siteId: site.wire, hlc: header.hlc, lastTableIndex: 0, lastEntryIndex: 0, completedTables: [], entriesProcessed: 0, createdAt: 1 },
      }, ['snapshot_chunk', 'error']) as Json;
      if (reply.type === 'snapshot_chunk') await drainSnapshot(socket);
      const refused = reply.type === 'error' && reply.code === 'INVALID_CHECKPOINT';
      expect(PROTOCOL.includes('This version refuses a checkpoint whose `siteId`'), 'the §6 note matches the server').to.equal(refused);
    });

    it('says what this server does with an ambiguous dotted completedTables entry', async () => {
      const site = new TestSite();
      const { socket, serverSiteId } = await session(site.wire, 'docs.dotted');
      const applied = await socket.request({
        type: 'apply_changes',
        changes: [site.txn([{ schema: 'main.x', table: 'y', pk: [1] }, { schema: 'main', table: 'x.y', pk: [1] }])],
      }, ['apply_result', 'error']);
      expect(applied.type).to.equal('apply_result');
      socket.send(JSON.stringify({ type: 'get_snapshot' }));
      const header = (await drainSnapshot(socket))[0]!;
      socket.send(JSON.stringify({
        type: 'resume_snapshot',
        checkpoint: { snapshotId: header.snapshotId, siteId: serverSiteId, hlc: header.hlc, lastTableIndex: 0, lastEntryIndex: 0, completedTables: ['main.x.y'], entriesProcessed: 0, createdAt: 1 },
      }));
      expect(((await socket.next()) as Json).type).to.equal('snapshot_chunk');
      const streamed = (await drainSnapshot(socket)).filter((c) => c.type === 'table-start').length;
      expect(PROTOCOL.includes('This version skips\n  every table such an entry could name'), 'the §6 note matches the server').to.equal(streamed === 0);
    });

    it('shows every server frame and snapshot chunk with keys the server really sends', async () => {
      // Produce the frames the flows above did not: a backlog pull, an error, HTTP envelopes.
      const site = new TestSite();
      const { socket } = await session(site.wire);
      const batch = Array.from({ length: CLIENT_BATCH_CHANGES / 10 }, (_, i) => site.txn(Array.from({ length: 10 }, (_, j) => ({ pk: [10_000 + i], column: `c${j}`, value: j }))));
      expect((await socket.request({ type: 'apply_changes', requestId: 'pull', changes: batch }, ['request_changes', 'error'])).type).to.equal('request_changes');
      expect((await socket.request({ type: 'nope' }, ['error'])).type).to.equal('error');
      await post(`${DB}/changes`, undefined, undefined);
      await post(`${DB}/changes`, site.wire, undefined);

      for (const { value, line, kind } of examples) {
        let candidates: Json[] | undefined;
        let shown = value;
        if (kind === 'server' && value.type === 'snapshot_chunk') {
          shown = value.chunk as Json;
          candidates = seen.get(`chunk:${shown.type}`);
        } else if (kind === 'server') {
          candidates = seen.get(value.type as string);
        } else if (kind === 'chunk') {
          candidates = seen.get(`chunk:${value.type}`);
        } else if (kind === 'envelope') {
          const inner = value.ok === true ? 'data' : 'error';
          candidates = envelopes.filter((e) => e.ok === value.ok && keys(e[inner]) === keys(value[inner]));
        } else {
          continue;
        }
        expect(candidates, `line ${line}: the server never sent a ${kind} like it`).to.not.equal(undefined);
        const nested = (frame: Json): string => {
          const entries = frame.entries as Json[] | undefined;
          return `${keys(frame)}${entries?.length ? `/${keys(entries[0])}` : ''}`;
        };
        expect(candidates!.map(nested), `line ${line}: keys of ${JSON.stringify(shown).slice(0, 60)}`).to.include(nested(shown));
      }
    });
  });
});

describe('docs/client.md', () => {
  const EXAMPLE = 'examples/sync-client.ts';
  const source = readFileSync(`${ROOT}${EXAMPLE}`, 'utf8');

  it('documents every public method, option and event of SyncClient', () => {
    const code = readFileSync(`${ROOT}lib/client/sync-client.ts`, 'utf8');
    const hidden = new Set([...code.matchAll(/^\s+private (?:async )?(\w+)\(/gm)].map((m) => m[1]!));
    const methods = [...Object.getOwnPropertyNames(SyncClient.prototype), ...['connect', 'open']].filter((name) => name !== 'constructor' && !hidden.has(name));
    expect(methods.filter((name) => !CLIENT.includes(`\`${name}(`) && !CLIENT.includes(`.${name}(`)), 'methods not in docs/client.md').to.deep.equal([]);
    const body = code.slice(code.indexOf('export interface SyncClientOptions'), code.indexOf('\n}\n', code.indexOf('export interface SyncClientOptions')));
    const options = [...body.matchAll(/^  (\w+)\??: /gm)].map((m) => m[1]!);
    expect(options).to.include('url');
    expect(options.filter((name) => !new RegExp(`^\\| \`${name}\` \\|`, 'm').test(CLIENT)), 'options not in the table').to.deep.equal([]);
    const events = [...new Set([...code.matchAll(/this\.emit\('(\w+)'/g)].map((m) => m[1]!))];
    expect(events.filter((name) => !new RegExp(`^\\| \`'${name}'\` \\|`, 'm').test(CLIENT)), 'events not in the table').to.deep.equal([]);
  });

  it(`shows ${EXAMPLE} in full (importing the package instead of ../lib)`, () => {
    const shown = fencedBlocks(CLIENT).filter((b) => b.lang === 'ts').map((b) => `${b.text}\n`);
    expect(shown).to.include(source.replace("from '../lib/index.js';", "from '@quereus/sync-coordinator';"));
  });

  it('runs the example, which prints what the doc says', async () => {
    const env = { ...process.env };
    delete env.SYNC_URL;
    const child = spawn(process.execPath, ['--import', 'tsx', EXAMPLE], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => { out += text; });
    child.stderr.setEncoding('utf8').on('data', (text: string) => { err += text; });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code, err).to.equal(0);
    const stated = fencedBlocks(CLIENT).find((b) => b.lang === 'text')!.text.split('\n');
    const printed = out.trimEnd().split('\n');
    expect(printed).to.have.length(stated.length);
    stated.forEach((line, i) => {
      const pattern = new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/<stamp>/g, '[A-Za-z0-9+/]{40}')}$`);
      expect(printed[i]).to.match(pattern);
    });
  });
});
