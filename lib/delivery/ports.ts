/**
 * The two ports of a delivery stream: where its frames go (a socket,
 * implemented by the transport) and where missed change sets come from (the
 * stored change log, implemented by the service). Neither knows the other,
 * so the stream never imports `ws` and is tested with plain objects.
 */

/** The outbound side of one socket, as a delivery stream sees it. */
export interface DeliverySink {
  /**
   * Queues one frame for the socket, a text frame either way: JSON text, or
   * its UTF-8 bytes (a frame shared by many sockets, encoded once). Dropped
   * once the socket is closed.
   */
  send(frame: string | Buffer): void;
  /** Bytes queued for the socket that the kernel has not taken yet. */
  readonly bufferedBytes: number;
  /** Resolves once every frame sent so far has been flushed to the kernel (at once when the socket is closed). */
  flushed(): Promise<void>;
  /** False once the socket is closing or closed: nothing more can be delivered. */
  readonly open: boolean;
}

/** One page of the stored change log (docs/protocol.md §5): whole transactions in stamp order. */
export interface LogPage {
  /** The change sets as JSON text of an array, each `hlc` being its stamp. */
  readonly json: string;
  /** Whether the log holds more transactions after this page. */
  readonly hasMore: boolean;
  /** Transactions in the page. */
  readonly transactionCount: number;
  /** Stamp of the page's last transaction (30 bytes); absent for an empty page. */
  readonly lastStamp?: Buffer;
  /** The retention floor when the page was read; absent while nothing was ever swept. */
  readonly floor?: Buffer;
  /** True when the cursor was above every stamp committed when the read began (see `ChangesPage.cursorAhead`). */
  readonly cursorAhead?: true;
}

/** Reads the change log of one database for one site (never that site's own transactions). */
export interface LogReader {
  /**
   * The page after `cursor` (a stamp; undefined: from the beginning).
   * `maxBytes` lowers the reader's own page budget (bytes of change-set
   * JSON; a page still holds at least one whole transaction). Rejects with
   * SNAPSHOT_REQUIRED when retention has passed the cursor, unless
   * `floorSeen` lets the read go on: a floor a page returned (the read is
   * refused only if the floor has risen past it since) or `'any'`. Rejects
   * with the store's failure.
   */
  read(cursor: Buffer | undefined, maxBytes?: number, floorSeen?: Buffer | 'any'): Promise<LogPage>;
}
