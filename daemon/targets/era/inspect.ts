import { DmError } from "../../core/errors.js";
import { ARRAY_BLOCK_VALIDATOR, BTREE_NODE_VALIDATOR, type MetaBlock, type MetaIo, SM_BITMAP_VALIDATOR, SM_INDEX_VALIDATOR, SUPERBLOCK_VALIDATOR } from "./pdata/block.js";
import { BtreeNode, INTERNAL_NODE, LEAF_NODE, maxEntriesFor, readLe64 } from "./pdata/btree.js";
import { ArrayBlock, arrayMaxEntries } from "./pdata/array.js";
import { bitmapEntry, ENTRIES_PER_BITMAP, MAX_METADATA_BLOCKS, readIndexEntry } from "./pdata/space-map.js";
import { TransactionManager } from "./pdata/transaction-manager.js";
import { decodeSuperblock, decodeWriteset, type EraSuperblock, WRITESET_VALUE_SIZE } from "./superblock.js";

/**
 * Read-only views of era metadata for the offline tools and for tests: the superblock, writesets and era array
 * as era_dump sees them, and a full reference-count check (which no thin-provisioning tool does, though the
 * kernel allocates by those counts).
 */

export async function readSuperblock(io: MetaIo, location: MetaBlock = 0): Promise<EraSuperblock> {
  if (io.nrBlocks < 1) throw new DmError("EINVAL", "Metadata device/file too small.  Is this binary metadata?");
  return decodeSuperblock(await io.read(location), location);
}

/** A reader over a committed image: no space map needed. */
export const readerTm = (io: MetaIo): TransactionManager => new TransactionManager(io);

export interface WritesetContents {
  era: number;
  nrBits: number;
  root: MetaBlock;
  /** One byte per bit (0/1), nrBits long. */
  bits: Uint8Array;
}

async function node(tm: TransactionManager, b: MetaBlock): Promise<BtreeNode> {
  const n = new BtreeNode(await tm.read(b, BTREE_NODE_VALIDATOR));
  n.validate(b);
  return n;
}

/** In-order (key, value) walk with the tools' shape rules enforced (keys ascending, non-root nodes ≥ max/3). */
export async function walkBtree(tm: TransactionManager, root: MetaBlock, valueSize: number, visit: (key: number, value: Buffer) => void | Promise<void>): Promise<void> {
  let lastKey = -1;
  const rec = async (b: MetaBlock, isRoot: boolean, parentKey: number | undefined): Promise<void> => {
    const n = await node(tm, b);
    checkNodeShape(n, b, isRoot, valueSize, parentKey);
    for (let i = 0; i < n.nr; i++) {
      const k = n.key(i);
      if (n.isInternal) await rec(n.child(i), false, k);
      else {
        if (k <= lastKey) throw new DmError("EILSEQ", `btree node ${b}: keys out of order (${k} after ${lastKey})`);
        lastKey = k;
        await visit(k, Buffer.from(n.value(i)));
      }
    }
  };
  await rec(root, true, undefined);
}

export function checkNodeShape(n: BtreeNode, b: MetaBlock, isRoot: boolean, leafValueSize: number, parentKey: number | undefined): void {
  if (n.max % 3 !== 0) throw new DmError("EILSEQ", `btree node ${b}: max_entries ${n.max} not divisible by 3`);
  if (!isRoot && n.nr < Math.floor(n.max / 3)) throw new DmError("EILSEQ", `btree node ${b}: too few entries in btree_node: ${n.nr}, expected at least ${Math.floor(n.max / 3)}`);
  const want = n.isInternal ? 8 : leafValueSize;
  if (n.valueSize !== want || n.max !== maxEntriesFor(want)) throw new DmError("EILSEQ", `btree node ${b}: value size ${n.valueSize}, expected ${want}`);
  if ((n.flags & (INTERNAL_NODE | LEAF_NODE)) === (INTERNAL_NODE | LEAF_NODE)) throw new DmError("EILSEQ", `btree node ${b}: both internal and leaf`);
  for (let i = 1; i < n.nr; i++) if (n.key(i) <= n.key(i - 1)) throw new DmError("EILSEQ", `btree node ${b}: keys out of order`);
  if (parentKey !== undefined && n.nr > 0 && n.key(0) < parentKey) throw new DmError("EILSEQ", `btree node ${b}: first key ${n.key(0)} below its parent's key ${parentKey}`);
}

/** Every array block of an array, in order. */
export async function walkArray(tm: TransactionManager, root: MetaBlock, valueSize: number, visit: (firstIndex: number, ab: ArrayBlock) => void): Promise<void> {
  const max = arrayMaxEntries(valueSize);
  let expect = 0;
  await walkBtree(tm, root, 8, async (key, value) => {
    if (key !== expect) throw new DmError("EILSEQ", `array: missing array block ${expect}`);
    expect++;
    const b = readLe64(value);
    const ab = new ArrayBlock(await tm.read(b, ARRAY_BLOCK_VALIDATOR));
    ab.validate(b, valueSize);
    visit(key * max, ab);
  });
}

export async function readBitset(tm: TransactionManager, root: MetaBlock, nrBits: number): Promise<Uint8Array> {
  const bits = new Uint8Array(nrBits);
  let words = 0;
  await walkArray(tm, root, 8, (first, ab) => {
    for (let s = 0; s < ab.nr; s++) {
      const lo = ab.buf.readUInt32LE(ab.offset(s));
      const hi = ab.buf.readUInt32LE(ab.offset(s) + 4);
      const base = (first + s) * 64;
      for (let k = 0; k < 64 && base + k < nrBits; k++) bits[base + k] = ((k < 32 ? lo >>> k : hi >>> (k - 32)) & 1) as 0 | 1;
    }
    words = first + ab.nr;
  });
  if (words * 64 < nrBits) throw new DmError("EILSEQ", `writeset: missing bits [${words * 64}, ${nrBits})`);
  return bits;
}

export async function readWritesets(tm: TransactionManager, root: MetaBlock): Promise<WritesetContents[]> {
  const out: Array<Omit<WritesetContents, "bits">> = [];
  await walkBtree(tm, root, WRITESET_VALUE_SIZE, (era, v) => void out.push({ era, ...decodeWriteset(v) }));
  const result: WritesetContents[] = [];
  for (const w of out) result.push({ ...w, bits: await readBitset(tm, w.root, w.nrBits) });
  return result;
}

export async function readEraArray(tm: TransactionManager, root: MetaBlock): Promise<Uint32Array> {
  const chunks: Array<{ first: number; vals: Uint32Array }> = [];
  let len = 0;
  await walkArray(tm, root, 4, (first, ab) => {
    const vals = new Uint32Array(ab.nr);
    for (let s = 0; s < ab.nr; s++) vals[s] = ab.buf.readUInt32LE(ab.offset(s));
    chunks.push({ first, vals });
    len = first + ab.nr;
  });
  const eras = new Uint32Array(len);
  for (const c of chunks) eras.set(c.vals, c.first);
  return eras;
}

// ---------------------------------------------------------------------------------------------------------------
// Reference counts

export interface RefCountReport {
  /** Problems found; empty when the metadata is consistent. */
  problems: string[];
  /** Blocks referenced from the superblock(s). */
  reachable: number;
  nrAllocated: number;
}

/**
 * Walk every structure from the superblock (and the metadata snapshot, if any), count the references to each
 * block, and compare with the space map's bitmaps, ref-count tree and nr_allocated. Also enforces the btree
 * shape rules the tools check, so tsdm never writes something the tools reject.
 */
export async function checkReferenceCounts(io: MetaIo): Promise<RefCountReport> {
  const problems: string[] = [];
  const sb = await readSuperblock(io, 0);
  const tm = readerTm(io);
  const nrBlocks = sb.smRoot.nrBlocks;
  if (nrBlocks > io.nrBlocks || nrBlocks > MAX_METADATA_BLOCKS) problems.push(`space map covers ${nrBlocks} blocks, device has ${io.nrBlocks}`);
  const expected = new Uint32Array(Math.max(nrBlocks, io.nrBlocks));
  const ref = (b: MetaBlock, what: string): boolean => {
    if (b >= expected.length || b === 0) {
      problems.push(`${what}: reference to invalid block ${b}`);
      return false;
    }
    return ++expected[b]! === 1;
  };
  expected[0] = 1;

  const visitTree = async (root: MetaBlock, valueSize: number, what: string, onValue: (v: Buffer) => Promise<void>, isRoot = true, parentKey?: number): Promise<void> => {
    if (!ref(root, what)) return;
    let n: BtreeNode;
    try {
      n = await node(tm, root);
      checkNodeShape(n, root, isRoot, valueSize, parentKey);
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
      return;
    }
    for (let i = 0; i < n.nr; i++) {
      if (n.isInternal) await visitTree(n.child(i), valueSize, what, onValue, false, n.key(i));
      else await onValue(Buffer.from(n.value(i)));
    }
  };
  const visitArray = async (root: MetaBlock, valueSize: number, what: string): Promise<void> =>
    visitTree(root, 8, what, async (v) => {
      const b = readLe64(v);
      if (!ref(b, `${what} array block`)) return;
      try {
        const ab = new ArrayBlock(await tm.read(b, ARRAY_BLOCK_VALIDATOR));
        ab.validate(b, valueSize);
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    });
  const visitEraRoots = async (s: EraSuperblock, label: string): Promise<void> => {
    await visitTree(s.writesetTreeRoot, WRITESET_VALUE_SIZE, `${label} writeset tree`, async (v) => visitArray(decodeWriteset(v).root, 8, `${label} writeset bitset`));
    await visitArray(s.eraArrayRoot, 4, `${label} era array`);
  };

  // The space map's own blocks.
  const nrBitmaps = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
  const counts = new Uint32Array(nrBlocks);
  let index: Buffer | undefined;
  if (ref(sb.smRoot.bitmapRoot, "space map index")) {
    try {
      index = await tm.read(sb.smRoot.bitmapRoot, SM_INDEX_VALIDATOR);
    } catch (e) {
      problems.push(`space map index: ${(e as Error).message}`);
    }
  }
  if (index) {
    for (let i = 0; i < nrBitmaps; i++) {
      const ie = readIndexEntry(index, i);
      if (!ref(ie.blocknr, `space map bitmap ${i}`)) continue;
      try {
        const bm = await tm.read(ie.blocknr, SM_BITMAP_VALIDATOR);
        const base = i * ENTRIES_PER_BITMAP;
        const end = Math.min(ENTRIES_PER_BITMAP, nrBlocks - base);
        let free = 0;
        for (let e = 0; e < end; e++) {
          counts[base + e] = bitmapEntry(bm, e);
          if (counts[base + e] === 0) free++;
        }
        // nr_free is a hint (the kernel starts a partial bitmap at 16320); only "none free" changes behaviour.
        if (ie.nrFree === 0 && free !== 0) problems.push(`space map bitmap ${i}: index says no free entries but ${free} are free`);
      } catch (e) {
        problems.push(`space map bitmap ${i}: ${(e as Error).message}`);
      }
    }
  }
  const treeCounts = new Map<number, number>();
  await visitTree(sb.smRoot.refCountRoot, 4, "space map ref-count tree", async () => undefined);
  try {
    await walkBtree(tm, sb.smRoot.refCountRoot, 4, (k, v) => void treeCounts.set(k, v.readUInt32LE(0)));
  } catch (e) {
    problems.push(`space map ref-count tree: ${(e as Error).message}`);
  }
  for (const [k, c] of treeCounts) {
    if (k >= nrBlocks) problems.push(`ref-count tree: block ${k} beyond the space map`);
    else if (counts[k] !== 3) problems.push(`ref-count tree: block ${k} has count ${c} but its bitmap entry is ${counts[k]}`);
    else if (c < 3) problems.push(`ref-count tree: block ${k} has count ${c} < 3`);
    else counts[k] = c;
  }
  for (let b = 0; b < nrBlocks; b++) if (counts[b] === 3 && !treeCounts.has(b)) problems.push(`block ${b}: bitmap says ≥3 but the ref-count tree has no entry`);

  // The era structures.
  await visitEraRoots(sb, "live");
  if (sb.currentWriteset.root !== 0) await visitArray(sb.currentWriteset.root, 8, "current writeset");
  if (sb.metadataSnap !== 0) {
    if (ref(sb.metadataSnap, "metadata snapshot")) {
      try {
        const snap = decodeSuperblock(await tm.read(sb.metadataSnap, SUPERBLOCK_VALIDATOR), sb.metadataSnap);
        await visitEraRoots(snap, "snapshot");
      } catch (e) {
        problems.push(`metadata snapshot: ${(e as Error).message}`);
      }
    }
  }

  let reachable = 0;
  let allocated = 0;
  for (let b = 0; b < expected.length; b++) {
    if (expected[b]) reachable++;
    if (b < nrBlocks && counts[b]) allocated++;
    if (b >= nrBlocks) {
      if (expected[b]) problems.push(`block ${b}: referenced but beyond the space map`);
      continue;
    }
    if (expected[b] !== counts[b]) {
      problems.push(expected[b] === 0 ? `block ${b}: leaked (count ${counts[b]}, no references)` : `block ${b}: ${expected[b]} references but count ${counts[b]}`);
    }
  }
  if (allocated !== sb.smRoot.nrAllocated) problems.push(`nr_allocated is ${sb.smRoot.nrAllocated} but ${allocated} blocks have a non-zero count`);
  return { problems, reachable, nrAllocated: sb.smRoot.nrAllocated };
}
