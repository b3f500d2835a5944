/**
 * Ordering for bios whose block ranges overlap, and only for those. A request names the block intervals it
 * needs; it is granted when none of them overlaps a held interval or an interval of an earlier waiter (FIFO
 * among overlapping requests, so no starvation). Unrelated requests never wait for each other, whatever I/O
 * the holders are doing.
 *
 * The grant callback runs synchronously at the moment of the grant: a caller inspects and updates the range
 * map there, before any other request can observe a state in which it holds a range it has not yet planned.
 * The scans are linear in the number of bios in flight (bounded by the queue depth), not in the device size.
 */
export interface Interval {
  readonly start: number;
  readonly end: number;
}

export class LockHolder {
  constructor(readonly intervals: Interval[]) {}
}

interface Waiter {
  holder: LockHolder;
  grant: () => void;
}

/** Plain loops: every write in state 1 asks this once per request in flight. */
function overlaps(x: readonly Interval[], y: readonly Interval[]): boolean {
  for (const a of x) for (const b of y) if (a.start < b.end && b.start < a.end) return true;
  return false;
}

export class RangeLocks {
  private readonly held = new Set<LockHolder>();
  private waiters: Waiter[] = [];
  /** A grant pass is running (its callbacks may release, which must not start a nested pass). */
  private granting = false;
  private rescan = false;

  /** Wait for `intervals`, then run `onGrant` synchronously while holding them; resolves with its result. */
  acquire<T>(intervals: Interval[], onGrant: (holder: LockHolder) => T): Promise<T> {
    const holder = new LockHolder(intervals.slice());
    return new Promise<T>((resolve, reject) => {
      const grant = (): void => {
        this.held.add(holder);
        try {
          resolve(onGrant(holder));
        } catch (err) {
          reject(err);
        }
      };
      if (!this.granting && !this.conflicts(holder, this.waiters.length)) grant();
      else this.waiters.push({ holder, grant }); // during a grant pass, that pass looks at it in turn
    });
  }

  /** Take `interval` at once for a holder (newly allocated space nobody else can hold). */
  extend(holder: LockHolder, interval: Interval): void {
    holder.intervals.push(interval);
  }

  /** True when no holder holds and no waiter waits for any block of [start, end) (nothing is taken). */
  isIdle(start: number, end: number): boolean {
    if (this.granting) return false;
    for (const h of this.held) for (const i of h.intervals) if (i.start < end && start < i.end) return false;
    for (const w of this.waiters) for (const i of w.holder.intervals) if (i.start < end && start < i.end) return false;
    return true;
  }

  /** A holder for space taken without waiting (e.g. a reserved log block). */
  take(intervals: Interval[]): LockHolder {
    const holder = new LockHolder(intervals.slice());
    this.held.add(holder);
    return holder;
  }

  release(holder: LockHolder): void {
    if (!this.held.delete(holder)) return;
    this.grantWaiters();
  }

  /**
   * Grant waiters in FIFO order, one at a time. A grant's callback may take more space (`extend`, `take`),
   * so each waiter is checked against the locks as the grants before it left them; checking them all first
   * and granting together would let a later waiter write where an earlier one just put its backup.
   * Callbacks may release (a retry, a failed plan): that is picked up by scanning again.
   */
  private grantWaiters(): void {
    if (this.granting) {
      this.rescan = true;
      return;
    }
    this.granting = true;
    try {
      do {
        this.rescan = false;
        for (let i = 0; i < this.waiters.length; ) {
          const w = this.waiters[i]!;
          if (this.conflicts(w.holder, i)) i++;
          else {
            this.waiters.splice(i, 1);
            w.grant();
          }
        }
      } while (this.rescan);
    } finally {
      this.granting = false;
    }
  }

  get busy(): number {
    return this.held.size + this.waiters.length;
  }

  private heldConflict(h: LockHolder): boolean {
    for (const o of this.held) if (overlaps(o.intervals, h.intervals)) return true;
    return false;
  }

  private conflicts(h: LockHolder, waitersBefore: number): boolean {
    if (this.heldConflict(h)) return true;
    for (let i = 0; i < waitersBefore; i++) if (overlaps(this.waiters[i]!.holder.intervals, h.intervals)) return true;
    return false;
  }
}
