import { expect } from 'chai';
import { register as globalRegistry } from 'prom-client';
import { startTestServer, type TestServer } from '../helpers/server.js';

/** Samples every default collector contributes; a prom-client that moved one would drop its lines. */
const PROCESS_SAMPLES = [
  'sync_process_cpu_seconds_total',
  'sync_process_cpu_user_seconds_total',
  'sync_process_start_time_seconds',
  'sync_process_resident_memory_bytes',
  'sync_process_open_fds',
  'sync_process_max_fds',
  'sync_nodejs_active_handles_total',
  'sync_nodejs_active_requests_total',
  'sync_nodejs_active_resources_total',
  'sync_nodejs_heap_size_used_bytes',
  'sync_nodejs_heap_space_size_used_bytes',
  'sync_nodejs_external_memory_bytes',
  'sync_nodejs_version_info',
  'sync_nodejs_eventloop_lag_seconds',
];

/** The value of the first sample named `name` (labels ignored) in Prometheus text. */
function sample(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('metrics: default process and Node.js metrics', () => {
  const servers: TestServer[] = [];

  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  it('serves them prefixed sync_ on GET <path>/metrics', async () => {
    const server = await startTestServer();
    servers.push(server);
    const res = await fetch(`${server.baseUrl}/metrics`);
    expect(res.status).to.equal(200);
    const text = await res.text();
    for (const name of PROCESS_SAMPLES) expect(sample(text, name), name).to.be.a('number').and.not.NaN;
    expect(sample(text, 'sync_process_resident_memory_bytes')).to.be.greaterThan(0);
    expect(text).to.include(`sync_nodejs_version_info{version="${process.version}"`);
    // Unprefixed names belong to the application's own collectDefaultMetrics(), should it call it.
    expect(text).not.to.match(/^(process|nodejs)_/m);
  });

  it('lets two routers in one process each have them, outside the global registry', async () => {
    const first = await startTestServer();
    servers.push(first);
    const second = await startTestServer();
    servers.push(second);
    expect(first.sync.registry).not.to.equal(second.sync.registry);
    for (const server of [first, second]) {
      const text = await (await fetch(`${server.baseUrl}/metrics`)).text();
      expect(sample(text, 'sync_process_cpu_seconds_total'), server.baseUrl).to.be.a('number');
    }
    expect(await globalRegistry.metrics()).not.to.include('sync_');
  });
});
