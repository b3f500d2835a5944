/**
 * vold's validation overlay: a piecewise-linear map of 512-byte sectors, phys(s) = s - K + map[K] where K is
 * the largest key <= s. `relocate(dest ← source, count)` makes reads of [dest, dest+count) return what reads
 * of [source, source+count) return now, so validation can "apply" log entries, newest first, without writing.
 * Keys live in a sorted array (binary search; at most two keys per log entry).
 */
export class Relocations {
  private keys: number[] = [0];
  private vals: number[] = [0];

  /** Index of the largest key <= s. */
  private floor(s: number): number {
    let lo = 0;
    let hi = this.keys.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.keys[mid]! <= s) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  phys(s: number): number {
    const i = this.floor(s);
    return s - this.keys[i]! + this.vals[i]!;
  }

  /** Sectors from `s` on that map linearly (up to the next key). */
  runLength(s: number): number {
    const i = this.floor(s);
    return i + 1 < this.keys.length ? this.keys[i + 1]! - s : Number.POSITIVE_INFINITY;
  }

  relocate(dest: number, source: number, count: number): void {
    if (count <= 0) return;
    // Current mapping of [source, source+count), as slices shifted to dest.
    const slices: [number, number][] = [];
    for (let off = 0; off < count; ) {
      slices.push([dest + off, this.phys(source + off)]);
      off += Math.min(this.runLength(source + off), count - off);
    }
    const pin: [number, number] = [dest + count, this.phys(dest + count)];
    // Drop keys in [dest, dest+count], then insert the slices and the pin that keeps what follows.
    const lo = this.lowerBound(dest);
    const hi = this.lowerBound(dest + count + 1);
    const k = [...slices.map((x) => x[0]), pin[0]];
    const v = [...slices.map((x) => x[1]), pin[1]];
    this.keys.splice(lo, hi - lo, ...k);
    this.vals.splice(lo, hi - lo, ...v);
  }

  private lowerBound(s: number): number {
    let lo = 0;
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.keys[mid]! < s) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
