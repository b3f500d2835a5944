/**
 * dm-bow's range map: the lower device as contiguous ranges of one type each, in block units, covering
 * [0, blocks) and closed by a Top sentinel at `blocks`. Neighbours never share a type (assign() merges).
 *
 * Index: a skip list keyed by start block (find the range holding a block in O(log n)), with a doubly linked
 * bottom level for O(1) neighbours; Free ranges are also on a LIFO free list (the kernel's trimmed_list), so
 * choosing backup space is O(1): take the head of the list and carve from its low end. `freeBlocks` counts
 * Free blocks exactly (the kernel's `free` over-counts on partial splits; tsdm does not copy that quirk).
 */
export type RangeType = "Sector0" | "Sector0_current" | "Unchanged" | "Free" | "Changed" | "Backup" | "Top";

export interface RangeNode {
  readonly start: number;
  type: RangeType;
}

interface Node extends RangeNode {
  start: number;
  /** forward[0] is the next range; higher levels skip ahead. */
  forward: (Node | null)[];
  prev: Node | null;
  freePrev: Node | null;
  freeNext: Node | null;
  onFreeList: boolean;
}

const MAX_LEVEL = 24;

export class RangeMap {
  private readonly head: Node;
  private readonly top: Node;
  private freeHead: Node | null = null;
  private freeCount = 0;
  private rangeCount = 0;
  /** xorshift state: deterministic levels make runs reproducible. */
  private rng = 0x9e3779b9;

  constructor(readonly blocks: number) {
    if (!(blocks >= 1)) throw new RangeError("a range map needs at least one block");
    this.head = this.node(-1, "Top", MAX_LEVEL);
    const first = this.node(0, "Unchanged", 1);
    this.top = this.node(blocks, "Top", MAX_LEVEL);
    // head → first → top on level 0; head → top above.
    this.head.forward[0] = first;
    first.forward[0] = this.top;
    first.prev = this.head;
    this.top.prev = first;
    for (let l = 1; l < MAX_LEVEL; l++) this.head.forward[l] = this.top;
    this.rangeCount = 1;
  }

  /** Number of Free blocks (exact). */
  get freeBlocks(): number {
    return this.freeCount;
  }

  get size(): number {
    return this.rangeCount;
  }

  /** The range holding `block` (0 <= block < blocks). */
  find(block: number): RangeNode {
    return this.findNode(block);
  }

  /** End (exclusive) of the range starting at `r`. */
  endOf(r: RangeNode): number {
    return (r as Node).forward[0]!.start;
  }

  next(r: RangeNode): RangeNode | undefined {
    const n = (r as Node).forward[0]!;
    return n === this.top ? undefined : n;
  }

  /** Every range in order (for status and tests). */
  *ranges(): Generator<{ start: number; end: number; type: RangeType }> {
    for (let n = this.head.forward[0]!; n !== this.top; n = n.forward[0]!) yield { start: n.start, end: n.forward[0]!.start, type: n.type };
  }

  /** The pieces of [a, b), clipped, in order. Snapshot: safe to modify the map while consuming it. */
  pieces(a: number, b: number): { start: number; end: number; type: RangeType }[] {
    const out: { start: number; end: number; type: RangeType }[] = [];
    for (let n: Node = this.findNode(a); n !== this.top && n.start < b; n = n.forward[0]!) {
      out.push({ start: Math.max(a, n.start), end: Math.min(b, n.forward[0]!.start), type: n.type });
    }
    return out;
  }

  /** True when some block in [a, b) has a type other than `type`. */
  anyOtherThan(a: number, b: number, type: RangeType): boolean {
    const n = this.findNode(a);
    return n.type !== type || n.forward[0]!.start < b;
  }

  /** Free ranges, head (next to be used) first. */
  *freeList(): Generator<{ start: number; end: number }> {
    for (let n = this.freeHead; n; n = n.freeNext) yield { start: n.start, end: n.forward[0]!.start };
  }

  /** The first `max` blocks (or fewer) of the head of the free list, or undefined when nothing is free. */
  peekFree(max: number): { start: number; end: number } | undefined {
    const h = this.freeHead;
    if (!h) return undefined;
    return { start: h.start, end: Math.min(h.forward[0]!.start, h.start + max) };
  }

  /**
   * Give [a, b) the type `type`, then merge with equal neighbours. The free list changes as the kernel's
   * split_range + set_type change it (so the same I/O puts backups and the live block 0 in the same blocks):
   * a Free range split at a block puts the piece below at the head of the list and leaves the piece above in
   * its place; a newly Free range goes to the head, unless it merges with the Free range before it, which
   * keeps its place.
   */
  assign(a: number, b: number, type: RangeType): void {
    if (!(a >= 0 && b <= this.blocks && a < b)) throw new RangeError(`bad range [${a}, ${b}) of ${this.blocks}`);
    if (type === "Top") throw new RangeError("Top is the sentinel");
    const first = this.splitAt(a);
    this.splitAt(b);
    for (let n = first; n !== this.top && n.start < b; n = n.forward[0]!) {
      if (n.type === "Free") this.freeCount -= n.forward[0]!.start - n.start;
    }
    // Fold [a, b) into `first`.
    for (let n = first.forward[0]!; n !== this.top && n.start < b; n = first.forward[0]!) {
      this.unlinkFree(n);
      this.remove(n);
    }
    this.unlinkFree(first);
    first.type = type;
    if (type === "Free") {
      this.freeCount += b - a;
      this.pushFree(first);
    }
    // Merge with neighbours of the same type (the merged range keeps the lower node).
    let keep = first;
    const prev = first.prev!;
    if (prev !== this.head && prev.type === type) {
      if (first.onFreeList) this.unlinkFree(first);
      this.remove(first);
      keep = prev;
    }
    const next = keep.forward[0]!;
    if (next !== this.top && next.type === type) {
      if (next.onFreeList) this.unlinkFree(next);
      this.remove(next);
    }
  }

  /**
   * The kernel's self-checks on the map, as its table status prints them. Empty when the map is sound.
   */
  selfCheck(): string[] {
    const errors: string[] = [];
    let freeSeen = 0;
    for (let n = this.freeHead; n; n = n.freeNext) {
      if (n.type !== "Free") errors.push("ERROR: non-trimmed entry in trimmed_list");
      freeSeen++;
    }
    const first = this.head.forward[0]!;
    if (first === this.top) errors.push("ERROR: Empty ranges");
    else if (first.start !== 0) errors.push("ERROR: First range does not start at sector 0");
    let freeRanges = 0;
    let freeBlocks = 0;
    let last = -1;
    let lastType: RangeType | undefined;
    for (let n = first; n !== this.top; n = n.forward[0]!) {
      if (n.start <= last) errors.push("ERROR: sectors out of order");
      if (n.type === lastType) errors.push("ERROR: neighbouring ranges share a type");
      if (n.type === "Free") {
        freeRanges++;
        freeBlocks += n.forward[0]!.start - n.start;
      }
      last = n.start;
      lastType = n.type;
    }
    if (this.top.start !== this.blocks) errors.push("ERROR: Top sector is incorrect");
    if (this.top.forward[0] !== null) errors.push("ERROR: Top sector is not last");
    if (this.top.type !== "Top") errors.push("ERROR: Last range not of type TOP");
    if (freeRanges !== freeSeen) errors.push("ERROR: not all trimmed ranges in trimmed list");
    if (freeBlocks !== this.freeCount) errors.push("ERROR: free block count is wrong");
    return errors;
  }

  // ---- skip list internals ----

  private node(start: number, type: RangeType, level: number): Node {
    return { start, type, forward: new Array<Node | null>(level).fill(null), prev: null, freePrev: null, freeNext: null, onFreeList: false };
  }

  private randomLevel(): number {
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    let level = 1;
    // One level per two trailing one-bits: p = 1/4 per level.
    while (level < MAX_LEVEL && (x & 3) === 3) {
      level++;
      x >>>= 2;
    }
    return level;
  }

  /** The node with the largest start <= block; `update[l]` receives the last node before it on each level. */
  private findNode(block: number, update?: Node[]): Node {
    let x = this.head;
    for (let l = MAX_LEVEL - 1; l >= 0; l--) {
      for (let f = x.forward[l]; f && f.start <= block && f !== this.top; f = x.forward[l]) x = f;
      if (update) update[l] = x;
    }
    return x;
  }

  /** Make `block` the start of a range (same type as the range it cut); returns that range. */
  private splitAt(block: number): Node {
    if (block === this.blocks) return this.top;
    const update: Node[] = new Array<Node>(MAX_LEVEL);
    const at = this.findNode(block, update);
    if (at.start === block) return at;
    const level = this.randomLevel();
    const n = this.node(block, at.type, level);
    for (let l = 0; l < level; l++) {
      n.forward[l] = update[l]!.forward[l]!;
      update[l]!.forward[l] = n;
    }
    n.prev = at;
    n.forward[0]!.prev = n;
    this.rangeCount++;
    if (at.type === "Free") {
      // split_range: the upper piece takes the range's place on the free list, the lower one goes to the head.
      this.replaceFree(at, n);
      this.pushFree(at);
    }
    return n;
  }

  private remove(n: Node): void {
    const update: Node[] = new Array<Node>(MAX_LEVEL);
    this.findNode(n.start - 1, update);
    for (let l = 0; l < n.forward.length; l++) {
      if (update[l]!.forward[l] === n) update[l]!.forward[l] = n.forward[l]!;
    }
    n.forward[0]!.prev = n.prev;
    this.rangeCount--;
  }

  private pushFree(n: Node): void {
    n.onFreeList = true;
    n.freePrev = null;
    n.freeNext = this.freeHead;
    if (this.freeHead) this.freeHead.freePrev = n;
    this.freeHead = n;
  }

  /** Put `n` where `old` is on the free list, and take `old` off it. */
  private replaceFree(old: Node, n: Node): void {
    n.onFreeList = true;
    n.freePrev = old.freePrev;
    n.freeNext = old.freeNext;
    if (n.freePrev) n.freePrev.freeNext = n;
    else this.freeHead = n;
    if (n.freeNext) n.freeNext.freePrev = n;
    old.freePrev = old.freeNext = null;
    old.onFreeList = false;
  }

  private unlinkFree(n: Node): void {
    if (!n.onFreeList) return;
    if (n.freePrev) n.freePrev.freeNext = n.freeNext;
    else this.freeHead = n.freeNext;
    if (n.freeNext) n.freeNext.freePrev = n.freePrev;
    n.freePrev = n.freeNext = null;
    n.onFreeList = false;
  }
}
