/**
 * Coalesced cache flushes. A caller needs a flush that *starts* after its writes completed; if one is already
 * running it may have started too early, so the caller joins the next one, which every caller arriving in the
 * meantime shares. Concurrent backup-on-write steps thus cost one fdatasync per round, not one each.
 */
export class FlushCoalescer {
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;

  constructor(private readonly doFlush: () => Promise<void>) {}

  flush(): Promise<void> {
    if (!this.running) return this.start();
    this.next ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.next = undefined;
        return this.start();
      });
    return this.next;
  }

  private start(): Promise<void> {
    const p: Promise<void> = this.doFlush().finally(() => {
      if (this.running === p) this.running = undefined;
    });
    this.running = p;
    return p;
  }
}
