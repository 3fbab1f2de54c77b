import { expect } from 'chai';
import { RateWait, delayedOverRate } from '../../lib/ws/rate-wait.js';

describe('ws/rate-wait', () => {
  it('delays the frames a real client sends once per connection (PROTOCOL.md §8), and only those', () => {
    for (const type of ['handshake', 'get_changes', 'get_snapshot', 'resume_snapshot']) expect(delayedOverRate(type), type).to.equal(true);
    for (const type of ['apply_changes', 'ping', 'toString', undefined, 42, { toString: 'get_changes' }]) expect(delayedOverRate(type), JSON.stringify(type) ?? 'undefined').to.equal(false);
  });

  it('waits the time named, then asks again until a token is granted', async () => {
    const asked: number[] = [];
    const answers = [5, 0];
    const wait = new RateWait();
    const started = Date.now();
    expect(await wait.until(10, () => { asked.push(Date.now() - started); return answers.shift()!; })).to.equal(true);
    expect(asked).to.have.length(2);
    expect(asked[0]).to.be.at.least(9);
    expect(asked[1]! - asked[0]!).to.be.at.least(4);
  });

  it('ends a wait at once with false when cancelled, and every later one', async () => {
    const wait = new RateWait();
    let asked = 0;
    const waiting = wait.until(60_000, () => { asked++; return 0; });
    wait.cancel();
    expect(await waiting).to.equal(false);
    expect(await wait.until(60_000, () => 0)).to.equal(false);
    expect(asked, 'the bucket is not asked after the cancel').to.equal(0);
    // Mocha exits on its own only if no timer of a cancelled wait is left.
  });
});
