import type { MetaBlock } from "./block.js";
import { PArray } from "./array.js";
import type { TransactionManager } from "./transaction-manager.js";

/** persistent-data's bitset (dm-bitset.c): an array of le64 words; bit i is bit i%64 (LSB first) of word i/64. */
export const BITS_PER_WORD = 64;
const ZERO_WORD = Buffer.alloc(8);

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
   * Set `bits` (sorted ascending). Returns the new root and the bits that were not set before; blocks whose bits
   * are all set already are left alone (no copy).
   */
  async setBits(root: MetaBlock, bits: readonly number[]): Promise<{ root: MetaBlock; newlySet: number[] }> {
    const need: number[] = [];
    let lastWord = -1;
    let word: Buffer | undefined;
    for (const bit of bits) {
      const wi = Math.floor(bit / BITS_PER_WORD);
      if (wi !== lastWord) {
        word = await this.array.get(root, wi);
        lastWord = wi;
      }
      const k = bit % BITS_PER_WORD;
      if (((word!.readUInt32LE(k < 32 ? 0 : 4) >>> (k & 31)) & 1) === 0) need.push(bit);
    }
    if (need.length === 0) return { root, newlySet: [] };
    const words = [...new Set(need.map((b) => Math.floor(b / BITS_PER_WORD)))];
    const byWord = new Map<number, number[]>();
    for (const b of need) {
      const w = Math.floor(b / BITS_PER_WORD);
      let list = byWord.get(w);
      if (!list) byWord.set(w, (list = []));
      list.push(b % BITS_PER_WORD);
    }
    root = await this.array.modify(root, words, (ab, slot, wi) => {
      const off = ab.offset(slot);
      for (const k of byWord.get(wi)!) {
        const o = off + (k < 32 ? 0 : 4);
        ab.buf.writeUInt32LE((ab.buf.readUInt32LE(o) | (1 << (k & 31))) >>> 0, o);
      }
    });
    return { root, newlySet: need };
  }

  /** Every set bit below `nrBits`, ascending. */
  async setBitsOf(root: MetaBlock, nrBits: number): Promise<number[]> {
    const out: number[] = [];
    await this.array.walkBlocks(root, (first, ab) => {
      for (let s = 0; s < ab.nr; s++) {
        const base = (first + s) * BITS_PER_WORD;
        for (let half = 0; half < 2; half++) {
          let w = ab.buf.readUInt32LE(ab.offset(s) + 4 * half);
          while (w !== 0) {
            const k = 31 - Math.clz32(w & -w);
            w &= w - 1;
            const bit = base + 32 * half + k;
            if (bit < nrBits) out.push(bit);
          }
        }
      }
    });
    return out;
  }

  del(root: MetaBlock): Promise<void> {
    return this.array.del(root);
  }
}
