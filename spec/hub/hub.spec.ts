import { expect } from 'chai';
import { Registry } from 'prom-client';
import { COALESCED_PUSH_CHANGES, Hub, type Subscriber } from '../../lib/hub/hub.js';
import { createMetrics } from '../../lib/metrics/metrics.js';
import type { CommittedSets, Push } from '../../lib/delivery/push.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import { encodeHlc, hlcToWire } from '../../lib/protocol/hlc.js';

const SERVER = Buffer.alloc(16, 9);
let clock = 1_700_000_000_000;
/** One change set of `changes` column changes, its stamp and its text, as a commit gives them to the hub. */
function commit(site: string, changes: number): CommittedSets & { accepted: ChangeSet[]; stamps: Buffer[] } {
  const stamp = encodeHlc({ wallTime: clock++, counter: 0, siteId: SERVER, opSeq: 0 });
  const set: ChangeSet = {
    siteId: site, transactionId: `t${clock}`, hlc: hlcToWire(stamp),
    changes: Array.from({ length: changes }, (_, i) => ({ type: 'column', schema: 'main', table: 't', pk: [i], column: 'c', value: i, hlc: hlcToWire(stamp) })),
    schemaMigrations: [],
  } as unknown as ChangeSet;
  return { accepted: [set], stamps: [stamp], acceptedJson: [JSON.stringify({ ...set, hlc: hlcToWire(stamp) })] };
}

class Recorder implements Subscriber {
  readonly pushes: Push[] = [];
  constructor(readonly databaseId: string, readonly siteId: string) {}
  offer(push: Push): boolean { this.pushes.push(push); return true; }
  /** The stamps of every change set received, in the order received. */
  get stamps(): string[] { return this.pushes.flatMap((p) => p.stamps.map((s) => s.toString('hex'))); }
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('Hub', () => {
  let hub: Hub;
  beforeEach(() => { hub = new Hub(createMetrics(new Registry())); });

  describe('#publishSoon', () => {
    it('joins consecutive commits of one site in one turn into ONE push per subscriber, in stamp order, sent after the turn', async () => {
      const reader = new Recorder('db', 'reader');
      const writer = new Recorder('db', 'writer');
      hub.join(reader);
      hub.join(writer);
      const commits = Array.from({ length: 16 }, () => commit('writer', 50));
      for (const c of commits) hub.publishSoon('db', 'writer', c);
      expect(reader.pushes, 'nothing before the turn ends').to.have.length(0);
      await nextTurn();
      expect(reader.pushes).to.have.length(1);
      expect(reader.stamps).to.deep.equal(commits.flatMap((c) => c.stamps.map((s) => s.toString('hex'))));
      const frame = JSON.parse(reader.pushes[0]!.frame()) as { type: string; changeSets: ChangeSet[] };
      expect(frame.type).to.equal('push_changes');
      expect(frame.changeSets.map((s) => s.hlc)).to.deep.equal(commits.map((c) => hlcToWire(c.stamps[0]!)));
      expect(writer.pushes, 'never back to the writing site').to.have.length(0);
    });

    it('joins the commits\' texts into exactly the frame JSON.stringify writes, and frameAfter into the change sets after the position', async () => {
      const commits = Array.from({ length: 4 }, () => commit('writer', 3));
      const reader = new Recorder('db', 'reader');
      hub.join(reader);
      for (const c of commits) hub.publishSoon('db', 'writer', c);
      await nextTurn();
      expect(reader.pushes).to.have.length(1);
      const stamped = commits.flatMap((c) => c.accepted.map((set, i) => ({ ...set, hlc: hlcToWire(c.stamps[i]!) })));
      expect(reader.pushes[0]!.frame()).to.equal(JSON.stringify({ type: 'push_changes', changeSets: stamped }));
      const after = reader.pushes[0]!.frameAfter(commits[1]!.stamps[0]!);
      expect(after).to.equal(JSON.stringify({ type: 'push_changes', changeSets: stamped.slice(2) }));
      const parsed = JSON.parse(after!) as { changeSets: ChangeSet[] };
      expect(parsed.changeSets.map((s) => s.hlc), 'the change sets after the position').to.deep.equal(commits.slice(2).map((c) => hlcToWire(c.stamps[0]!)));
    });

    it(`never puts more than ${COALESCED_PUSH_CHANGES} changes in a joined push, and keeps every change set once`, async () => {
      const reader = new Recorder('db', 'reader');
      hub.join(reader);
      const commits = Array.from({ length: 7 }, () => commit('writer', 400));
      for (const c of commits) hub.publishSoon('db', 'writer', c);
      await nextTurn();
      const sizes = reader.pushes.map((p) => (JSON.parse(p.frame()) as { changeSets: ChangeSet[] }).changeSets.reduce((n, s) => n + s.changes.length, 0));
      expect(sizes).to.deep.equal([800, 800, 800, 400]);
      expect(reader.stamps).to.deep.equal(commits.flatMap((c) => c.stamps.map((s) => s.toString('hex'))));
    });

    it('keeps commits of different sites in separate pushes, in commit order, so no site gets its own changes back', async () => {
      const a = new Recorder('db', 'a');
      const b = new Recorder('db', 'b');
      const c = new Recorder('db', 'c');
      for (const s of [a, b, c]) hub.join(s);
      const fromA1 = commit('a', 2);
      const fromB = commit('b', 2);
      const fromA2 = commit('a', 2);
      hub.publishSoon('db', 'a', fromA1);
      hub.publishSoon('db', 'b', fromB);
      hub.publishSoon('db', 'a', fromA2);
      await nextTurn();
      const hex = (x: { stamps: Buffer[] }): string => x.stamps[0]!.toString('hex');
      expect(c.stamps).to.deep.equal([hex(fromA1), hex(fromB), hex(fromA2)]);
      expect(c.pushes).to.have.length(3);
      expect(a.stamps).to.deep.equal([hex(fromB)]);
      expect(b.stamps).to.deep.equal([hex(fromA1), hex(fromA2)]);
    });

    it('joins nothing across turns, nor across databases', async () => {
      const one = new Recorder('one', 'reader');
      const two = new Recorder('two', 'reader');
      hub.join(one);
      hub.join(two);
      const first = commit('writer', 1);
      hub.publishSoon('one', 'writer', first);
      await nextTurn();
      const second = commit('writer', 1);
      const other = commit('writer', 1);
      hub.publishSoon('one', 'writer', second);
      hub.publishSoon('two', 'writer', other);
      await nextTurn();
      expect(one.pushes.map((p) => p.stamps.length)).to.deep.equal([1, 1]);
      expect(two.pushes.map((p) => p.stamps.length)).to.deep.equal([1]);
    });
  });
});
