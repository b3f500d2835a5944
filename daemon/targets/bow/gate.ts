/**
 * Bios enter shared; a state change runs exclusive: it waits for the bios in flight to finish and holds new
 * ones until it is done (the kernel gets the same effect from ranges_lock; here it is needed only at the
 * moment the state changes, not on every bio).
 */
export class StateGate {
  private inflight = 0;
  private exclusive: Promise<void> | undefined;
  private drained: (() => void) | undefined;

  async run<T>(fn: () => Promise<T>): Promise<T> {
    while (this.exclusive) await this.exclusive;
    this.inflight++;
    try {
      return await fn();
    } finally {
      this.leave();
    }
  }

  /** Enter shared without waiting, or false when a state change holds the gate (then use run()). */
  tryEnter(): boolean {
    if (this.exclusive) return false;
    this.inflight++;
    return true;
  }

  /** The end of a bio entered with tryEnter() (run() leaves by itself). */
  leave(): void {
    if (--this.inflight === 0) this.drained?.();
  }

  /** Run `fn` with no bio in flight; bios arriving meanwhile wait. State changes are serialised too. */
  async runExclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.exclusive) await this.exclusive;
    let done!: () => void;
    this.exclusive = new Promise((r) => (done = r));
    try {
      if (this.inflight > 0) await new Promise<void>((r) => (this.drained = r));
      this.drained = undefined;
      return await fn();
    } finally {
      this.exclusive = undefined;
      done();
    }
  }
}
