import { expect } from 'chai';
import { RefusedWrites, hlcJustBefore, isRetryableRefusal, refusedApplyHlc } from '../../lib/delivery/refused-writes.js';
import { compareHlc, encodeHlc, hlcFromWire, hlcToWire } from '../../lib/protocol/hlc.js';

const SERVER = 'c2VydmVyLXNpdGUtaWQtMQ';
const site = Buffer.alloc(16, 7);
const hlc = (wallTime: number, counter = 0): Buffer => encodeHlc({ wallTime, counter, siteId: site, opSeq: 0 });
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A RefusedWrites with short delays whose frames land in `sent`. */
function make(writable?: () => boolean): { pulls: RefusedWrites; sent: { type: string; siteId: string; sinceHLC: string }[] } {
  const sent: { type: string; siteId: string; sinceHLC: string }[] = [];
  const pulls = new RefusedWrites({ send: (frame) => sent.push(JSON.parse(frame)), serverSiteId: SERVER, writable, initialDelayMs: 20, maxDelayMs: 80 });
  return { pulls, sent };
}

describe('delivery/refused-writes', () => {
  it('treats the storage and closing refusals as retryable, and refusals of the message itself as final', () => {
    expect(isRetryableRefusal('STORAGE_UNAVAILABLE')).to.equal(true);
    expect(isRetryableRefusal('STORE_CLOSED')).to.equal(true);
    for (const code of ['INVALID_CHANGESET', 'CLOCK_DRIFT', 'FORBIDDEN', 'PAYLOAD_TOO_LARGE']) expect(isRetryableRefusal(code), code).to.equal(false);
  });

  it('refusedApplyHlc finds the smallest valid change-set HLC of an apply_changes, and nothing in anything else', () => {
    const [a, b, c] = [hlc(1_700_000_000_300), hlc(1_700_000_000_100), hlc(1_700_000_000_200)];
    const message = { type: 'apply_changes', changes: [{ hlc: hlcToWire(a) }, { hlc: 'not an hlc' }, null, { hlc: hlcToWire(b) }, { hlc: hlcToWire(c) }] };
    expect(refusedApplyHlc(message)!.equals(b)).to.equal(true);
    expect(refusedApplyHlc({ type: 'apply_changes', changes: [{ hlc: 7 }] })).to.equal(undefined);
    expect(refusedApplyHlc({ type: 'apply_changes', changes: 'x' })).to.equal(undefined);
    expect(refusedApplyHlc({ type: 'get_changes', changes: [{ hlc: hlcToWire(a) }] })).to.equal(undefined);
    for (const other of [null, 'apply_changes', [message]]) expect(refusedApplyHlc(other)).to.equal(undefined);
  });

  it('refusedApplyHlc looks at the HLCs of the changes and migrations too: a change set\'s own hlc is its last fact\'s', () => {
    const [first, second, last, migration] = [hlc(1_700_000_000_100), hlc(1_700_000_000_110), hlc(1_700_000_000_120), hlc(1_700_000_000_050)];
    const set = { hlc: hlcToWire(last), changes: [{ hlc: hlcToWire(first) }, { hlc: 'bad' }, { hlc: hlcToWire(second) }] };
    expect(refusedApplyHlc({ type: 'apply_changes', changes: [set] })!.equals(first)).to.equal(true);
    const withMigration = { ...set, schemaMigrations: [{ hlc: hlcToWire(migration) }] };
    expect(refusedApplyHlc({ type: 'apply_changes', changes: [withMigration] })!.equals(migration)).to.equal(true);
  });

  it('hlcJustBefore gives the HLC right below, borrowing across bytes', () => {
    const a = hlc(1_700_000_000_000, 5);
    const before = hlcJustBefore(a);
    expect(compareHlc(before, a)).to.equal(-1);
    expect(Buffer.compare(hlcJustBefore(Buffer.from([1, 0, 0])), Buffer.from([0, 255, 255]))).to.equal(0);
    expect(Buffer.compare(hlcJustBefore(Buffer.alloc(30)), Buffer.alloc(30))).to.equal(0);
  });

  it('pulls the refused change sets once: request_changes from just below the smallest refused HLC', async () => {
    const { pulls, sent } = make();
    pulls.refused(hlc(2000));
    pulls.refused(hlc(1000));
    expect(pulls.pending).to.equal(true);
    await sleep(60);
    expect(sent).to.have.length(1);
    expect(sent[0]!.type).to.equal('request_changes');
    expect(sent[0]!.siteId).to.equal(SERVER);
    const since = hlcFromWire(sent[0]!.sinceHLC);
    expect(compareHlc(since, hlc(1000)), 'below the smallest refused').to.equal(-1);
    expect(compareHlc(since, hlc(999, 65535)), 'and above anything earlier of that client').to.equal(1);
    expect(pulls.pending).to.equal(false);
    await sleep(100);
    expect(sent, 'one pull per refusal').to.have.length(1);
    pulls.close();
  });

  it('sends nothing when the client resent the refused change sets itself', async () => {
    const { pulls, sent } = make();
    pulls.refused(hlc(1000));
    pulls.accepted(hlc(1000));
    await sleep(60);
    expect(sent).to.deep.equal([]);
    pulls.close();
  });

  it('still pulls when a later message that does not cover the refused one is accepted', async () => {
    const { pulls, sent } = make();
    pulls.refused(hlc(1000));
    pulls.accepted(hlc(3000));
    await sleep(60);
    expect(sent).to.have.length(1);
    pulls.close();
  });

  it('waits while writes cannot be taken, and pulls as soon as they can', async () => {
    let up = false;
    const { pulls, sent } = make(() => up);
    pulls.refused(hlc(1000));
    await sleep(150);
    expect(sent, 'nothing while down').to.deep.equal([]);
    up = true;
    await sleep(60);
    expect(sent).to.have.length(1);
    pulls.close();
  });

  it('waits longer after each refusal in a row, up to the longest delay', async () => {
    const { pulls, sent } = make();
    const at: number[] = [];
    const start = Date.now();
    for (let i = 0; i < 4; i++) {
      pulls.refused(hlc(1000));
      while (sent.length === i) await sleep(2);
      at.push(Date.now() - start);
    }
    const gaps = at.map((t, i) => t - (at[i - 1] ?? 0));
    // 20, 40, 80, 80 ms (timers may fire late, never early).
    expect(gaps[0]).to.be.at.least(19);
    expect(gaps[1]).to.be.at.least(39);
    expect(gaps[2]).to.be.at.least(79);
    expect(gaps[3]).to.be.at.least(79);
    pulls.close();
  });

  it('sends nothing after close', async () => {
    const { pulls, sent } = make();
    pulls.refused(hlc(1000));
    pulls.close();
    pulls.refused(hlc(500));
    await sleep(60);
    expect(sent).to.deep.equal([]);
  });
});
