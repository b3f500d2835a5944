/**
 * Runs of origin blocks and the in-core writeset as 32-bit words. A bio, a discard of the whole device or a
 * batch of them costs a few words here, never a number per block.
 */

/** Origin blocks first..last, inclusive. */
export interface BlockRange {
  readonly first: number;
  readonly last: number;
}

/** Sort and merge overlapping or adjacent ranges. */
export function mergeRanges(ranges: readonly BlockRange[]): BlockRange[] {
  const sorted = [...ranges].sort((a, b) => a.first - b.first);
  const out: Array<{ first: number; last: number }> = [];
  for (const r of sorted) {
    const top = out[out.length - 1];
    if (top && r.first <= top.last + 1) top.last = Math.max(top.last, r.last);
    else out.push({ first: r.first, last: r.last });
  }
  return out;
}

/** Bits from..to (inclusive, both within 0..31) of a 32-bit word. */
export function mask32(from: number, to: number): number {
  return ((0xffffffff >>> (31 - to + from)) << from) >>> 0;
}

export function popcount32(v: number): number {
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}

/** Visit the 32-bit words covering bits first..last with the mask of the bits in range. */
export function forEachWord32(first: number, last: number, visit: (word: number, mask: number) => boolean | void): void {
  for (let w = first >>> 5; w <= last >>> 5; w++) {
    const from = w === first >>> 5 ? first & 31 : 0;
    const to = w === last >>> 5 ? last & 31 : 31;
    if (visit(w, mask32(from, to)) === false) return;
  }
}

/** True when every bit of first..last is set. (Every write asks this: plain loop, no closure.) */
export function allSet(bits: Uint32Array, first: number, last: number): boolean {
  const fw = first >>> 5;
  const lw = last >>> 5;
  for (let w = fw; w <= lw; w++) {
    const m = mask32(w === fw ? first & 31 : 0, w === lw ? last & 31 : 31);
    if (((bits[w]! & m) >>> 0) !== m) return false;
  }
  return true;
}

export function setRange(bits: Uint32Array, first: number, last: number): void {
  forEachWord32(first, last, (w, m) => void (bits[w] = (bits[w]! | m) >>> 0));
}

/** Clear every bit from `from` to the end. */
export function clearFrom(bits: Uint32Array, from: number): void {
  const w = from >>> 5;
  if (w >= bits.length) return;
  if (from & 31) bits[w] = (bits[w]! & mask32(0, (from & 31) - 1)) >>> 0;
  bits.fill(0, from & 31 ? w + 1 : w);
}
