import { ARRAY_BLOCK_VALIDATOR, BlockCheckError, type BlockValidator, checkBlock, BTREE_NODE_VALIDATOR, MD_BLOCK_SIZE, type MetaBlock, type MetaIo, SUPERBLOCK_VALIDATOR, blockChecksum } from "../../daemon/targets/era/pdata/block.js";
import { ArrayBlock, arrayMaxEntries } from "../../daemon/targets/era/pdata/array.js";
import { BtreeNode, readLe64 } from "../../daemon/targets/era/pdata/btree.js";
import type { TransactionManager } from "../../daemon/targets/era/pdata/transaction-manager.js";
import { checkNodeShape } from "../../daemon/targets/era/inspect.js";
import { type EraSuperblock, unpackSuperblock } from "../../daemon/targets/era/superblock.js";

/**
 * Damage-tolerant walks for the offline tools, shaped like 0.9.0's visitors: good parts are visited in order,
 * each damaged part is reported once with the range of keys it loses, and the walk goes on. The tools decide
 * whether damage is fatal (dump, invalidate) or reported (check, dump --repair).
 */

export class ToolError extends Error {}

/** tm.read, except that block 0 (the superblock) is read and fails its check as 0.9.0's reads do. */
async function readBlock(tm: TransactionManager, b: MetaBlock, v: BlockValidator): Promise<Buffer> {
  if (b !== 0) return tm.read(b, v);
  const buf = await tm.io.read(0);
  checkBlock(buf, 0, v);
  return buf;
}

/** A lost range [begin, end) of keys (eras, bits or era-array entries) and why. */
export interface Damage {
  readonly desc: string;
  readonly begin: number;
  readonly end: number;
}

/** 0.9.0's words for a block that failed its check or the tools' shape rules. */
export function damageText(e: unknown): string {
  if (e instanceof BlockCheckError) {
    // 0.9.0 tests the checksum before the block number.
    const sum = !e.checksumOk;
    if (e.validator === BTREE_NODE_VALIDATOR) return sum ? `bad checksum in btree node (block ${e.block})` : `bad block nr in btree node (block = ${e.block})`;
    if (e.validator === ARRAY_BLOCK_VALIDATOR) return sum ? "bad checksum in array block node" : "bad block nr in array block";
  }
  return String((e as Error)?.message ?? e).replace(/^btree node \d+: /, "");
}

/** The superblock as era_dump and era_invalidate read it: only the checksum is checked (0.9.0's validator). */
export async function readToolSuperblock(io: MetaIo, location: MetaBlock = 0): Promise<EraSuperblock> {
  const buf = await io.read(location);
  if (buf.length < MD_BLOCK_SIZE || blockChecksum(buf, SUPERBLOCK_VALIDATOR.salt) !== buf.readUInt32LE(0)) throw new ToolError("bad checksum in superblock");
  return unpackSuperblock(buf);
}

/** What era_check says about a readable superblock, in its order; empty when valid. */
export function superblockProblems(sb: EraSuperblock): string[] {
  const p: string[] = [];
  if (sb.magic !== 2126579579) p.push(`magic is incorrect: ${sb.magic}`);
  if (sb.version !== 1) p.push(`version incorrect: ${sb.version}`);
  if (sb.metadataBlockSize !== 8) p.push(`metadata block size incorrect: ${sb.metadataBlockSize}`);
  if (sb.writesetTreeRoot === 0) p.push("writeset tree root points back to the superblock");
  if (sb.eraArrayRoot === 0) p.push("era array root points back to the superblock");
  if (sb.writesetTreeRoot === sb.eraArrayRoot) p.push(`writeset tree root and era array both point to the same block: ${sb.eraArrayRoot}`);
  return p;
}

/**
 * In-order walk of a btree; a node that cannot be read or breaks the tools' shape rules is reported with the
 * key range [its first possible key, the next sibling's key or `keyEnd`) and skipped.
 */
export async function walkTreeTolerant(
  tm: TransactionManager,
  root: MetaBlock,
  valueSize: number,
  keyEnd: number,
  visit: (key: number, value: Buffer) => void | Promise<void>,
  onDamage: (d: Damage) => void | Promise<void>,
): Promise<void> {
  let lastKey = -1;
  const rec = async (b: MetaBlock, isRoot: boolean, lo: number, hi: number, parentKey: number | undefined): Promise<void> => {
    let n: BtreeNode;
    try {
      n = new BtreeNode(await readBlock(tm, b, BTREE_NODE_VALIDATOR));
      n.validate(b);
      checkNodeShape(n, b, isRoot, valueSize, parentKey);
      if (n.isLeaf && n.nr > 0 && n.key(0) <= lastKey) throw new Error(`keys are out of order, the last key of the previous leaf was ${lastKey} and the first key of this leaf is ${n.key(0)}`);
    } catch (e) {
      await onDamage({ desc: damageText(e), begin: lo, end: hi });
      return;
    }
    for (let i = 0; i < n.nr; i++) {
      if (n.isInternal) await rec(n.child(i), false, n.key(i), i + 1 < n.nr ? n.key(i + 1) : hi, n.key(i));
      else {
        lastKey = n.key(i);
        await visit(n.key(i), Buffer.from(n.value(i)));
      }
    }
  };
  await rec(root, true, 0, keyEnd, undefined);
}

/**
 * An array of `length` values walked block by block: `visit(firstIndex, block)` for each readable array block,
 * `onDamage` with the lost index range for each unreadable block, btree node or missing block, in index order.
 */
export async function walkArrayTolerant(
  tm: TransactionManager,
  root: MetaBlock,
  valueSize: number,
  length: number,
  visit: (firstIndex: number, ab: ArrayBlock) => void | Promise<void>,
  onDamage: (d: Damage) => void | Promise<void>,
): Promise<void> {
  const max = arrayMaxEntries(valueSize);
  const nrBlocks = Math.ceil(length / max);
  const span = (k0: number, k1: number, desc: string): Damage => ({ desc, begin: Math.min(length, k0 * max), end: Math.min(length, k1 * max) });
  let expect = 0;
  await walkTreeTolerant(
    tm,
    root,
    8,
    nrBlocks,
    async (key, value) => {
      if (key >= nrBlocks) return;
      if (key > expect) await onDamage(span(expect, key, `lookup of array block ${expect} failed`));
      expect = key + 1;
      const b = readLe64(value);
      let ab: ArrayBlock;
      try {
        ab = new ArrayBlock(await readBlock(tm, b, ARRAY_BLOCK_VALIDATOR));
        ab.validate(b, valueSize);
      } catch (e) {
        await onDamage(span(key, key + 1, damageText(e)));
        return;
      }
      await visit(key * max, ab);
    },
    async (d) => {
      if (d.begin > expect) await onDamage(span(expect, d.begin, `lookup of array block ${expect} failed`));
      expect = Math.max(expect, Math.min(d.end, nrBlocks));
      await onDamage(span(d.begin, Math.min(d.end, nrBlocks), d.desc));
    },
  );
  if (expect < nrBlocks) await onDamage(span(expect, nrBlocks, `lookup of array block ${expect} failed`));
}

/** A writeset's bits, as far as they can be read: `present[b]` says whether bit b's block was readable. */
export interface TolerantBitset {
  readonly bits: Uint8Array;
  /** Bit ranges that could not be read, merged, ascending. */
  readonly missing: Array<{ begin: number; end: number }>;
}

export async function readBitsetTolerant(tm: TransactionManager, root: MetaBlock, nrBits: number): Promise<TolerantBitset> {
  const bits = new Uint8Array(nrBits);
  const missing: Array<{ begin: number; end: number }> = [];
  const lose = (begin: number, end: number): void => {
    if (end <= begin) return;
    const last = missing[missing.length - 1];
    if (last && last.end >= begin) last.end = Math.max(last.end, end);
    else missing.push({ begin, end });
  };
  const words = Math.ceil(nrBits / 64);
  await walkArrayTolerant(
    tm,
    root,
    8,
    words,
    (first, ab) => {
      for (let s = 0; s < ab.nr; s++) {
        const lo = ab.buf.readUInt32LE(ab.offset(s));
        const hi = ab.buf.readUInt32LE(ab.offset(s) + 4);
        const base = (first + s) * 64;
        for (let k = 0; k < 64 && base + k < nrBits; k++) bits[base + k] = (k < 32 ? lo >>> k : hi >>> (k - 32)) & 1;
      }
      const max = arrayMaxEntries(8);
      // A short block loses the words it should have held.
      lose(Math.min(nrBits, (first + ab.nr) * 64), Math.min(nrBits, Math.min(words, first + max) * 64));
    },
    (d) => lose(Math.min(nrBits, d.begin * 64), Math.min(nrBits, d.end * 64)),
  );
  return { bits, missing };
}

/** True when bit b is in a readable part of the bitset. */
export function bitPresent(t: TolerantBitset, b: number): boolean {
  for (const m of t.missing) if (b >= m.begin && b < m.end) return false;
  return true;
}
