import type { MetaBlock } from "./block.js";
import { type ArrayBlock, PArray } from "./array.js";
import type { TransactionManager } from "./transaction-manager.js";
import { mask32, popcount32 } from "../ranges.js";

/** persistent-data's bitset (dm-bitset.c): an array of le64 words; bit i is bit i%64 (LSB first) of word i/64. */
export const BITS_PER_WORD = 64;
const ZERO_WORD = Buffer.alloc(8);

/** The masks of the two 32-bit halves of 64-bit word `wi` covering bits first..last. */
function wordMasks(wi: number, first: number, last: number): [number, number] {
  const from = Math.max(first, wi * 64) - wi * 64;
  const to = Math.min(last, wi * 64 + 63) - wi * 64;
  return [from <= 31 ? mask32(from, Math.min(to, 31)) : 0, to >= 32 ? mask32(Math.max(from, 32) - 32, to - 32) : 0];
}

export class PBitset {
  readonly array: PArray;
  constructor(tm: TransactionManager) {
    this.array = new PArray(tm, 8);
  }

  /** A new all-zero bitset of `nrBits` bits. */
  create(nrBits: number): Promise<MetaBlock> {
    return this.array.resize(this.array.empty(), 0, Math.ceil(nrBits / BITS_PER_WORD), ZERO_WORD);
  }

  async test(root: MetaBlock, bit: number): Promise<boolean> {
    const w = await this.array.get(root, Math.floor(bit / BITS_PER_WORD));
    const k = bit % BITS_PER_WORD;
    return ((w.readUInt32LE(k < 32 ? 0 : 4) >>> (k & 31)) & 1) === 1;
  }

  /**
   * Set bits first..last, one array block at a time; a block whose bits are all set already is left alone (no
   * copy). Returns the new root and how many bits were clear before.
   */
  async setRange(root: MetaBlock, first: number, last: number): Promise<{ root: MetaBlock; newlySet: number }> {
    const max = this.array.max;
    let newlySet = 0;
    const w0 = Math.floor(first / BITS_PER_WORD);
    const w1 = Math.floor(last / BITS_PER_WORD);
    for (let idx = Math.floor(w0 / max); idx <= Math.floor(w1 / max); idx++) {
      const from = Math.max(w0, idx * max);
      const to = Math.min(w1, idx * max + max - 1);
      const missing = (ab: ArrayBlock): number => {
        let n = 0;
        for (let wi = from; wi <= to; wi++) {
          const o = ab.offset(wi - idx * max);
          const [lo, hi] = wordMasks(wi, first, last);
          n += popcount32((lo & ~ab.buf.readUInt32LE(o)) >>> 0) + popcount32((hi & ~ab.buf.readUInt32LE(o + 4)) >>> 0);
        }
        return n;
      };
      const ro = await this.array.readBlockAt(root, idx);
      if (ro && missing(ro) === 0) continue;
      const w = await this.array.shadowAblock(root, idx);
      root = w.root;
      newlySet += missing(w.ab);
      for (let wi = from; wi <= to; wi++) {
        const o = w.ab.offset(wi - idx * max);
        const [lo, hi] = wordMasks(wi, first, last);
        w.ab.buf.writeUInt32LE((w.ab.buf.readUInt32LE(o) | lo) >>> 0, o);
        w.ab.buf.writeUInt32LE((w.ab.buf.readUInt32LE(o + 4) | hi) >>> 0, o + 4);
      }
    }
    return { root, newlySet };
  }

  /** Every 64-bit word in order, as two 32-bit halves (bits past nr_bits are zero on disk). */
  async forEachWord(root: MetaBlock, visit: (wordIndex: number, lo: number, hi: number) => void): Promise<void> {
    await this.array.walkBlocks(root, (first, ab) => {
      for (let s = 0; s < ab.nr; s++) visit(first + s, ab.buf.readUInt32LE(ab.offset(s)), ab.buf.readUInt32LE(ab.offset(s) + 4));
    });
  }

  /** Every set bit below `nrBits`, ascending, without collecting them. */
  async forEachSetBit(root: MetaBlock, nrBits: number, visit: (bit: number) => void): Promise<void> {
    await this.forEachWord(root, (wi, lo, hi) => {
      for (let half = 0; half < 2; half++) {
        let w = half ? hi : lo;
        while (w !== 0) {
          const bit = wi * BITS_PER_WORD + 32 * half + (31 - Math.clz32(w & -w));
          w &= w - 1;
          if (bit < nrBits) visit(bit);
        }
      }
    });
  }

  /**
   * Every set bit in [from, to), ascending, reading only the array blocks that hold the range (a bit range of a
   * large bitset costs what the range costs).
   */
  async forEachSetBitIn(root: MetaBlock, from: number, to: number, visit: (bit: number) => void): Promise<void> {
    if (to <= from) return;
    const max = this.array.max;
    const w0 = Math.floor(from / BITS_PER_WORD);
    const w1 = Math.floor((to - 1) / BITS_PER_WORD);
    for (let idx = Math.floor(w0 / max); idx <= Math.floor(w1 / max); idx++) {
      const ab = await this.array.readBlockAt(root, idx);
      if (!ab) return;
      const last = Math.min(w1, idx * max + ab.nr - 1);
      for (let wi = Math.max(w0, idx * max); wi <= last; wi++) {
        const o = ab.offset(wi - idx * max);
        for (let half = 0; half < 2; half++) {
          let w = ab.buf.readUInt32LE(o + 4 * half);
          while (w !== 0) {
            const bit = wi * BITS_PER_WORD + 32 * half + (31 - Math.clz32(w & -w));
            w &= w - 1;
            if (bit >= from && bit < to) visit(bit);
          }
        }
      }
    }
  }

  /**
   * The set bits from `from` on, at most `maxBits` of them and never past the array block holding `from` (so
   * one call reads one block): an incremental scan. `next` is where the following call starts; ≥ nrBits at the end.
   */
  async scan(root: MetaBlock, nrBits: number, from: number, maxBits: number): Promise<{ bits: number[]; next: number }> {
    const max = this.array.max;
    const wStart = Math.floor(from / BITS_PER_WORD);
    const idx = Math.floor(wStart / max);
    const ab = await this.array.readBlockAt(root, idx);
    const bits: number[] = [];
    if (!ab) return { bits, next: nrBits };
    for (let wi = wStart; wi < idx * max + ab.nr; wi++) {
      const o = ab.offset(wi - idx * max);
      for (let half = 0; half < 2; half++) {
        const base = wi * BITS_PER_WORD + 32 * half;
        let w = ab.buf.readUInt32LE(o + 4 * half);
        const skip = from - base;
        if (skip >= 32) w = 0;
        else if (skip > 0) w = (w & ~mask32(0, skip - 1)) >>> 0;
        while (w !== 0) {
          const bit = base + (31 - Math.clz32(w & -w));
          w = (w & (w - 1)) >>> 0;
          if (bit >= nrBits) return { bits, next: nrBits };
          bits.push(bit);
          if (bits.length === maxBits) return { bits, next: bit + 1 };
        }
      }
    }
    return { bits, next: Math.min(nrBits, (idx * max + ab.nr) * BITS_PER_WORD) };
  }

  del(root: MetaBlock): Promise<void> {
    return this.array.del(root);
  }
}
