/**
 * Reusable I/O buffers (NBD replies and payloads, log-writes' payload copies). A fresh 1 MiB Buffer is a new
 * mapping whose pages fault in on first touch and are unmapped again by the GC; on the 1 MiB path that costs
 * more CPU than the copy itself. Buffers come in power-of-two classes plus HEADROOM bytes, so that a header in
 * front of a power-of-two payload (an NBD reply header, a 512-byte or 4 KiB log entry header) stays in the
 * payload's class, and go back to the pool once the I/O that used them has completed. The event loop is
 * single-threaded, so no locking.
 */
const HEADROOM = 4096;
const MIN_CLASS = 12; // 4 KiB
const MAX_CLASS = 25; // 32 MiB: the largest payload
/** Bytes kept per class and in all; beyond that, returned buffers are left to the GC. */
const KEEP_BYTES_PER_CLASS = 48 << 20;
const KEEP_BYTES_TOTAL = 128 << 20;
const KEEP_MAX_PER_CLASS = 512;

export class BufferPool {
  private readonly free: Buffer[][] = [];
  private kept = 0;

  constructor() {
    for (let c = 0; c <= MAX_CLASS; c++) this.free.push([]);
  }

  /** A buffer of at least `size` bytes (its contents are garbage), to be returned with put(). */
  get(size: number): Buffer {
    const c = classOf(size);
    if (c > MAX_CLASS) return Buffer.allocUnsafeSlow(size);
    const b = this.free[c]!.pop();
    if (b) {
      this.kept -= b.length;
      return b;
    }
    return Buffer.allocUnsafeSlow((1 << c) + HEADROOM);
  }

  /** Give back a buffer obtained from get() (the whole buffer, not a slice of it). */
  put(b: Buffer): void {
    const c = classOf(b.length);
    if (c > MAX_CLASS || b.length !== (1 << c) + HEADROOM) return;
    const list = this.free[c]!;
    if (list.length >= KEEP_MAX_PER_CLASS || (list.length + 1) * b.length > KEEP_BYTES_PER_CLASS) return;
    if (this.kept + b.length > KEEP_BYTES_TOTAL) return;
    this.kept += b.length;
    list.push(b);
  }
}

function classOf(size: number): number {
  const payload = size - HEADROOM;
  if (payload <= 1 << MIN_CLASS) return MIN_CLASS;
  return 32 - Math.clz32(payload - 1);
}

/** One pool for the whole server: connections come and go, their buffers stay warm. */
export const sharedPool = new BufferPool();
