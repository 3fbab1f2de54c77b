/**
 * Resolution of one message against the stored state: which incoming facts
 * win, and how each is counted. Pure: the caller loads the stored records and
 * writes the outcome. Decisions depend only on the set of HLCs involved, never
 * on the order of change sets or of changes inside them, so the state and the
 * counts come out the same for any arrival order (docs/protocol.md §3).
 */

import { compareHlc } from '../protocol/hlc.js';

/** One incoming fact competing for a slot (cell, row or migration key). */
export interface Candidate<T> {
  hlc: Buffer;
  item: T;
}

/** Outcome for one slot. */
export interface SlotOutcome<T> {
  /** The incoming fact that wins the slot, if one does. */
  winner?: Candidate<T>;
  applied: number;
  skipped: number;
  conflicts: number;
}

/**
 * Last-writer-wins among `candidates` and the stored HLC. `blocked(hlc)` marks
 * candidates a tombstone refuses (skipped, whatever their order). The single
 * greatest unblocked candidate is applied if it beats the stored value;
 * candidates equal to the best are duplicates (skipped); the rest lost
 * (conflicts).
 */
export function resolveSlot<T>(
  candidates: Candidate<T>[],
  stored: Buffer | undefined,
  blocked?: (hlc: Buffer) => boolean,
): SlotOutcome<T> {
  let best = stored;
  let winner: Candidate<T> | undefined;
  let skipped = 0;
  for (const c of candidates) {
    if (blocked && blocked(c.hlc)) continue;
    if (best === undefined || compareHlc(c.hlc, best) > 0) {
      best = c.hlc;
      winner = c;
    }
  }
  let applied = 0;
  let conflicts = 0;
  for (const c of candidates) {
    if (blocked && blocked(c.hlc)) skipped++;
    else if (c === winner) applied++;
    else if (compareHlc(c.hlc, best!) === 0) skipped++;
    else conflicts++;
  }
  return { winner, applied, skipped, conflicts };
}

/**
 * Row deletions: the greatest incoming delete raises the tombstone if it is
 * above the stored one; every other delete is skipped (an equal or greater
 * tombstone exists, or a greater delete in the same message covers it).
 */
export function resolveDeletes<T>(candidates: Candidate<T>[], stored: Buffer | undefined): SlotOutcome<T> {
  const out = resolveSlot(candidates, stored);
  return { winner: out.winner, applied: out.applied, skipped: out.skipped + out.conflicts, conflicts: 0 };
}

/**
 * The tombstone rule of §3. Without resurrection a tombstone blocks every
 * write to its row; with it, only writes at or below the tombstone's HLC.
 */
export function tombstoneBlocks(tombstone: Buffer | undefined, hlc: Buffer, allowResurrection: boolean): boolean {
  if (tombstone === undefined) return false;
  return !allowResurrection || compareHlc(hlc, tombstone) <= 0;
}
