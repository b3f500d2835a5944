import type { Sector } from "../core/units.js";

/**
 * Where a device is sparse: the answer to NBD's base:allocation block status (and what `qemu-img map` and
 * nbdcopy use to skip holes). A run of `count` sectors is allocated data, or a hole (unallocated), and may be
 * known to read as zeroes. "Data, not known to be zero" is always a correct answer; anything else is a promise
 * that reads return zeroes, so a layer that cannot tell says data.
 */
export interface AllocationRun {
  readonly count: Sector;
  readonly hole: boolean;
  readonly zero: boolean;
}

export const dataRun = (count: Sector): AllocationRun => ({ count, hole: false, zero: false });
export const holeRun = (count: Sector): AllocationRun => ({ count, hole: true, zero: true });

/** At most this many runs per answer: a prefix of the range is a valid answer, and replies stay small. */
export const MAX_ALLOCATION_RUNS = 2048;

/** Append `run` to `runs`, merging it into the last one when they describe the same state. */
export function pushRun(runs: AllocationRun[], run: AllocationRun): void {
  if (run.count <= 0) return;
  const last = runs[runs.length - 1];
  if (last && last.hole === run.hole && last.zero === run.zero) runs[runs.length - 1] = { ...last, count: (last.count + run.count) as Sector };
  else runs.push(run);
}
