import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { DmError } from "../../daemon/core/errors.js";
import { MAGIC_BOW, decodeHeader } from "../../daemon/targets/bow/format.js";
import { makeRegistry, tempDir } from "../helpers/registry.js";
import { createBow, discard, firstDifference, pattern, ranges, read, restoreFile, rng, setState, write } from "./helpers.js";
import { trimmedBlocks, trimmedSet } from "./fixtures/trim-plan.js";

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
