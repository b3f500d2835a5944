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

describe("bow range map", () => {
  it("equals a per-block model under random assignments, with a sound free list and exact free count", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.array(fc.tuple(fc.nat(), fc.nat(), fc.constantFrom(...TYPES)), { maxLength: 80 }),
        (blocks, ops) => {
          const map = new RangeMap(blocks);
          const model: RangeType[] = new Array<RangeType>(blocks).fill("Unchanged");
          for (const [x, y, type] of ops) {
            const a = x % blocks;
            const b = a + 1 + (y % (blocks - a));
            map.assign(a, b, type);
            model.fill(type, a, b);
            expect(map.selfCheck()).toEqual([]);
          }
          expect([...map.ranges()]).toEqual(runs(model));
          expect(map.freeBlocks).toBe(model.filter((t) => t === "Free").length);
          const free = [...map.freeList()].sort((p, q) => p.start - q.start);
          expect(free).toEqual(runs(model).filter((r) => r.type === "Free").map(({ start, end }) => ({ start, end })));
          for (let i = 0; i < blocks; i += 7) {
            const r = map.find(i);
            expect(r.type).toBe(model[i]);
            expect(r.start <= i && map.endOf(r) > i).toBe(true);
          }
          const head = map.peekFree(3);
          if (head) expect(model.slice(head.start, head.end).every((t) => t === "Free")).toBe(true);
          else expect(map.freeBlocks).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
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
