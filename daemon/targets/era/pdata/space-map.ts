import { DmError } from "../../../core/errors.js";
import { type MetaBlock, SM_BITMAP_VALIDATOR, SM_INDEX_VALIDATOR } from "./block.js";
import * as btree from "./btree.js";
import type { TransactionManager } from "./transaction-manager.js";

/** Two bits per block, 4080 bytes of bitmap per block. */
export const ENTRIES_PER_BITMAP = 16320;
export const MAX_BITMAPS = 255;
export const MAX_METADATA_BLOCKS = ENTRIES_PER_BITMAP * MAX_BITMAPS;
const BITMAP_HEADER = 16;
const INDEX_ENTRY_OFFSET = 16;
const INDEX_ENTRY_SIZE = 16;
/** Ref-count tree leaves hold le32 counts. */
const REF_VT: btree.ValueType = { size: 4 };

export interface SpaceMapRoot {
  nrBlocks: number;
  nrAllocated: number;
  bitmapRoot: MetaBlock;
  refCountRoot: MetaBlock;
}

export function decodeSmRoot(buf: Buffer): SpaceMapRoot {
  return { nrBlocks: btree.readLe64(buf, 0), nrAllocated: btree.readLe64(buf, 8), bitmapRoot: btree.readLe64(buf, 16), refCountRoot: btree.readLe64(buf, 24) };
}

/** Count of entry `e` of a bitmap block: bit 2k is the high bit, bit 2k+1 the low bit. */
export function bitmapEntry(buf: Buffer, e: number): number {
  const word = buf.readUInt32LE(BITMAP_HEADER + 4 * (e >> 4));
  const k = 2 * (e & 15);
  return (((word >>> k) & 1) << 1) | ((word >>> (k + 1)) & 1);
}

export interface IndexEntry {
  blocknr: MetaBlock;
  nrFree: number;
  noneFreeBefore: number;
}

export function readIndexEntry(buf: Buffer, i: number): IndexEntry {
  const o = INDEX_ENTRY_OFFSET + INDEX_ENTRY_SIZE * i;
  return { blocknr: btree.readLe64(buf, o), nrFree: buf.readUInt32LE(o + 8), noneFreeBefore: buf.readUInt32LE(o + 12) };
}

/**
 * The metadata space map (dm-space-map-metadata + the disk layout of space-map-common): a reference count per
 * metadata block. All counts live in memory; the on-disk form (index block → bitmaps with 2-bit counts, and a
 * ref-count btree for counts ≥ 3) is rewritten copy-on-write at commit. Allocation searches blocks free both now
 * and in the last commit, so a block freed in this transaction is not reused before the commit.
 */
export class MetadataSpaceMap {
  private readonly counts: Uint32Array;
  /** Committed count of every block changed in this transaction. */
  private readonly committedDiff = new Map<MetaBlock, number>();
  private readonly dirtyBitmaps = new Set<number>();
  private readonly refDirty = new Set<MetaBlock>();
  /** What the ref-count tree holds now. */
  private readonly refTree = new Map<MetaBlock, number>();
  private readonly bitmapLocs: MetaBlock[];
  private readonly nrFree: number[];
  private readonly noneFreeBefore: number[];
  private allocated = 0;
  /** nr_allocated at the last commit, and blocks allocated since (the kernel's allocated_this_transaction). */
  private committedAllocated = 0;
  private allocatedThisTransaction = 0;
  private hint = 0;

  private constructor(
    private readonly tm: TransactionManager,
    readonly nrBlocks: number,
    private indexLoc: MetaBlock,
    private refRoot: MetaBlock,
  ) {
    this.counts = new Uint32Array(nrBlocks);
    const nrBitmaps = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
    this.bitmapLocs = new Array<number>(nrBitmaps).fill(0);
    this.nrFree = new Array<number>(nrBitmaps).fill(0);
    this.noneFreeBefore = new Array<number>(nrBitmaps).fill(0);
  }

  /**
   * A fresh space map over `nrBlocks` blocks (capped), laid out as the kernel does: block 0 (the superblock) is
   * counted, then the index block, the empty ref-count tree and the bitmaps are allocated in that order.
   */
  static create(tm: TransactionManager, nrBlocks: number): MetadataSpaceMap {
    const n = Math.min(nrBlocks, MAX_METADATA_BLOCKS);
    const sm = new MetadataSpaceMap(tm, n, 0, 0);
    tm.sm = sm;
    sm.setCount(0, 1);
    sm.indexLoc = tm.newBlock(SM_INDEX_VALIDATOR).b;
    sm.refRoot = btree.emptyTree(tm, REF_VT.size);
    for (let i = 0; i < sm.bitmapLocs.length; i++) sm.bitmapLocs[i] = tm.newBlock(SM_BITMAP_VALIDATOR).b;
    return sm;
  }

  static async open(tm: TransactionManager, root: SpaceMapRoot): Promise<MetadataSpaceMap> {
    if (root.nrBlocks > MAX_METADATA_BLOCKS || root.nrBlocks > tm.io.nrBlocks) {
      throw new DmError("EINVAL", `space map covers ${root.nrBlocks} blocks but the metadata device has ${tm.io.nrBlocks}`);
    }
    const sm = new MetadataSpaceMap(tm, root.nrBlocks, root.bitmapRoot, root.refCountRoot);
    tm.sm = sm;
    const index = await tm.read(root.bitmapRoot, SM_INDEX_VALIDATOR);
    for (let i = 0; i < sm.bitmapLocs.length; i++) {
      const ie = readIndexEntry(index, i);
      sm.bitmapLocs[i] = ie.blocknr;
      sm.nrFree[i] = ie.nrFree;
      sm.noneFreeBefore[i] = ie.noneFreeBefore;
      const bm = await tm.read(ie.blocknr, SM_BITMAP_VALIDATOR);
      const base = i * ENTRIES_PER_BITMAP;
      const end = Math.min(ENTRIES_PER_BITMAP, root.nrBlocks - base);
      for (let e = 0; e < end; e++) {
        const c = bitmapEntry(bm, e);
        sm.counts[base + e] = c;
        if (c) sm.allocated++;
      }
    }
    await btree.walk(tm, root.refCountRoot, (key, value) => {
      if (key >= root.nrBlocks) throw new DmError("EILSEQ", `ref-count tree holds block ${key} beyond the space map`);
      if (sm.counts[key] !== 3) throw new DmError("EILSEQ", `ref-count tree holds block ${key} whose bitmap count is ${sm.counts[key]}`);
      sm.counts[key] = value.readUInt32LE(0);
      sm.refTree.set(key, sm.counts[key]!);
    });
    sm.committedAllocated = sm.allocated;
    return sm;
  }

  count(b: MetaBlock): number {
    if (b >= this.nrBlocks) throw new DmError("EIO", `metadata block ${b} beyond the space map (${this.nrBlocks})`);
    return this.counts[b]!;
  }

  private committedCount(b: MetaBlock): number {
    const c = this.committedDiff.get(b);
    return c === undefined ? this.counts[b]! : c;
  }

  private setCount(b: MetaBlock, v: number): void {
    const old = this.counts[b]!;
    if (!this.committedDiff.has(b)) this.committedDiff.set(b, old);
    this.counts[b] = v;
    if (old === 0 && v !== 0) this.allocated++;
    else if (old !== 0 && v === 0) this.allocated--;
    this.dirtyBitmaps.add(Math.floor(b / ENTRIES_PER_BITMAP));
    if (old >= 3 || v >= 3 || this.refTree.has(b)) this.refDirty.add(b);
  }

  /** A block free now and at the last commit, with count 1. ENOSPC when none is left. */
  alloc(): MetaBlock {
    const n = this.nrBlocks;
    for (let pass = 0; pass < 2; pass++) {
      const from = pass === 0 ? this.hint : 0;
      const to = pass === 0 ? n : this.hint;
      for (let b = from; b < to; b++) {
        if (this.counts[b] === 0 && this.committedCount(b) === 0) {
          this.setCount(b, 1);
          this.allocatedThisTransaction++;
          this.hint = b + 1;
          return b;
        }
      }
    }
    throw new DmError("ENOSPC", `metadata device full (${n} blocks of 4 KiB, all in use)`);
  }

  inc(b: MetaBlock): void {
    this.setCount(b, this.count(b) + 1);
  }

  /** Returns the new count. */
  dec(b: MetaBlock): number {
    const c = this.count(b);
    if (c === 0) throw new DmError("EILSEQ", `metadata block ${b}: reference count would go below zero`);
    this.setCount(b, c - 1);
    return c - 1;
  }

  get nrAllocated(): number {
    return this.allocated;
  }

  get nrFreeBlocks(): number {
    return this.nrBlocks - this.allocated;
  }

  /**
   * Blocks in use as the kernel's status counts them: allocated at the last commit plus every allocation since,
   * even of blocks freed again (their space comes back only at the commit).
   */
  get nrUsedInTransaction(): number {
    return this.committedAllocated + this.allocatedThisTransaction;
  }

  /**
   * Write the space map into this transaction: shadow the index block, bring the ref-count tree up to date,
   * shadow each changed bitmap, repeat until writing the space map stops changing it, then encode.
   */
  async commit(): Promise<void> {
    if (this.committedDiff.size === 0) return;
    const tm = this.tm;
    this.indexLoc = (await tm.shadow(this.indexLoc, SM_INDEX_VALIDATOR)).b;
    for (;;) {
      let changed = false;
      if (this.refDirty.size) {
        changed = true;
        const todo = [...this.refDirty].sort((a, b) => a - b);
        this.refDirty.clear();
        for (const b of todo) {
          const c = this.counts[b]!;
          const have = this.refTree.get(b);
          if (c >= 3 && have !== c) {
            const v = Buffer.alloc(4);
            v.writeUInt32LE(c, 0);
            this.refRoot = (await btree.insert(tm, this.refRoot, b, v, REF_VT)).root;
            this.refTree.set(b, c);
          } else if (c < 3 && have !== undefined) {
            this.refRoot = (await btree.remove(tm, this.refRoot, b, REF_VT)).root;
            this.refTree.delete(b);
          }
        }
      }
      for (const i of [...this.dirtyBitmaps]) {
        if (!tm.isShadow(this.bitmapLocs[i]!)) {
          this.bitmapLocs[i] = (await tm.shadow(this.bitmapLocs[i]!, SM_BITMAP_VALIDATOR)).b;
          changed = true;
        }
      }
      if (!changed) break;
    }
    for (const i of this.dirtyBitmaps) this.encodeBitmap(i, (await tm.shadow(this.bitmapLocs[i]!, SM_BITMAP_VALIDATOR)).buf);
    this.dirtyBitmaps.clear();
    const index = (await tm.shadow(this.indexLoc, SM_INDEX_VALIDATOR)).buf;
    index.fill(0, 4);
    for (let i = 0; i < this.bitmapLocs.length; i++) {
      const o = INDEX_ENTRY_OFFSET + INDEX_ENTRY_SIZE * i;
      index.writeUInt32LE(this.bitmapLocs[i]! >>> 0, o);
      index.writeUInt32LE(Math.floor(this.bitmapLocs[i]! / 0x1_0000_0000), o + 4);
      index.writeUInt32LE(this.nrFree[i]!, o + 8);
      index.writeUInt32LE(this.noneFreeBefore[i]!, o + 12);
    }
  }

  private encodeBitmap(i: number, buf: Buffer): void {
    buf.fill(0, 4);
    const base = i * ENTRIES_PER_BITMAP;
    const end = Math.min(ENTRIES_PER_BITMAP, this.nrBlocks - base);
    let free = 0;
    let firstFree = -1;
    for (let w = 0; w * 16 < end; w++) {
      let word = 0;
      for (let k = 0; k < 16 && w * 16 + k < end; k++) {
        const c = Math.min(3, this.counts[base + w * 16 + k]!);
        if (c === 0) {
          free++;
          if (firstFree < 0) firstFree = w * 16 + k;
        }
        word |= (((c >> 1) & 1) | ((c & 1) << 1)) << (2 * k);
      }
      buf.writeUInt32LE(word >>> 0, BITMAP_HEADER + 4 * w);
    }
    this.nrFree[i] = free;
    this.noneFreeBefore[i] = firstFree < 0 ? end : firstFree;
  }

  /** The 32-byte root stored in the superblock (valid after commit()). */
  rootBytes(): Buffer {
    const buf = Buffer.alloc(32);
    buf.set(btree.le64(this.nrBlocks), 0);
    buf.set(btree.le64(this.allocated), 8);
    buf.set(btree.le64(this.indexLoc), 16);
    buf.set(btree.le64(this.refRoot), 24);
    return buf;
  }

  /** The transaction is on disk: its counts become the committed view. */
  committed(): void {
    this.committedDiff.clear();
    this.committedAllocated = this.allocated;
    this.allocatedThisTransaction = 0;
  }

  /** Every block's count (for checkers). */
  snapshotCounts(): Uint32Array {
    return Uint32Array.from(this.counts);
  }
}
