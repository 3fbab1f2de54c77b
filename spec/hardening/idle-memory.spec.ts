import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { startTestServer, type TestServer } from '../helpers/server.js';

// The test reads the heap after full collections; mocha runs without --expose-gc.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const CLIENTS = fileURLToPath(new URL('../helpers/idle-sockets.ts', import.meta.url));
/** Sockets opened first so that what the measured ones share (compiled code, open databases, pools) is already there. */
const WARM_UP = 100;
/** Transactions written to each database before any socket catches up on it. */
const TRANSACTIONS = 40;
/** Sockets measured (few enough for a descriptor limit of 1024). */
const MEASURED = 600;

/**
 * Starts a child with `count` idle authenticated sockets to `url` (after
 * writing `transactions` to each database, if given); resolves once every
 * socket has caught up.
 */
async function openIdleSockets(url: string, count: number, children: ChildProcess[], transactions = 0): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLIENTS, url, String(count), String(transactions)], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr += String(chunk); });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => { if (String(chunk).includes('ready')) resolve(); });
    child.once('exit', (code) => reject(new Error(`the socket process exited (${code}) before its sockets were ready: ${stderr}`)));
  });
}

/** JS heap in use plus the memory of ArrayBuffers (Buffers' bytes), after full collections, in bytes. */
async function memoryAfterGc(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    gc();
  }
  const { heapUsed, arrayBuffers } = process.memoryUsage();
  return heapUsed + arrayBuffers;
}

describe('hardening: idle sockets (server in this process, clients in a child)', function () {
  this.timeout(60_000);
  let server: TestServer;
  const children: ChildProcess[] = [];

  // Default limits, but every socket comes from 127.0.0.1: more than 500 of them need maxConnectionsPerIp lifted.
  beforeEach(async () => { server = await startTestServer({ heartbeatIntervalMs: 30_000, maxConnectionsPerIp: 0 }); });
  afterEach(async () => {
    await Promise.all(children.splice(0).map((child) => new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.stdin!.end();
      child.kill();
    })));
    await server.close();
  });

  it('keeps a socket that caught up and idles (default per-socket limits) under 5 KB of JS heap and Buffers', async () => {
    await openIdleSockets(server.wsUrl, WARM_UP, children, TRANSACTIONS);
    const before = await memoryAfterGc();
    await openIdleSockets(server.wsUrl, MEASURED, children);
    const after = await memoryAfterGc();
    expect(server.sync.coordinator.status().connectedClients).to.equal(WARM_UP + MEASURED);
    const perSocket = (after - before) / MEASURED;
    expect(perSocket, `${Math.round(perSocket)} bytes of JS heap and Buffers per idle socket`).to.be.below(5 * 1024);
  });
});
