/**
 * Request payload bytes held by all connections together (WRITE payloads being served, READ buffers being
 * filled). Each connection also has its own cap; this one keeps many connections from adding up to more
 * memory than the daemon should hold. A connection over the budget stops reading requests until bytes come
 * back. The event loop is single-threaded, so plain counters do.
 */
export class PayloadBudget {
  private used = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  get exhausted(): boolean {
    return this.used >= this.limit;
  }

  take(bytes: number): void {
    this.used += bytes;
  }

  give(bytes: number): void {
    this.used -= bytes;
    if (this.waiting.size > 0 && this.used < this.limit) {
      const wake = [...this.waiting];
      this.waiting.clear();
      for (const w of wake) w();
    }
  }

  /** Call `resume` once the budget has room again (one call; register again if still needed). */
  whenAvailable(resume: () => void): void {
    this.waiting.add(resume);
  }

  forget(resume: () => void): void {
    this.waiting.delete(resume);
  }
}
