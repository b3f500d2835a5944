/**
 * Bytes received during option haggling, read with "give me exactly n bytes". The handshake is a strict
 * request/response exchange, so one pending read at a time is all it needs. Whatever is left when haggling
 * ends (a client may pipeline its first requests right behind NBD_OPT_GO) is handed to the transmission phase.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private available = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.available += chunk.length;
    this.wake();
  }

  /** No more bytes will come (EOF, error, timeout): a pending and every later read fails. */
  end(reason: Error): void {
    this.ended ??= reason;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.ended);
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error("ByteQueue: concurrent reads"));
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.available >= n) return Promise.resolve(this.take(n));
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => (this.waiter = { n, resolve, reject }));
  }

  /** Discard n bytes without holding more than one chunk at a time. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const step = Math.min(n, 64 << 10);
      await this.read(step);
      n -= step;
    }
  }

  /** Everything received and not yet read; the queue is empty afterwards. */
  drain(): Buffer[] {
    const out = this.chunks;
    this.chunks = [];
    this.available = 0;
    return out;
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.available >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
    }
  }

  private take(n: number): Buffer {
    this.available -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}
