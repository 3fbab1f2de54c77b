import { expect } from 'chai';
import request from 'supertest';
import { DashboardSampler, type DashboardSample } from '../../lib/dashboard/sampler.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { TestSite } from '../helpers/changes.js';
import { eventually } from '../helpers/coordinator-process.js';

const DB = 'acme:notes';
const QUIET = 'acme:quiet';

describe('dashboard/sampler', () => {
  let server: TestServer;
  let sampler: DashboardSampler;
  /** Every sample the listener got, parsed. */
  let samples: DashboardSample[];
  let unsubscribe: (() => void) | undefined;

  beforeEach(async () => {
    server = await startTestServer({ dashboard: false });
    samples = [];
  });
  afterEach(async () => {
    unsubscribe?.();
    unsubscribe = undefined;
    sampler?.close();
    await server.close();
  });

  /** A sampler of the test server, 20 samples a second, keeping `windowSeconds` of history. */
  const build = (windowSeconds: number): DashboardSampler => {
    const { coordinator, metrics, config } = server.sync;
    sampler = new DashboardSampler({ coordinator, metrics, config, version: '9.9.9' }, { intervalMs: 50, windowSeconds });
    return sampler;
  };
  const watch = (): void => { unsubscribe = sampler.subscribe((text) => samples.push(JSON.parse(text) as DashboardSample)); };
  const last = (): DashboardSample => samples[samples.length - 1]!;

  it('samples only while someone listens, and stops for good on close', async () => {
    build(2);
    expect(sampler.watched).to.equal(false);
    watch();
    expect(sampler.watched).to.equal(true);
    expect(await eventually(() => samples.length >= 3)).to.equal(true);
    unsubscribe!();
    unsubscribe = undefined;
    expect(sampler.watched).to.equal(false);
    const seen = samples.length;
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(samples.length, 'no sample after the last listener left').to.be.at.most(seen + 1);
    watch();
    expect(sampler.watched).to.equal(true);
    sampler.close();
    expect(sampler.watched).to.equal(false);
    expect(() => sampler.subscribe(() => undefined)).to.throw(TypeError, 'closed');
  });

  it('shows the figures of /status and the work clients do: rates, latencies, busiest databases', async () => {
    const listeners = [await server.connect(DB), await server.connect(DB)];
    const writer = await server.connect(DB);
    await server.connect(QUIET);
    build(120);
    watch();
    // The first sample is the start of every window: taken before the first write.
    await eventually(() => samples.length > 0);
    const site = new TestSite();
    for (let i = 0; i < 20; i++) {
      await writer.apply([site.txn([{ pk: [i], value: `v${i}` }, { pk: [i + 100], value: 'w' }])]);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const status = (await request(server.app).get('/sync/status').expect(200)).body.data;
    const done = (s: DashboardSample): boolean => s.latency.apply?.count === 20 && s.databases.some((d) => d.id === DB && d.bytes !== null);
    expect(await eventually(() => done(last())), 'a sample after the last write, with the size on disk').to.equal(true);
    const sample = last();
    expect(sample.openDatabases).to.equal(status.openStores).and.to.equal(2);
    expect(sample.clients).to.equal(status.connectedClients).and.to.equal(4);
    expect(sample.latency.apply!.count, 'applies in the last 60 s').to.equal(20);
    expect(sample.latency.push!.count, 'each push to each of 2 listeners').to.equal(40);
    expect(samples.some((s) => (s.point.applies ?? 0) > 0 && (s.point.pushes ?? 0) > 0 && (s.point.changes ?? 0) > 0), 'rates moved').to.equal(true);
    const [busiest, quiet] = sample.databases;
    expect(busiest!.id).to.equal(DB);
    expect(busiest!.clients).to.equal(3);
    expect(busiest!.bytes).to.be.greaterThan(0);
    expect(busiest!.lastWriteAt).to.be.within(Date.now() - 5000, Date.now());
    expect(samples.some((s) => (s.databases[0]?.changesPerSecond ?? 0) > 0)).to.equal(true);
    expect(quiet).to.deep.include({ id: QUIET, clients: 1, lastWriteAt: null });
    expect(sample.databaseCount).to.equal(2);
    expect(sample.catchingUp).to.equal(0);
    expect(sample).to.not.have.property('archive');
    expect(sample).to.not.have.property('cluster');
    expect(sampler.info).to.deep.equal({ version: '9.9.9', archive: false, intervalMs: 50, windowSeconds: 120 });
    const { series } = sampler.history();
    expect(series.at.length).to.equal(series.applies.length).and.to.be.greaterThan(2);
    await Promise.all(listeners.map((c) => c.close()));
  });

  it('counts the errors sent to clients by code, recently and in total, and forgets them after the window', async () => {
    const client = await server.connect(DB);
    build(2);
    watch();
    await eventually(() => samples.length > 0);
    await client.request('error', { type: 'no_such_message' });
    await client.request('error', { type: 'no_such_message' });
    await request(server.app).get('/sync/acme:notes/changes').expect(401); // no X-Site-Id
    expect(await eventually(() => last()?.errors.length === 2)).to.equal(true);
    expect(last().errors).to.deep.equal([
      { code: 'UNKNOWN_MESSAGE', recent: 2, total: 2 },
      { code: 'AUTH_FAILED', recent: 1, total: 1 },
    ]);
    expect(last().recentSince).to.be.at.most(Date.now());
    // The window is 2 s: then the counts are no longer recent, but stay in the total.
    expect(await eventually(() => last().errors[0]!.recent === 0, 80, 50)).to.equal(true);
    expect(last().errors.find((e) => e.code === 'UNKNOWN_MESSAGE')).to.deep.equal({ code: 'UNKNOWN_MESSAGE', recent: 0, total: 2 });
  });
});
