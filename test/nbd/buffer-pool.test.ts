import { describe, expect, it } from "vitest";
import { BufferPool } from "../../daemon/io/buffer-pool.js";

describe("BufferPool", () => {
  it("hands out buffers big enough, reuses returned ones, and ignores foreign buffers", () => {
    const pool = new BufferPool();
    const a = pool.get((1 << 20) + 16); // a 1 MiB READ reply: header + payload
    expect(a.length).toBeGreaterThanOrEqual((1 << 20) + 16);
    expect(a.length).toBeLessThan(2 << 20); // stays in the 1 MiB class
    pool.put(a);
    expect(pool.get(1 << 20)).toBe(a);
    const small = pool.get(100);
    expect(small.length).toBeGreaterThanOrEqual(4096);
    pool.put(Buffer.alloc(5000)); // not from the pool: dropped
    expect(pool.get(5000)).not.toHaveLength(5000);
  });

  it("bounds what it keeps", () => {
    const pool = new BufferPool();
    const bufs = Array.from({ length: 100 }, () => pool.get(1 << 20));
    for (const b of bufs) pool.put(b);
    const again = new Set(Array.from({ length: 100 }, () => pool.get(1 << 20)));
    const reused = bufs.filter((b) => again.has(b)).length;
    expect(reused).toBeGreaterThan(0);
    expect(reused).toBeLessThan(100); // at most 48 MiB of one class is kept
  });
});
