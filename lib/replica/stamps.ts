import { HlcClock, compareHlc } from '../protocol/hlc.js';

/**
 * Issues the coordinator-side stamps that key the change log (docs/protocol.md §5).
 * Each call returns a timestamp strictly greater than every earlier one for
 * this database. A single node uses its own clock; a cluster can supply
 * stamps from a shared log so that cursors stay valid on every node.
 */
export interface StampSource {
  next(): Buffer;
}

/** What a stamp source factory gets when a replica opens. */
export interface StampSourceInit {
  /** The database's server site id (16 bytes). */
  siteId: Buffer;
  /** The last stamp this database persisted, if any. */
  last?: Buffer;
  /** The replica's wall clock. */
  now: () => number;
}

/** Builds the stamp source of one replica. */
export type StampSourceFactory = (init: StampSourceInit) => StampSource;

/**
 * Stamps from the coordinator's own wall clock and site id. It never absorbs
 * remote clocks (clients drift-check the stamps they receive) and resumes
 * after the last persisted stamp, so stamps keep increasing across restarts
 * even if the wall clock stepped back.
 */
export const localStampSource: StampSourceFactory = ({ siteId, last, now }) => {
  const clock = new HlcClock(siteId, { now, after: last });
  let previous = last;
  return {
    next(): Buffer {
      const stamp = clock.tick();
      if (previous && compareHlc(stamp, previous) <= 0) throw new Error('stamp source went backwards');
      previous = stamp;
      return stamp;
    },
  };
};
