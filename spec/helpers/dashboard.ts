import { existsSync } from 'node:fs';
import { request, type IncomingMessage } from 'node:http';
import { chromium, type BrowserContext } from 'playwright-core';
import { SyncClient } from '../../lib/client/sync-client.js';
import { randomSiteId, siteIdToWire } from '../../lib/protocol/site-id.js';
import { TestSite } from './changes.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

/** Debian's chromium package; `.ci/run` installs it. */
export const CHROMIUM = '/usr/bin/chromium';

/** A headless Chromium with its own temporary profile. */
export interface Browser {
  readonly context: BrowserContext;
  close(): Promise<void>;
}

/**
 * Starts headless Chromium (Debian's, through playwright-core) with a fresh
 * profile in a temp dir. Throws, never skips, when it is not installed.
 */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`The dashboard specs drive a real browser: ${CHROMIUM} is missing. Install Debian's chromium package (apt-get install -y chromium), as .ci/run does.`);
  }
  const profile = await makeTempDir('dashboard-chromium-');
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  } catch (err) {
    await removeTempDir(profile);
    throw err;
  }
  return {
    context,
    async close() {
      await context.close();
      await removeTempDir(profile);
    },
  };
}

/** Where and how hard a load writes. */
export interface LoadOptions {
  /** ws://host:port/<mount>/ws */
  wsUrl: string;
  /** Databases written, each with `writersPerDatabase` writers; the first ones get more work. */
  databases: string[];
  /** Clients per database that only listen (they get the pushes). @default 2 */
  listenersPerDatabase?: number;
  /** Sent as the handshake token. */
  token?: string;
  /** A writer stops by itself after this long, in ms. @default 120000 */
  maxMs?: number;
}

/** A running load of real applies over WebSocket. */
export interface Load {
  /** Clients connected, listeners and writers. */
  readonly clients: number;
  /** apply_changes acknowledged so far. */
  applied(): number;
  /** Pushes received by the listeners so far. */
  pushed(): number;
  /** Stops writing (waits for the writes in flight), and keeps the clients connected. */
  pause(): Promise<void>;
  /** Stops writing and closes every client. */
  stop(): Promise<void>;
}

/**
 * Connects listeners and one writer per database, and has each writer
 * apply a transaction of a few changes, wait for its `apply_result`, pause
 * a little and go on, until paused, stopped or `maxMs` has passed. The
 * first databases write more changes per transaction and pause less, so
 * the busiest-databases table has an order.
 */
export async function startLoad(options: LoadOptions): Promise<Load> {
  const { wsUrl, databases, listenersPerDatabase = 2, token, maxMs = 120_000 } = options;
  const connect = (databaseId: string): Promise<SyncClient> =>
    SyncClient.connect({ url: wsUrl, databaseId, siteId: siteIdToWire(randomSiteId()), ...(token ? { token } : {}) });
  const listeners: SyncClient[] = [];
  const writers: SyncClient[] = [];
  let applied = 0;
  let pushed = 0;
  for (const db of databases) {
    for (let i = 0; i < listenersPerDatabase; i++) {
      const client = await connect(db);
      client.on('push', () => { pushed++; });
      listeners.push(client);
    }
    writers.push(await connect(db));
  }
  let running = true;
  const deadline = Date.now() + maxMs;
  const loops = writers.map(async (writer, index) => {
    const site = new TestSite();
    const changes = Math.max(1, 8 - 3 * index);
    let row = 0;
    while (running && Date.now() < deadline) {
      const drafts = Array.from({ length: changes }, () => ({ pk: [row++ % 500], value: `v${row}` }));
      await writer.apply([site.txn(drafts)]);
      applied++;
      await new Promise((resolve) => setTimeout(resolve, 15 + 10 * index));
    }
  });
  const all = [...listeners, ...writers];
  let paused: Promise<void> | undefined;
  const pause = (): Promise<void> => {
    running = false;
    paused ??= Promise.all(loops).then(() => undefined);
    return paused;
  };
  return {
    clients: all.length,
    applied: () => applied,
    pushed: () => pushed,
    pause,
    async stop() {
      await pause();
      await Promise.all(all.map((client) => client.close().catch(() => undefined)));
    },
  };
}

/** One Server-Sent Event. */
export interface SseEvent { event: string; data: string }

/** A Server-Sent Events response being read. */
export interface EventStream {
  readonly status: number;
  readonly headers: IncomingMessage['headers'];
  /** Resolves with the next event (waits for it); rejects once the stream has ended. */
  next(): Promise<SseEvent>;
  /** Resolves when the server ends the stream. */
  readonly ended: Promise<void>;
  close(): void;
}

/** GETs `url` and parses what comes as Server-Sent Events (`event:` and `data:` lines; others ignored). */
export function openEventStream(url: string, headers: Record<string, string> = {}): Promise<EventStream> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers }, (res) => {
      const queue: SseEvent[] = [];
      const waiters: { resolve(event: SseEvent): void; reject(err: Error): void }[] = [];
      let over = false;
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (text: string) => {
        buffer += text;
        for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length === 0) continue;
          const parsed = { event, data: data.join('\n') };
          const waiter = waiters.shift();
          if (waiter) waiter.resolve(parsed);
          else queue.push(parsed);
        }
      });
      const ended = new Promise<void>((done) => {
        res.on('close', () => {
          over = true;
          for (const waiter of waiters.splice(0)) waiter.reject(new Error('the event stream ended'));
          done();
        });
      });
      resolve({
        status: res.statusCode!,
        headers: res.headers,
        next: () => {
          if (queue.length > 0) return Promise.resolve(queue.shift()!);
          if (over) return Promise.reject(new Error('the event stream ended'));
          return new Promise((done, fail) => waiters.push({ resolve: done, reject: fail }));
        },
        ended,
        close: () => { req.destroy(); },
      });
    });
    req.on('error', reject);
    req.end();
  });
}
