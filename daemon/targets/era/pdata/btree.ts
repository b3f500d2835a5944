import { DmError } from "../../../core/errors.js";
import { BTREE_NODE_VALIDATOR, MD_BLOCK_SIZE, type MetaBlock } from "./block.js";
import type { TransactionManager } from "./transaction-manager.js";

/**
 * persistent-data's copy-on-write B-tree with u64 keys (dm-btree.c). Functions take a root and return the new
 * root: every modification shadows the path from the root, so the committed tree is never touched.
 */

export const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;
const HEADER = 32;

/** How values of one tree hold references: inc when a shared leaf is copied, dec when a value is dropped. */
export interface ValueType {
  readonly size: number;
  inc?(value: Buffer): void;
  dec?(value: Buffer): Promise<void>;
}

export const maxEntriesFor = (valueSize: number): number => 3 * Math.floor(Math.floor((MD_BLOCK_SIZE - HEADER) / (8 + valueSize)) / 3);

/** Internal nodes hold le64 child locations. */
const CHILD_SIZE = 8;

const u64 = (buf: Buffer, off: number): number => buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * 0x1_0000_0000;
const putU64 = (buf: Buffer, off: number, v: number): void => {
  buf.writeUInt32LE(v >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), off + 4);
};
export const le64 = (v: number): Buffer => {
  const b = Buffer.alloc(8);
  putU64(b, 0, v);
  return b;
};
export const readLe64 = (b: Buffer, off = 0): number => u64(b, off);

/** A view of one node's 4 KiB block. */
export class BtreeNode {
  constructor(readonly buf: Buffer) {}

  static init(buf: Buffer, flags: number, valueSize: number): BtreeNode {
    buf.fill(0, 4);
    buf.writeUInt32LE(flags, 4);
    buf.writeUInt32LE(maxEntriesFor(valueSize), 20);
    buf.writeUInt32LE(valueSize, 24);
    return new BtreeNode(buf);
  }

  get flags(): number {
    return this.buf.readUInt32LE(4);
  }
  get isLeaf(): boolean {
    return (this.flags & LEAF_NODE) !== 0;
  }
  get isInternal(): boolean {
    return (this.flags & INTERNAL_NODE) !== 0;
  }
  get nr(): number {
    return this.buf.readUInt32LE(16);
  }
  set nr(n: number) {
    this.buf.writeUInt32LE(n, 16);
  }
  get max(): number {
    return this.buf.readUInt32LE(20);
  }
  get valueSize(): number {
    return this.buf.readUInt32LE(24);
  }
  key(i: number): number {
    return u64(this.buf, HEADER + 8 * i);
  }
  setKey(i: number, k: number): void {
    putU64(this.buf, HEADER + 8 * i, k);
  }
  valueOffset(i: number): number {
    return HEADER + 8 * this.max + this.valueSize * i;
  }
  value(i: number): Buffer {
    const o = this.valueOffset(i);
    return this.buf.subarray(o, o + this.valueSize);
  }
  child(i: number): MetaBlock {
    return u64(this.buf, this.valueOffset(i));
  }
  setChild(i: number, b: MetaBlock): void {
    putU64(this.buf, this.valueOffset(i), b);
  }
  setValue(i: number, v: Buffer): void {
    v.copy(this.buf, this.valueOffset(i), 0, this.valueSize);
  }

  /** Kernel node_check, plus sanity needed before trusting the layout. */
  validate(b: MetaBlock): void {
    const vs = this.valueSize;
    if (HEADER + (8 + vs) * this.max > MD_BLOCK_SIZE) throw new DmError("EILSEQ", `btree node ${b}: max_entries ${this.max} too large`);
    if (this.nr > this.max) throw new DmError("EILSEQ", `btree node ${b}: nr_entries ${this.nr} > max_entries ${this.max}`);
    if (!(this.flags & (INTERNAL_NODE | LEAF_NODE))) throw new DmError("EILSEQ", `btree node ${b}: neither internal nor leaf`);
  }

  /** Largest i with key(i) <= k, or -1. */
  lowerBound(k: number): number {
    let lo = -1;
    let hi = this.nr;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (this.key(mid) <= k) lo = mid;
      else hi = mid;
    }
    return lo;
  }

  insertAt(i: number, k: number, v: Buffer): void {
    const n = this.nr;
    const vs = this.valueSize;
    this.buf.copyWithin(HEADER + 8 * (i + 1), HEADER + 8 * i, HEADER + 8 * n);
    this.buf.copyWithin(this.valueOffset(i + 1), this.valueOffset(i), this.valueOffset(n));
    this.setKey(i, k);
    v.copy(this.buf, this.valueOffset(i), 0, vs);
    this.nr = n + 1;
  }

  removeAt(i: number): void {
    const n = this.nr;
    this.buf.copyWithin(HEADER + 8 * i, HEADER + 8 * (i + 1), HEADER + 8 * n);
    this.buf.copyWithin(this.valueOffset(i), this.valueOffset(i + 1), this.valueOffset(n));
    this.nr = n - 1;
    this.buf.fill(0, HEADER + 8 * (n - 1), HEADER + 8 * n);
    this.buf.fill(0, this.valueOffset(n - 1), this.valueOffset(n));
  }

  /** Move entries [from, nr) of this node to the end of `dst`. */
  moveTailTo(dst: BtreeNode, from: number): void {
    const n = this.nr;
    const cnt = n - from;
    const d = dst.nr;
    this.buf.copy(dst.buf, HEADER + 8 * d, HEADER + 8 * from, HEADER + 8 * n);
    this.buf.copy(dst.buf, dst.valueOffset(d), this.valueOffset(from), this.valueOffset(n));
    dst.nr = d + cnt;
    this.buf.fill(0, HEADER + 8 * from, HEADER + 8 * n);
    this.buf.fill(0, this.valueOffset(from), this.valueOffset(n));
    this.nr = from;
  }

  /** Move the first `cnt` entries of this node to the end of `dst`. */
  moveHeadTo(dst: BtreeNode, cnt: number): void {
    const d = dst.nr;
    const n = this.nr;
    this.buf.copy(dst.buf, HEADER + 8 * d, HEADER, HEADER + 8 * cnt);
    this.buf.copy(dst.buf, dst.valueOffset(d), this.valueOffset(0), this.valueOffset(cnt));
    dst.nr = d + cnt;
    this.buf.copyWithin(HEADER, HEADER + 8 * cnt, HEADER + 8 * n);
    this.buf.copyWithin(this.valueOffset(0), this.valueOffset(cnt), this.valueOffset(n));
    this.buf.fill(0, HEADER + 8 * (n - cnt), HEADER + 8 * n);
    this.buf.fill(0, this.valueOffset(n - cnt), this.valueOffset(n));
    this.nr = n - cnt;
  }

  /** Insert this node's last `cnt` entries at the front of `dst`. */
  moveTailToFront(dst: BtreeNode, cnt: number): void {
    const n = this.nr;
    const d = dst.nr;
    dst.buf.copyWithin(HEADER + 8 * cnt, HEADER, HEADER + 8 * d);
    dst.buf.copyWithin(dst.valueOffset(cnt), dst.valueOffset(0), dst.valueOffset(d));
    this.buf.copy(dst.buf, HEADER, HEADER + 8 * (n - cnt), HEADER + 8 * n);
    this.buf.copy(dst.buf, dst.valueOffset(0), this.valueOffset(n - cnt), this.valueOffset(n));
    dst.nr = d + cnt;
    this.buf.fill(0, HEADER + 8 * (n - cnt), HEADER + 8 * n);
    this.buf.fill(0, this.valueOffset(n - cnt), this.valueOffset(n));
    this.nr = n - cnt;
  }
}

export async function readNode(tm: TransactionManager, b: MetaBlock): Promise<BtreeNode> {
  const n = new BtreeNode(await tm.read(b, BTREE_NODE_VALIDATOR));
  n.validate(b);
  return n;
}

/** A new empty leaf root (dm_btree_empty). */
export function emptyTree(tm: TransactionManager, valueSize: number): MetaBlock {
  const { b, buf } = tm.newBlock(BTREE_NODE_VALIDATOR);
  BtreeNode.init(buf, LEAF_NODE, valueSize);
  return b;
}

/** Shadow a node; when the original was shared, everything it points to gains a reference (inc_children). */
async function shadowNode(tm: TransactionManager, b: MetaBlock, vt: ValueType): Promise<{ b: MetaBlock; node: BtreeNode }> {
  const s = await tm.shadow(b, BTREE_NODE_VALIDATOR);
  const node = new BtreeNode(s.buf);
  node.validate(b);
  if (s.incChildren) {
    if (node.isInternal) for (let i = 0; i < node.nr; i++) tm.inc(node.child(i));
    else if (vt.inc) for (let i = 0; i < node.nr; i++) vt.inc(node.value(i));
  }
  return { b: s.b, node };
}

export async function lookup(tm: TransactionManager, root: MetaBlock, key: number): Promise<Buffer | undefined> {
  let b = root;
  for (;;) {
    const n = await readNode(tm, b);
    const i = n.lowerBound(key);
    if (i < 0) return undefined;
    if (n.isLeaf) return n.key(i) === key ? Buffer.from(n.value(i)) : undefined;
    b = n.child(i);
  }
}

/** Split the (full) root in place: its entries move into two new children; the root becomes internal. */
function splitBeneath(tm: TransactionManager, root: BtreeNode): void {
  const flags = root.flags;
  const vs = root.valueSize;
  const nr = root.nr;
  const left = tm.newBlock(BTREE_NODE_VALIDATOR);
  const right = tm.newBlock(BTREE_NODE_VALIDATOR);
  const l = BtreeNode.init(left.buf, flags, vs);
  const r = BtreeNode.init(right.buf, flags, vs);
  const half = Math.floor(nr / 2);
  root.moveTailTo(r, half);
  root.moveTailTo(l, 0);
  BtreeNode.init(root.buf, INTERNAL_NODE, CHILD_SIZE);
  root.insertAt(0, l.key(0), le64(left.b));
  root.insertAt(1, r.key(0), le64(right.b));
}

/**
 * Insert or overwrite. Full nodes are split on the way down (the root "beneath", others one into two), so a
 * node always has room for the entry its child split adds. Overwriting a different value drops a reference
 * on the old one (vt.dec), as the kernel does.
 */
export async function insert(tm: TransactionManager, root: MetaBlock, key: number, value: Buffer, vt: ValueType): Promise<{ root: MetaBlock; inserted: boolean }> {
  const top = await shadowNode(tm, root, vt);
  if (top.node.nr === top.node.max) splitBeneath(tm, top.node);
  let cur = top.node;
  for (;;) {
    if (cur.isInternal) {
      let i = cur.lowerBound(key);
      if (i < 0) {
        i = 0;
        cur.setKey(0, key);
      }
      const sh = await shadowNode(tm, cur.child(i), vt);
      cur.setChild(i, sh.b);
      let child = sh.node;
      if (child.nr === child.max) {
        const right = tm.newBlock(BTREE_NODE_VALIDATOR);
        const r = BtreeNode.init(right.buf, child.flags, child.valueSize);
        child.moveTailTo(r, Math.floor(child.nr / 2));
        cur.insertAt(i + 1, r.key(0), le64(right.b));
        if (key >= r.key(0)) child = r;
      }
      cur = child;
      continue;
    }
    const i = cur.lowerBound(key);
    if (i >= 0 && cur.key(i) === key) {
      const old = Buffer.from(cur.value(i));
      cur.setValue(i, value);
      if (vt.dec && !old.equals(value)) await vt.dec(old);
      return { root: top.b, inserted: false };
    }
    if (cur.valueSize !== vt.size) throw new DmError("EILSEQ", `btree leaf value size ${cur.valueSize}, expected ${vt.size}`);
    cur.insertAt(i + 1, key, value);
    return { root: top.b, inserted: true };
  }
}

const minEntries = (n: BtreeNode): number => Math.floor(n.max / 3);

/**
 * Remove `key` (dm_btree_remove). Underfull children (fewer than max/3 entries, the tools' shape rule) are merged
 * with or refilled from a sibling on the way back up; an internal root left with one child absorbs it.
 */
export async function remove(tm: TransactionManager, root: MetaBlock, key: number, vt: ValueType): Promise<{ root: MetaBlock; removed: boolean }> {
  const r = await removeRec(tm, root, key, vt);
  if (r.found) {
    const top = await shadowNode(tm, r.b, vt);
    while (top.node.isInternal && top.node.nr === 1) {
      const childB = top.node.child(0);
      const child = await shadowNode(tm, childB, vt);
      child.node.buf.copy(top.node.buf, 4, 4);
      tm.dec(child.b);
    }
    return { root: top.b, removed: true };
  }
  return { root: r.b, removed: false };
}

async function removeRec(tm: TransactionManager, b: MetaBlock, key: number, vt: ValueType): Promise<{ b: MetaBlock; found: boolean }> {
  // Look first, so that a missing key copies nothing.
  const peek = await readNode(tm, b);
  const pi = peek.lowerBound(key);
  if (pi < 0 || (peek.isLeaf && peek.key(pi) !== key)) return { b, found: false };
  const { b: nb, node } = await shadowNode(tm, b, vt);
  const i = node.lowerBound(key);
  if (node.isLeaf) {
    const old = Buffer.from(node.value(i));
    node.removeAt(i);
    if (vt.dec) await vt.dec(old);
    return { b: nb, found: true };
  }
  const r = await removeRec(tm, node.child(i), key, vt);
  node.setChild(i, r.b);
  if (!r.found) return { b: nb, found: false };
  const child = await readNode(tm, r.b);
  if (child.nr < minEntries(child) && node.nr > 1) await rebalance(tm, node, i, vt);
  return { b: nb, found: true };
}

async function rebalance(tm: TransactionManager, parent: BtreeNode, i: number, vt: ValueType): Promise<void> {
  const li = i + 1 < parent.nr ? i : i - 1;
  const ri = li + 1;
  const L = await shadowNode(tm, parent.child(li), vt);
  parent.setChild(li, L.b);
  const R = await shadowNode(tm, parent.child(ri), vt);
  parent.setChild(ri, R.b);
  const l = L.node;
  const r = R.node;
  if (l.nr + r.nr <= l.max) {
    r.moveTailTo(l, 0);
    parent.removeAt(ri);
    tm.dec(R.b); // its entries now belong to L
    return;
  }
  const target = Math.floor((l.nr + r.nr) / 2);
  if (l.nr > target) l.moveTailToFront(r, l.nr - target);
  else r.moveHeadTo(l, target - l.nr);
  parent.setKey(ri, r.key(0));
}

/** dm_btree_del: drop the tree's reference on `root`; nodes (and values) no longer referenced are released. */
export async function deleteTree(tm: TransactionManager, root: MetaBlock, vt: ValueType): Promise<void> {
  if (tm.count(root) > 1) {
    tm.dec(root);
    return;
  }
  const n = await readNode(tm, root);
  if (n.isInternal) {
    const children = Array.from({ length: n.nr }, (_, i) => n.child(i));
    for (const c of children) await deleteTree(tm, c, vt);
  } else if (vt.dec) {
    const values = Array.from({ length: n.nr }, (_, i) => Buffer.from(n.value(i)));
    for (const v of values) await vt.dec(v);
  }
  tm.dec(root);
}

/** In-order walk of every (key, value). */
export async function walk(tm: TransactionManager, root: MetaBlock, visit: (key: number, value: Buffer) => void | Promise<void>): Promise<void> {
  const n = await readNode(tm, root);
  if (n.isInternal) {
    const children = Array.from({ length: n.nr }, (_, i) => n.child(i));
    for (const c of children) await walk(tm, c, visit);
    return;
  }
  const entries = Array.from({ length: n.nr }, (_, i) => [n.key(i), Buffer.from(n.value(i))] as const);
  for (const [k, v] of entries) await visit(k, v);
}

/** The lowest key and its value, or undefined for an empty tree. */
export async function lowest(tm: TransactionManager, root: MetaBlock): Promise<{ key: number; value: Buffer } | undefined> {
  let n = await readNode(tm, root);
  while (n.isInternal) {
    if (n.nr === 0) return undefined;
    n = await readNode(tm, n.child(0));
  }
  return n.nr === 0 ? undefined : { key: n.key(0), value: Buffer.from(n.value(0)) };
}
