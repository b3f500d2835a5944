import { DmError } from "../../../core/errors.js";
import { type BlockValidator, checkBlock, MD_BLOCK_SIZE, type MetaBlock, type MetaIo, stampBlock, SUPERBLOCK_VALIDATOR } from "./block.js";
import type { MetadataSpaceMap } from "./space-map.js";

/** How many clean blocks stay cached (16 MiB): enough for every hot btree path and array block. */
const CLEAN_CACHE_BLOCKS = 4096;
/** Writes in flight at once during a commit. */
const WRITE_BATCH = 64;

export interface Shadow {
  readonly b: MetaBlock;
  /** Writable contents; written (stamped) at commit. */
  readonly buf: Buffer;
  /** The original was shared (count > 1): the caller must take a reference on everything the copy points to. */
  readonly incChildren: boolean;
}

/**
 * The transaction manager (dm-transaction-manager + block manager). Copy-on-write: a block reachable from the
 * last committed superblock is never written; it is shadowed into a block allocated in this transaction, which is
 * then modified in place until commit. Commit writes every dirty block, flushes, writes the superblock, flushes.
 */
export class TransactionManager {
  sm!: MetadataSpaceMap;
  private readonly clean = new Map<MetaBlock, Buffer>();
  private readonly dirty = new Map<MetaBlock, { buf: Buffer; v: BlockValidator }>();
  private readonly shadows = new Set<MetaBlock>();

  constructor(readonly io: MetaIo) {}

  /** Read a block for reading only (the buffer must not be modified). */
  async read(b: MetaBlock, v: BlockValidator): Promise<Buffer> {
    const d = this.dirty.get(b);
    if (d) return d.buf;
    const c = this.clean.get(b);
    if (c) {
      this.clean.delete(b);
      this.clean.set(b, c);
      return c;
    }
    if (b <= 0 || b >= this.io.nrBlocks) throw new DmError("EIO", `metadata block ${b} out of range (device has ${this.io.nrBlocks} blocks)`);
    const buf = await this.io.read(b);
    checkBlock(buf, b, v);
    this.remember(b, buf);
    return buf;
  }

  private remember(b: MetaBlock, buf: Buffer): void {
    this.clean.set(b, buf);
    if (this.clean.size > CLEAN_CACHE_BLOCKS) this.clean.delete(this.clean.keys().next().value!);
  }

  isShadow(b: MetaBlock): boolean {
    return this.shadows.has(b) && this.sm.count(b) === 1;
  }

  /** dm_tm_shadow_block: a writable version of `b`, copied to a new block unless already shadowed this transaction. */
  async shadow(b: MetaBlock, v: BlockValidator): Promise<Shadow> {
    // Written in place only if this transaction made it and nothing else shares it (a block created in this
    // transaction can already be shared, e.g. one full array block inserted many times).
    if (this.shadows.has(b) && this.sm.count(b) === 1) return { b, buf: this.dirty.get(b)!.buf, incChildren: false };
    const src = await this.read(b, v);
    const shared = this.sm.count(b) > 1;
    const nb = this.sm.alloc();
    const buf = Buffer.from(src);
    this.dec(b);
    this.track(nb, buf, v);
    return { b: nb, buf, incChildren: shared };
  }

  /** A fresh zeroed block owned by this transaction (count 1). */
  newBlock(v: BlockValidator): { b: MetaBlock; buf: Buffer } {
    const b = this.sm.alloc();
    const buf = Buffer.alloc(MD_BLOCK_SIZE);
    this.track(b, buf, v);
    return { b, buf };
  }

  private track(b: MetaBlock, buf: Buffer, v: BlockValidator): void {
    this.clean.delete(b);
    this.dirty.set(b, { buf, v });
    this.shadows.add(b);
  }

  inc(b: MetaBlock): void {
    this.sm.inc(b);
  }

  dec(b: MetaBlock): void {
    if (this.sm.dec(b) === 0) {
      // Freed: never written, and its number may be reused by this transaction only if it was never committed.
      this.dirty.delete(b);
      this.shadows.delete(b);
      this.clean.delete(b);
    }
  }

  count(b: MetaBlock): number {
    return this.sm.count(b);
  }

  /**
   * Commit: the space map writes itself (which may allocate), every dirty block is written, FLUSH; then the
   * superblock image built by `packSuperblock` (which must embed the space-map root given) is written, FLUSH.
   */
  async commit(packSuperblock: (smRoot: Buffer) => Buffer): Promise<void> {
    await this.sm.commit();
    const blocks = [...this.dirty.entries()].sort((a, b) => a[0] - b[0]);
    for (let i = 0; i < blocks.length; i += WRITE_BATCH) {
      await Promise.all(
        blocks.slice(i, i + WRITE_BATCH).map(([b, { buf, v }]) => {
          stampBlock(buf, b, v);
          return this.io.write(b, buf);
        }),
      );
    }
    await this.io.flush();
    const sb = packSuperblock(this.sm.rootBytes());
    stampBlock(sb, 0, SUPERBLOCK_VALIDATOR);
    await this.io.write(0, sb);
    await this.io.flush();
    for (const [b, { buf }] of blocks) this.remember(b, buf);
    this.dirty.clear();
    this.shadows.clear();
    this.sm.committed();
  }

  /** Blocks modified in this transaction (for tests and stats). */
  get dirtyCount(): number {
    return this.dirty.size;
  }
}
