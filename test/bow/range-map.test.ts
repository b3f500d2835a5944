import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { RangeMap, type RangeType } from "../../daemon/targets/bow/range-map.js";

const TYPES: RangeType[] = ["Sector0", "Sector0_current", "Unchanged", "Free", "Changed", "Backup"];

/** Run-length encoding of a per-block model: what the map must show. */
function runs(model: RangeType[]): { start: number; end: number; type: RangeType }[] {
  const out: { start: number; end: number; type: RangeType }[] = [];
  model.forEach((t, i) => {
    const last = out[out.length - 1];
    if (last && last.type === t) last.end = i + 1;
    else out.push({ start: i, end: i + 1, type: t });
  });
  return out;
}

/**
 * A per-block model of the map with the kernel's free list (starts of Free runs, head first), changed as
 * split_range and set_type change it: splitting a Free run at a block puts the piece below at the head and
 * leaves the piece above in the run's place; a new Free run goes to the head unless the run before it is Free
 * (that one keeps its place); a Free run absorbed by the new one leaves the list.
 */
class Model {
  readonly types: RangeType[];
  free: number[] = [];

  constructor(readonly blocks: number) {
    this.types = new Array<RangeType>(blocks).fill("Unchanged");
  }

  private runStart(i: number): number {
    while (i > 0 && this.types[i - 1] === this.types[i]) i--;
    return i;
  }

  /** Split the Free run holding `block` there; `floor` is a split already made (types show it only later). */
  private splitAt(block: number, floor: number): void {
    if (block >= this.blocks || this.types[block] !== "Free") return;
    const s = Math.max(floor, this.runStart(block));
    if (s === block) return;
    const i = this.free.indexOf(s);
    if (i < 0) throw new Error(`model: Free run at ${s} is not on the free list`);
    this.free[i] = block;
    this.free.unshift(s);
  }

  assign(a: number, b: number, type: RangeType): void {
    this.splitAt(a, 0);
    this.splitAt(b, a);
    this.free = this.free.filter((s) => s < a || s >= b);
    this.types.fill(type, a, b);
    if (type !== "Free") return;
    if (b < this.blocks && this.types[b] === "Free") this.free = this.free.filter((s) => s !== b);
    if (!(a > 0 && this.types[a - 1] === "Free")) this.free.unshift(a);
  }

  freeList(): { start: number; end: number }[] {
    return this.free.map((start) => {
      let end = start;
      while (end < this.blocks && this.types[end] === "Free") end++;
      return { start, end };
    });
  }
}

describe("bow range map", () => {
  it("equals a per-block model under random assignments, free list in the kernel's order, exact free count", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.array(fc.tuple(fc.nat(), fc.nat(), fc.constantFrom(...TYPES)), { maxLength: 80 }),
        (blocks, ops) => {
          const map = new RangeMap(blocks);
          const model = new Model(blocks);
          for (const [x, y, type] of ops) {
            const a = x % blocks;
            const b = a + 1 + (y % (blocks - a));
            map.assign(a, b, type);
            model.assign(a, b, type);
            expect(map.selfCheck()).toEqual([]);
            expect([...map.freeList()]).toEqual(model.freeList());
          }
          expect([...map.ranges()]).toEqual(runs(model.types));
          expect(map.freeBlocks).toBe(model.types.filter((t) => t === "Free").length);
          for (let i = 0; i < blocks; i += 7) {
            const r = map.find(i);
            expect(r.type).toBe(model.types[i]);
            expect(r.start <= i && map.endOf(r) > i).toBe(true);
          }
          const head = map.peekFree(3);
          if (head) expect(head).toEqual({ start: model.free[0], end: Math.min(model.freeList()[0]!.end, model.free[0]! + 3) });
          else expect(map.freeBlocks).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it.each([
    ["a Free range split in the middle: the piece below goes to the head", [[10, 20, "Free"], [30, 40, "Free"], [15, 16, "Unchanged"]], [[10, 15], [30, 40], [16, 20]]],
    ["a new Free range merging with the Free range before it: that one keeps its place", [[10, 12, "Free"], [30, 40, "Free"], [12, 14, "Free"]], [[30, 40], [10, 14]]],
    ["a new Free range merging with the one after it goes to the head", [[12, 14, "Free"], [30, 40, "Free"], [10, 12, "Free"]], [[10, 14], [30, 40]]],
    ["merging with both: the one before keeps its place", [[10, 12, "Free"], [30, 40, "Free"], [14, 16, "Free"], [12, 14, "Free"]], [[30, 40], [10, 16]]],
  ] as const)("kernel order: %s", (_what, ops, want) => {
    const map = new RangeMap(100);
    for (const [a, b, type] of ops) map.assign(a, b, type);
    expect([...map.freeList()]).toEqual(want.map(([start, end]) => ({ start, end })));
  });

  it("free space is taken from the most recently freed range, low end first (the kernel's LIFO list)", () => {
    const map = new RangeMap(100);
    map.assign(10, 20, "Free");
    map.assign(50, 55, "Free");
    expect(map.peekFree(100)).toEqual({ start: 50, end: 55 });
    map.assign(50, 52, "Backup");
    expect(map.peekFree(100)).toEqual({ start: 52, end: 55 }); // the rest keeps its place at the head
    map.assign(52, 55, "Backup");
    expect(map.peekFree(4)).toEqual({ start: 10, end: 14 });
  });

  it("handles a map of 2^18 blocks cut into 131073 ranges", () => {
    const blocks = 1 << 18;
    const map = new RangeMap(blocks);
    for (let i = 1; i < blocks; i += 4) map.assign(i, i + 1, "Free"); // 65536 free ranges
    expect(map.size).toBe(2 * 65536 + 1);
    for (let i = 0; i < 20000; i++) {
      const b = (i * 2654435761) % blocks;
      map.find(b);
      const f = map.peekFree(1)!;
      map.assign(f.start, f.end, "Backup");
    }
    expect(map.freeBlocks).toBe(65536 - 20000);
  });
});
