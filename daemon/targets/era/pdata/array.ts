import { DmError } from "../../../core/errors.js";
import { ARRAY_BLOCK_VALIDATOR, MD_BLOCK_SIZE, type MetaBlock } from "./block.js";
import * as btree from "./btree.js";
import type { TransactionManager } from "./transaction-manager.js";

/**
 * persistent-data's array (dm-array.c): a btree keyed by array-block index whose values are le64 locations of
 * array blocks, each holding up to floor(4072 / value_size) packed values. The values stored here (era numbers,
 * bitset words) hold no references, so array blocks are leaves of the reference graph.
 */
const ABLOCK_HEADER = 24;

export const arrayMaxEntries = (valueSize: number): number => Math.floor((MD_BLOCK_SIZE - ABLOCK_HEADER) / valueSize);

/** The btree's values are array-block locations: a copied leaf shares its array blocks. */
export function ablockValueType(tm: TransactionManager): btree.ValueType {
  return {
    size: 8,
    inc: (v) => tm.inc(btree.readLe64(v)),
    dec: async (v) => tm.dec(btree.readLe64(v)),
  };
}

export class ArrayBlock {
  constructor(readonly buf: Buffer) {}
  static init(buf: Buffer, valueSize: number): ArrayBlock {
    buf.fill(0, 4);
    buf.writeUInt32LE(arrayMaxEntries(valueSize), 4);
    buf.writeUInt32LE(0, 8);
    buf.writeUInt32LE(valueSize, 12);
    return new ArrayBlock(buf);
  }
  get max(): number {
    return this.buf.readUInt32LE(4);
  }
  get nr(): number {
    return this.buf.readUInt32LE(8);
  }
  set nr(n: number) {
    this.buf.writeUInt32LE(n, 8);
  }
  get valueSize(): number {
    return this.buf.readUInt32LE(12);
  }
  offset(i: number): number {
    return ABLOCK_HEADER + this.valueSize * i;
  }
  validate(b: MetaBlock, valueSize: number): void {
    if (this.valueSize !== valueSize || this.max !== arrayMaxEntries(valueSize) || this.nr > this.max) {
      throw new DmError("EILSEQ", `array block ${b}: bad header (value_size ${this.valueSize}, max ${this.max}, nr ${this.nr})`);
    }
  }
}

export async function readArrayBlock(tm: TransactionManager, b: MetaBlock, valueSize: number): Promise<ArrayBlock> {
  const ab = new ArrayBlock(await tm.read(b, ARRAY_BLOCK_VALIDATOR));
  ab.validate(b, valueSize);
  return ab;
}

/** An array of fixed-size values, identified by its btree root (which changes with every modification). */
export class PArray {
  readonly max: number;
  private readonly vt: btree.ValueType;
  constructor(
    private readonly tm: TransactionManager,
    readonly valueSize: number,
  ) {
    this.max = arrayMaxEntries(valueSize);
    this.vt = ablockValueType(tm);
  }

  empty(): MetaBlock {
    return btree.emptyTree(this.tm, 8);
  }

  private newAblock(nr: number, fill: Buffer): { b: MetaBlock; ab: ArrayBlock } {
    const { b, buf } = this.tm.newBlock(ARRAY_BLOCK_VALIDATOR);
    const ab = ArrayBlock.init(buf, this.valueSize);
    for (let i = 0; i < nr; i++) fill.copy(buf, ab.offset(i), 0, this.valueSize);
    ab.nr = nr;
    return { b, ab };
  }

  /** Array block `index`, read-only (undefined past the end). */
  async readBlockAt(root: MetaBlock, index: number): Promise<ArrayBlock | undefined> {
    const v = await btree.lookup(this.tm, root, index);
    return v ? readArrayBlock(this.tm, btree.readLe64(v), this.valueSize) : undefined;
  }

  /** A writable array block `index`, shadowed and re-pointed in the btree. */
  async shadowAblock(root: MetaBlock, index: number): Promise<{ root: MetaBlock; ab: ArrayBlock }> {
    const v = await btree.lookup(this.tm, root, index);
    if (!v) throw new DmError("EILSEQ", `array: block ${index} missing`);
    const old = btree.readLe64(v);
    const s = await this.tm.shadow(old, ARRAY_BLOCK_VALIDATOR);
    const ab = new ArrayBlock(s.buf);
    ab.validate(old, this.valueSize);
    if (s.b !== old) {
      // The shadow already dropped the btree's reference on `old`; the insert below drops it again on overwrite.
      this.tm.inc(old);
      root = (await btree.insert(this.tm, root, index, btree.le64(s.b), this.vt)).root;
    }
    return { root, ab };
  }

  /**
   * dm_array_resize from `oldSize` to `newSize` values; new values are `fill`. Whole new blocks share one array
   * block (one reference per btree entry), as the kernel does, so growing costs a block plus btree nodes.
   */
  async resize(root: MetaBlock, oldSize: number, newSize: number, fill: Buffer): Promise<MetaBlock> {
    const max = this.max;
    if (newSize === oldSize) return root;
    if (newSize > oldSize) {
      let done = oldSize;
      if (oldSize % max !== 0) {
        const idx = Math.floor(oldSize / max);
        const r = await this.shadowAblock(root, idx);
        root = r.root;
        const upto = Math.min(newSize, (idx + 1) * max);
        for (let i = oldSize % max; i < upto - idx * max; i++) fill.copy(r.ab.buf, r.ab.offset(i), 0, this.valueSize);
        r.ab.nr = upto - idx * max;
        done = upto;
      }
      const firstFull = done / max;
      const endFull = Math.floor(newSize / max);
      if (endFull > firstFull) {
        const { b } = this.newAblock(max, fill);
        for (let k = firstFull; k < endFull; k++) {
          if (k > firstFull) this.tm.inc(b);
          root = (await btree.insert(this.tm, root, k, btree.le64(b), this.vt)).root;
        }
        done = endFull * max;
      }
      if (newSize > done) {
        const { b } = this.newAblock(newSize - done, fill);
        root = (await btree.insert(this.tm, root, done / max, btree.le64(b), this.vt)).root;
      }
      return root;
    }
    const oldBlocks = Math.ceil(oldSize / max);
    const newBlocks = Math.ceil(newSize / max);
    for (let k = oldBlocks - 1; k >= newBlocks; k--) root = (await btree.remove(this.tm, root, k, this.vt)).root;
    if (newSize % max !== 0) {
      const r = await this.shadowAblock(root, newBlocks - 1);
      root = r.root;
      const keep = newSize % max;
      r.ab.buf.fill(0, r.ab.offset(keep), r.ab.offset(r.ab.nr));
      r.ab.nr = keep;
    }
    return root;
  }

  async get(root: MetaBlock, i: number): Promise<Buffer> {
    const v = await btree.lookup(this.tm, root, Math.floor(i / this.max));
    if (!v) throw new DmError("ENODATA", `array index ${i} out of range`);
    const ab = await readArrayBlock(this.tm, btree.readLe64(v), this.valueSize);
    const k = i % this.max;
    if (k >= ab.nr) throw new DmError("ENODATA", `array index ${i} out of range`);
    return Buffer.from(ab.buf.subarray(ab.offset(k), ab.offset(k + 1)));
  }

  /**
   * Modify values in place: `update` is called once per touched array block with that block's writable values;
   * `indexes` must be sorted. Returns the new root.
   */
  async modify(root: MetaBlock, indexes: readonly number[], update: (ab: ArrayBlock, slot: number, index: number) => void): Promise<MetaBlock> {
    let cur: { idx: number; ab: ArrayBlock } | undefined;
    for (const i of indexes) {
      const idx = Math.floor(i / this.max);
      if (!cur || cur.idx !== idx) {
        const r = await this.shadowAblock(root, idx);
        root = r.root;
        cur = { idx, ab: r.ab };
      }
      const slot = i % this.max;
      if (slot >= cur.ab.nr) throw new DmError("ENODATA", `array index ${i} out of range`);
      update(cur.ab, slot, i);
    }
    return root;
  }

  async set(root: MetaBlock, i: number, value: Buffer): Promise<MetaBlock> {
    return this.modify(root, [i], (ab, slot) => value.copy(ab.buf, ab.offset(slot), 0, this.valueSize));
  }

  /** Visit every array block in order: (first index, block). */
  async walkBlocks(root: MetaBlock, visit: (firstIndex: number, ab: ArrayBlock, b: MetaBlock) => void | Promise<void>): Promise<void> {
    await btree.walk(this.tm, root, async (key, value) => {
      const b = btree.readLe64(value);
      await visit(key * this.max, await readArrayBlock(this.tm, b, this.valueSize), b);
    });
  }

  /** dm_array_del. */
  del(root: MetaBlock): Promise<void> {
    return btree.deleteTree(this.tm, root, this.vt);
  }
}
