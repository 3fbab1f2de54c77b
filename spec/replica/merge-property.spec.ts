import { expect } from 'chai';
import { Random } from '../helpers/random.js';
import { TestSite, valid } from '../helpers/changes.js';
import { ReplicaFixture, stateOf, type StateView } from '../helpers/replicas.js';
import { hlcFromWire, hlcToWire, compareHlc } from '../../lib/protocol/hlc.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import type { Replica } from '../../lib/replica/replica.js';

const HISTORIES = 200;
const TABLES = ['notes', 'tags'];
const COLUMNS = ['title', 'body', 'n'];
const PKS: unknown[][] = [[1], [2], ['k'], [1, 'a']];

/**
 * The reference model of docs/protocol.md §3, written as directly as possible:
 * gather every fact ever sent, then per slot take the maximum HLC, with the
 * tombstone rule deciding which column writes count.
 */
function model(history: ChangeSet[], allowResurrection: boolean): StateView {
  const tomb = new Map<string, string>();
  const writes = new Map<string, { row: string; hlc: string; value: unknown }[]>();
  const migrations = new Map<string, string>();
  const greater = (a: string, b: string) => compareHlc(hlcFromWire(a), hlcFromWire(b)) > 0;
  for (const set of history) {
    for (const c of set.changes) {
      const row = `${c.schema}|${c.table}|${JSON.stringify(c.pk)}`;
      if (c.type === 'delete') {
        const t = tomb.get(row);
        if (!t || greater(c.hlc, t)) tomb.set(row, c.hlc);
      } else {
        const cell = `${row}|${c.column}`;
        const list = writes.get(cell) ?? [];
        list.push({ row, hlc: c.hlc, value: c.value });
        writes.set(cell, list);
      }
    }
    for (const m of set.schemaMigrations) {
      const key = `${m.schema}|${m.type.endsWith('_index') ? 'index' : 'table'}|${m.table}|${m.schemaVersion}`;
      const cur = migrations.get(key);
      if (!cur || greater(m.hlc, cur)) migrations.set(key, m.hlc);
    }
  }
  const cells: StateView['cells'] = {};
  for (const [cell, list] of writes) {
    let best: { hlc: string; value: unknown } | undefined;
    for (const w of list) {
      const t = tomb.get(w.row);
      if (t && (!allowResurrection || !greater(w.hlc, t))) continue;
      if (!best || greater(w.hlc, best.hlc)) best = w;
    }
    if (best) cells[cell] = { hlc: best.hlc, value: best.value };
  }
  return { cells, tombstones: Object.fromEntries(tomb), migrations: Object.fromEntries(migrations) };
}

/** A random history: 3-4 sites, overlapping clocks, updates, deletes, migrations, re-sends. */
function randomHistory(rng: Random): ChangeSet[] {
  const sites = Array.from({ length: 3 + rng.int(2) }, () => new TestSite(rng.bytes(16)));
  const base = Date.now() - 100_000;
  const history: ChangeSet[] = [];
  const count = 5 + rng.int(30);
  for (let i = 0; i < count; i++) {
    const site = rng.pick(sites);
    // Few distinct wall times so that counters and site ids break ties.
    const at = { wall: base + rng.int(8), counter: rng.int(3) };
    const drafts = Array.from({ length: 1 + rng.int(4) }, () => {
      const pk = rng.pick(PKS) as never[];
      const table = rng.pick(TABLES);
      if (rng.next() < 0.15) return { table, pk, delete: true, ...(rng.next() < 0.5 ? { priorRow: [1, 'old', null] } : {}) };
      const value = rng.pick<unknown>([null, rng.int(1000), `v${rng.int(100)}`, { __bin: rng.bytes(rng.int(5)).toString('base64') }, { __bigint: '9007199254740993' }, '', 'ü✓']);
      return { table, pk, column: rng.pick(COLUMNS), value: value as never };
    });
    const migrations = rng.next() < 0.15
      ? [{ type: rng.pick(['create_table', 'add_column', 'add_index'] as const), table: rng.pick(TABLES), schemaVersion: 1 + rng.int(2), ddl: `ddl ${rng.int(100)}` }]
      : [];
    const set = site.txn(drafts, migrations, at);
    // Some writes carry the value they replaced (docs/protocol.md §2).
    for (const c of set.changes) {
      if (c.type === 'column' && rng.next() < 0.2) Object.assign(c, { priorValue: rng.pick<unknown>([null, 7, 'was "quoted"', '\u2028']), priorHlc: set.hlc });
    }
    // A (wall, counter, site) must not be reused with different content.
    if (history.some((h) => h.transactionId === set.transactionId)) continue;
    history.push(set);
    if (rng.next() < 0.1) history.push(JSON.parse(JSON.stringify(set)));
  }
  return history;
}

async function applyAll(replica: Replica, messages: ChangeSet[][]): Promise<void> {
  for (const message of messages) await replica.apply(valid(message));
}

/** The change log read from the start must describe exactly the live state. */
async function logState(replica: Replica): Promise<StateView> {
  const state: StateView = { cells: {}, tombstones: {}, migrations: {} };
  let cursor: Buffer | undefined;
  for (;;) {
    const page = await replica.changesSince(cursor, undefined, 7);
    for (const set of page.changeSets) {
      cursor = hlcFromWire(set.hlc);
      for (const c of set.changes) {
        const row = `${c.schema}|${c.table}|${JSON.stringify(c.pk)}`;
        if (c.type === 'delete') {
          expect(state.tombstones, 'tombstone twice in the log').not.to.have.property(row);
          state.tombstones[row] = c.hlc;
        } else {
          const cell = `${row}|${c.column}`;
          expect(state.cells, 'cell twice in the log').not.to.have.property(cell);
          state.cells[cell] = { hlc: c.hlc, value: c.value };
        }
      }
      for (const m of set.schemaMigrations) {
        state.migrations[`${m.schema}|${m.type.endsWith('_index') ? 'index' : 'table'}|${m.table}|${m.schemaVersion}`] = m.hlc;
      }
    }
    if (!page.hasMore) break;
  }
  return state;
}

describe('merge (property)', function () {
  this.timeout(300_000);
  const fixture = new ReplicaFixture();
  afterEach(() => fixture.cleanup());

  it(`converges to the reference model for ${HISTORIES} random histories in any order and batching`, async () => {
    const rng = new Random(20261125);
    const totals = { cells: 0, tombstones: 0, migrations: 0 };
    for (let h = 0; h < HISTORIES; h++) {
      const history = randomHistory(rng);
      const allowResurrection = h % 4 === 3;
      const expected = model(history, allowResurrection);
      totals.cells += Object.keys(expected.cells).length;
      totals.tombstones += Object.keys(expected.tombstones).length;
      totals.migrations += Object.keys(expected.migrations).length;
      const byHlc = [...history].sort((a, b) => compareHlc(hlcFromWire(a.hlc), hlcFromWire(b.hlc)));
      const shuffled = rng.shuffle([...history]);
      const inner = rng.shuffle(history.map((s) => ({ ...s, changes: rng.shuffle([...s.changes]), schemaMigrations: rng.shuffle([...s.schemaMigrations]) })));
      const orders: [string, ChangeSet[][]][] = [
        ['HLC order, one per message', byHlc.map((s) => [s])],
        ['shuffled, one per message', shuffled.map((s) => [s])],
        ['shuffled inside and out, random batches', rng.split(inner, 6)],
      ];
      // Group commit: messages queued together must each get the outcome they get alone.
      {
        const messages = orders[2]![1];
        const { replica: alone } = await fixture.create({ allowResurrection });
        const sequential = [];
        for (const message of messages) sequential.push(await alone.apply(valid(message)));
        const { replica: grouped } = await fixture.create({ allowResurrection });
        const concurrent = await Promise.all(messages.map((message) => grouped.apply(valid(message))));
        const counts = (o: { applied: number; skipped: number; conflicts: number; accepted: unknown[] }[]) => o.map((x) => [x.applied, x.skipped, x.conflicts, x.accepted]);
        expect(counts(concurrent), `group commit counts of history ${h}`).to.deep.equal(counts(sequential));
        // What a push sends is joined from these texts: each must be the change set as JSON.stringify writes it.
        for (const o of [...sequential, ...concurrent]) {
          expect(o.acceptedJson, `change set texts of history ${h}`).to.deep.equal(o.accepted.map((set, i) => JSON.stringify({ ...set, hlc: hlcToWire(o.stamps[i]!) })));
        }
        expect(await stateOf(grouped), `group commit state of history ${h}`).to.deep.equal(expected);
        expect(await logState(grouped), `group commit log of history ${h}`).to.deep.equal(expected);
      }
      for (const [label, messages] of orders) {
        const { replica } = await fixture.create({ allowResurrection });
        await applyAll(replica, messages);
        const state = await stateOf(replica);
        expect(state, `history ${h} (${label})`).to.deep.equal(expected);
        expect(await logState(replica), `log of history ${h} (${label})`).to.deep.equal(expected);
        // Re-applying anything is a no-op, in any batching.
        const again = await replica.apply(valid(rng.shuffle([...history])));
        expect(again.applied, `re-apply of history ${h} applied something`).to.equal(0);
        expect(again.stamps).to.have.length(0);
        expect(await stateOf(replica)).to.deep.equal(expected);
      }
      await fixture.cleanup();
    }
    // The histories must exercise every rule, or the comparison proves little.
    expect(totals.cells).to.be.greaterThan(HISTORIES * 5);
    expect(totals.tombstones).to.be.greaterThan(HISTORIES);
    expect(totals.migrations).to.be.greaterThan(HISTORIES / 4);
  });
});
