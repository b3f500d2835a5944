import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { DmError } from "../../daemon/core/errors.js";
import { MAGIC_BOW, decodeHeader } from "../../daemon/targets/bow/format.js";
import { makeRegistry, tempDir } from "../helpers/registry.js";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import { bowTarget, type BowTarget } from "../../daemon/targets/bow/index.js";
import { restoreCheckpoint } from "../../daemon/targets/bow/restore.js";
import { MemBlockDevice, contextFor, settle } from "./mem-device.js";
import { MemRawDevice } from "./workload.js";
import { createBow, discard, firstDifference, pattern, ranges, read, restoreFile, rng, setState, write } from "./helpers.js";
import { trimmedBlocks, trimmedSet } from "./fixtures/trim-plan.js";

const S = (n: number) => n as Sector;
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-bow-conc-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

async function setup(blockSize: number, seed: number, sectors = 4096) {
  const file = path.join(tmp.dir, "img");
  const init = Buffer.alloc(sectors * 512);
  for (let s = 0; s < sectors; s++) pattern(1, 9000 + s).copy(init, s * 512);
  fs.writeFileSync(file, init);
  const spb = blockSize / 512;
  const dev = await createBow(reg, "c", file, sectors, `1 block_size:${blockSize}`);
  for (const [a, n] of trimmedBlocks(seed, sectors / spb)) await discard(dev, a * spb, n * spb);
  const free = trimmedSet(seed, sectors / spb);
  const inUse = Array.from({ length: sectors / spb }, (_, b) => b).filter((b) => !free.has(b));
  return { file, init, dev, spb, inUse };
}

describe("bow: concurrent I/O in state 1", () => {
  for (const blockSize of [512, 4096]) {
    it(`${blockSize}-byte blocks: 200 overlapping writes in flight at once land in submission order and roll back exactly`, async () => {
      const sectors = 4096;
      const { file, init, dev, inUse } = await setup(blockSize, 21);
      await setState(dev, "1");
      const r = rng(5);
      const model = Buffer.from(init);
      const ios: Promise<void>[] = [];
      const statusReads: string[][] = [];
      const written = new Set<number>();
      let failed = 0;
      for (let i = 0; i < 200; i++) {
        const start = Math.floor(r() * sectors);
        const count = Math.min(sectors - start, 1 + Math.floor(r() * 24));
        const data = pattern(count, 50000 + i);
        ios.push(
          write(dev, start, data).then(
            () => {
              data.copy(model, start * 512);
              for (let q = start; q < start + count; q++) written.add(q);
            },
            (err: unknown) => {
              if (!(err instanceof DmError && err.errno === "ENOSPC")) throw err;
              failed++;
            },
          ),
        );
        if (i % 20 === 0) ios.push(ranges(dev).then((l) => void statusReads.push(l)));
        if (i % 7 === 0) ios.push(read(dev, 0, 8).then(() => undefined));
      }
      await Promise.all(ios);
      expect(statusReads.length).toBe(10); // each parsed without self-check errors
      // Overlapping writes were ordered as submitted: what was in use or written reads back as the model.
      const got = await read(dev, 0, sectors);
      const spb = blockSize / 512;
      const inUseSet = new Set(inUse);
      for (let q = 0; q < sectors; q++) {
        if (!written.has(q) && !inUseSet.has(Math.floor(q / spb))) continue;
        expect(got.compare(model, q * 512, q * 512 + 512, q * 512, q * 512 + 512), `sector ${q}`).toBe(0);
      }
      await reg.remove(dev);
      expect((await restoreFile(file)).kind).toBe("restored");
      expect(firstDifference(fs.readFileSync(file), init, blockSize, inUse)).toBe(-1);
    });
  }

  for (const blockSize of [512, 1024]) {
    it(`${blockSize}-byte blocks: four writers looping (plans interleave with log rollovers) roll back exactly`, async () => {
      const sectors = 4096;
      const { file, init, dev, inUse } = await setup(blockSize, 24);
      await setState(dev, "1");
      const model = Buffer.from(init);
      const written = new Set<number>();
      const inUseSet = new Set(inUse);
      const stripe = 64; // writer j owns sectors whose stripe index % 4 == j: no overlap between writers
      const writer = async (j: number) => {
        const r = rng(100 + j);
        for (let i = 0; i < 60; i++) {
          const s = (Math.floor(r() * (sectors / stripe / 4)) * 4 + j) * stripe;
          const off = Math.floor(r() * stripe);
          const count = 1 + Math.floor(r() * (stripe - off));
          const data = pattern(count, j * 1000 + i);
          try {
            await write(dev, s + off, data);
            data.copy(model, (s + off) * 512);
            for (let q = s + off; q < s + off + count; q++) written.add(q);
          } catch (err) {
            if (!(err instanceof DmError && err.errno === "ENOSPC")) throw err;
          }
        }
      };
      await Promise.all([0, 1, 2, 3].map(writer));
      expect(decodeHeader(fs.readFileSync(file)).sequence).toBeGreaterThan(0);
      // Sectors in use at the checkpoint or written since must read back as the model; free space the
      // writers never touched is backup space and undefined.
      const got = await read(dev, 0, sectors);
      const spb = blockSize / 512;
      const bad: number[] = [];
      for (let q = 0; q < sectors; q++) {
        if (!written.has(q) && !inUseSet.has(Math.floor(q / spb))) continue;
        if (got.compare(model, q * 512, q * 512 + 512, q * 512, q * 512 + 512) !== 0) bad.push(q);
      }
      expect(bad).toEqual([]);
      await reg.remove(dev);
      expect((await restoreFile(file)).kind).toBe("restored");
      expect(firstDifference(fs.readFileSync(file), init, blockSize, inUse)).toBe(-1);
    });
  }

  it("commit (state 2) while writes are in flight: all writes land, the magic is gone", async () => {
    const { file, dev } = await setup(4096, 22);
    await setState(dev, "1");
    const ios: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) ios.push(write(dev, 8 + i * 16, pattern(8, i)));
    ios.push(setState(dev, "2"));
    for (let i = 0; i < 40; i++) ios.push(write(dev, 8 + i * 16 + 8, pattern(8, 100 + i)));
    await Promise.all(ios);
    await reg.remove(dev);
    const img = fs.readFileSync(file);
    expect(decodeHeader(img).magic).not.toBe(MAGIC_BOW);
    for (let i = 0; i < 40; i++) {
      expect(img.subarray((8 + i * 16) * 512, (16 + i * 16) * 512).equals(pattern(8, i))).toBe(true);
      expect(img.subarray((16 + i * 16) * 512, (24 + i * 16) * 512).equals(pattern(8, 100 + i))).toBe(true);
    }
    expect((await restoreFile(file)).kind).toBe("no-magic");
  });

  it("removal racing with a state change: either order leaves a consistent device", async () => {
    const { file, init, dev, inUse } = await setup(4096, 23);
    await setState(dev, "1");
    await write(dev, 8, pattern(8, 1));
    const state = setState(dev, "2").catch((e: unknown) => e);
    await reg.remove(dev);
    await state;
    const r = await restoreFile(file);
    if (r.kind === "restored") expect(firstDifference(fs.readFileSync(file), init, 4096, inUse)).toBe(-1);
    else expect(fs.readFileSync(file).subarray(8 * 512, 16 * 512).equals(pattern(8, 1))).toBe(true);
  });
});

describe("bow: waiters granted together", () => {
  const bio = (op: Bio["op"], sector: number, data?: Buffer, count = data ? data.length / 512 : 0): Bio => ({ op, sector: S(sector), count: S(count), data, fua: false });

  it("a write granted after another in the same release never lands on the backup space that one just took", async () => {
    const sectors = 4096;
    const init = Buffer.alloc(sectors * 512);
    for (let s = 0; s < sectors; s++) pattern(1, 9000 + s).copy(init, s * 512);
    // hold(sector): the next write to that sector waits until open() (`reached` says it has arrived).
    const held = new Map<number, { hit: () => void; opened: Promise<void> }>();
    const hold = (sector: number) => {
      let open!: () => void;
      let hit!: () => void;
      const reached = new Promise<void>((r) => (hit = r));
      held.set(sector, { hit, opened: new Promise<void>((r) => (open = r)) });
      return { open, reached };
    };
    const mem = new MemBlockDevice(Buffer.from(init), (b) => {
      const g = b.op === "write" ? held.get(b.sector) : undefined;
      if (!g) return undefined;
      held.delete(b.sector);
      g.hit();
      return g.opened;
    });
    const t = await bowTarget.construct(contextFor(mem), ["mem"], S(sectors));
    // Free list, head first: [100,102) (taken by 0→1), [44,45), [50,52), [200,210).
    for (const [a, n] of [[200, 10], [50, 2], [44, 1], [100, 2]] as const) await t.map(bio("discard", a, undefined, n));
    await t.message!(["state", "1"]);

    // H: blocks 10-11 are backed up into 44 and 50; its copy into 44 is held back while W1 and W2 queue.
    const h0 = hold(44);
    const h = t.map(bio("write", 10, pattern(2, 1)));
    await h0.reached;
    const map = String(await t.message!(["ranges"]));
    expect(map).toMatch(/Backup: 44\n.*\nBackup: 50\nFree: 51\n/s);
    const w1Data = pattern(1, 2);
    const w2Data = pattern(2, 3);
    const w1 = t.map(bio("write", 44, w1Data)); // waits for H; will back up 44 into 51, the head of the free list
    const w2 = t.map(bio("write", 50, w2Data)); // waits for H; covers 51
    await settle();
    // W1's backup copy into 51 is held back until whatever else can run has run.
    const g51 = hold(51);
    h0.open();
    await g51.reached;
    await settle();
    g51.open();
    await Promise.all([h, w1, w2]);

    const back = bio("read", 44, Buffer.alloc(512 * 8));
    await t.map(back);
    expect(back.data!.subarray(0, 512).equals(w1Data), "block 44").toBe(true);
    expect(back.data!.subarray(6 * 512, 8 * 512).equals(w2Data), "blocks 50-51").toBe(true);
    await t.destroy();
    // The checkpoint still rolls back exactly on every block that was in use.
    const raw = new MemRawDevice(mem.image);
    expect((await restoreCheckpoint(raw)).kind).toBe("restored");
    const free = new Set([44, 50, 51, 100, 101, ...Array.from({ length: 10 }, (_, i) => 200 + i)]);
    const inUse = Array.from({ length: sectors }, (_, b) => b).filter((b) => !free.has(b));
    expect(firstDifference(mem.image, init, 512, inUse)).toBe(-1);
  });
});

describe("bow: concurrent writes under random completion order", () => {
  /** Every bio completes after 0-3 turns of the event loop, chosen by a seeded PRNG: a reorderable disk. */
  const shuffledDisk = (image: Buffer, seed: number) => {
    const r = rng(seed);
    return new MemBlockDevice(image, () => {
      const turns = Math.floor(r() * 4);
      if (turns === 0) return undefined;
      return (async () => {
        for (let i = 0; i < turns; i++) await new Promise<void>((res) => setImmediate(res));
      })();
    });
  };

  /** The map as { type, start sector } in order. */
  const mapOf = (t: BowTarget) =>
    t
      .rangesText()
      .split("\n")
      .filter((l) => /^\w+: \d+$/.test(l))
      .map((l) => ({ type: l.split(": ")[0]!, start: Number(l.split(": ")[1]) }));

  it.each([512, 1024])("%i-byte blocks, 20 seeds: every acknowledged write reads back in submission order; rollback is exact", async (blockSize) => {
    const sectors = 1024;
    const spb = blockSize / 512;
    const bio = (op: Bio["op"], sector: number, data?: Buffer, count = data ? data.length / 512 : 0): Bio => ({ op, sector: S(sector), count: S(count), data, fua: false });
    for (let seed = 1; seed <= 20; seed++) {
      const init = Buffer.alloc(sectors * 512);
      for (let s = 0; s < sectors; s++) pattern(1, 9000 + s).copy(init, s * 512);
      const mem = shuffledDisk(Buffer.from(init), seed);
      const t = (await bowTarget.construct(contextFor(mem), ["mem", "1", `block_size:${blockSize}`], S(sectors))) as BowTarget;
      for (const [a, n] of trimmedBlocks(seed, sectors / spb)) await t.map(bio("discard", a * spb, undefined, n * spb));
      const free = trimmedSet(seed, sectors / spb);
      await t.message!(["state", "1"]);
      const r = rng(1000 + seed);
      const model = Buffer.from(init);
      const written = new Set<number>();
      let n = 0;
      const submit = (ios: Promise<void>[], start: number, count: number): void => {
        const data = pattern(count, seed * 100000 + n++);
        ios.push(
          t.map(bio("write", start, data)).then(
            () => {
              data.copy(model, start * 512);
              for (let q = start; q < start + count; q++) written.add(q);
            },
            (err: unknown) => {
              if (!(err instanceof DmError && err.errno === "ENOSPC")) throw err;
            },
          ),
        );
      };
      for (let round = 0; round < 10; round++) {
        const ios: Promise<void>[] = [];
        for (let i = 0; i < 10; i++) {
          const start = Math.floor(r() * (sectors / spb)) * spb;
          submit(ios, start, Math.min(sectors - start, spb * (1 + Math.floor(r() * 4))));
        }
        // Those writes have planned (planning is synchronous): aim more writes, queued behind them, at the edges
        // of the backup space they took, into its first block and across its end into the free space after it.
        const map = mapOf(t);
        for (let i = 0; i + 1 < map.length; i++) {
          const [a, b] = [map[i]!, map[i + 1]!];
          if (a.type !== "Backup" || b.type !== "Free" || b.start - a.start < 2 * spb) continue;
          submit(ios, a.start, spb);
          submit(ios, b.start - spb, 2 * spb);
        }
        await Promise.all(ios);
      }
      const got = bio("read", 0, Buffer.alloc(sectors * 512));
      await t.map(got);
      for (let q = 0; q < sectors; q++) {
        if (!written.has(q) && free.has(Math.floor(q / spb))) continue;
        expect(got.data!.compare(model, q * 512, q * 512 + 512, q * 512, q * 512 + 512), `seed ${seed}, sector ${q}`).toBe(0);
      }
      await t.destroy();
      expect((await restoreCheckpoint(new MemRawDevice(mem.image))).kind, `seed ${seed}`).toBe("restored");
      const inUse = Array.from({ length: sectors / spb }, (_, b) => b).filter((b) => !free.has(b));
      expect(firstDifference(mem.image, init, blockSize, inUse), `seed ${seed}`).toBe(-1);
    }
  });
});
