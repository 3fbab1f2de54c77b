/**
 * Latency percentiles from bucket counts, the way Prometheus's
 * `histogram_quantile` reads a histogram: counts per bucket (cumulative
 * snapshots subtracted to get a time window), linear inside the bucket the
 * rank falls in. Pure functions, no state.
 */

/** Percentiles of a window, in milliseconds, with the number of observations they come from. */
export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  count: number;
}

/**
 * Cumulative counts per bucket: `counts[i]` observations at or below
 * `bounds[i]`, plus one last entry for every observation (the `+Inf`
 * bucket), so `counts.length === bounds.length + 1`.
 */
export type CumulativeBuckets = readonly number[];

/**
 * Percentiles of the observations between two cumulative snapshots of the
 * same histogram (`later` minus `earlier`; `earlier` undefined: since the
 * start). `bounds` are the buckets' upper bounds in the unit wanted (ms).
 * Undefined when nothing was observed in between. A rank in the `+Inf`
 * bucket is reported as the largest finite bound, as Prometheus does.
 */
export function windowPercentiles(bounds: readonly number[], later: CumulativeBuckets, earlier?: CumulativeBuckets): Percentiles | undefined {
  const at = (i: number): number => (later[i] ?? 0) - (earlier?.[i] ?? 0);
  const count = at(bounds.length);
  if (!(count > 0)) return undefined;
  const quantile = (q: number): number => {
    const rank = q * count;
    for (let i = 0; i < bounds.length; i++) {
      const below = at(i);
      if (below >= rank) {
        const lower = i === 0 ? 0 : bounds[i - 1]!;
        const before = i === 0 ? 0 : at(i - 1);
        const inBucket = below - before;
        return inBucket > 0 ? lower + (bounds[i]! - lower) * ((rank - before) / inBucket) : lower;
      }
    }
    return bounds[bounds.length - 1]!;
  };
  return { p50: round(quantile(0.5)), p90: round(quantile(0.9)), p99: round(quantile(0.99)), count };
}

/** A histogram with fixed bounds that only counts (cumulative, as windowPercentiles reads it). */
export class BucketCounter {
  readonly bounds: readonly number[];
  private readonly counts: number[];

  /** `bounds`: increasing upper bounds; a value above the last counts in the `+Inf` bucket. */
  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  /** Counts `value` `times` times (several subscribers sent one push count once each). */
  observe(value: number, times = 1): void {
    for (let i = 0; i < this.bounds.length; i++) if (value <= this.bounds[i]!) this.counts[i]! += times;
    this.counts[this.bounds.length]! += times;
  }

  /** A copy of the cumulative counts. */
  snapshot(): number[] {
    return [...this.counts];
  }
}

/** Three significant decimals are plenty for a page; keeps the JSON short. */
function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}
