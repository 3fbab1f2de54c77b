/**
 * What every Archive implementation needs around its I/O: refusing calls
 * after close, letting calls in progress finish before the connections or
 * handles go, destroying the streams handed out, and turning a stream's raw
 * I/O error into the archive's error contract (durability/archive.ts).
 */
import { Readable } from 'node:stream';
import { ErrorCode, SyncError } from '../errors.js';

/** The error of every call made after close (durability/archive.ts). */
export function archiveClosedError(location: string): SyncError {
  return new SyncError(ErrorCode.StoreClosed, `archive ${location} is closed`);
}

/** Tracks the calls and streams of one archive instance so close() can wait for the former and end the latter. */
export class ArchiveLifecycle {
  readonly #location: string;
  readonly #pending = new Set<Promise<unknown>>();
  readonly #streams = new Set<Readable>();
  #closing: Promise<void> | undefined;

  constructor(location: string) {
    this.#location = location;
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /** Runs `op` and tracks it until it settles; rejects with STORE_CLOSED instead once close() was called. */
  run<T>(op: () => Promise<T>): Promise<T> {
    if (this.#closing) return Promise.reject(archiveClosedError(this.#location));
    const promise = (async () => op())();
    this.#pending.add(promise);
    const settled = (): void => {
      this.#pending.delete(promise);
    };
    promise.then(settled, settled);
    return promise;
  }

  /**
   * Wraps `source` so its errors reach the reader as `mapError(err)`, and so
   * close() destroys it. Destroying the returned stream destroys `source`
   * (for S3 that releases the connection).
   */
  adopt(source: Readable, mapError: (err: unknown) => Error): Readable {
    // Not source.pipe(): pipe puts an 'error' listener on its destination,
    // and close() needs to know whether the caller listens.
    const out = new Readable({
      read() {
        source.resume();
      },
      destroy(err, callback) {
        source.destroy();
        callback(err);
      },
    });
    source.on('data', (chunk: Buffer) => {
      if (!out.push(chunk)) source.pause();
    });
    source.pause();
    source.once('end', () => out.push(null));
    source.on('error', (err) => out.destroy(mapError(err)));
    out.once('close', () => this.#streams.delete(out));
    this.#streams.add(out);
    return out;
  }

  /** Waits for tracked calls, destroys adopted streams still open, then runs `release` once. Safe to call twice. */
  close(release: () => Promise<void>): Promise<void> {
    this.#closing ??= (async () => {
      // run() refuses new calls from here on, so this set only shrinks.
      await Promise.allSettled([...this.#pending]);
      // A reader gets STORE_CLOSED; a stream nobody listens to is destroyed
      // quietly, since an 'error' without a listener would crash the process.
      for (const stream of this.#streams) {
        if (stream.listenerCount('error') > 0) stream.destroy(archiveClosedError(this.#location));
        else stream.destroy();
      }
      this.#streams.clear();
      await release();
    })();
    return this.#closing;
  }
}
