import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { EraTarget } from "../../daemon/targets/era/target.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { createEra, rng, S, writeBio } from "./helpers.js";

// erasOf / logicalErasRange read only the metadata blocks holding a range (the NBD map and changedBlocksSince
// use them, so a map of a large device costs per request). Checked against the whole-device logicalEras.

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-era-range-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

describe("era: the eras of a block range", () => {
  it("equal the whole-device answer for any range, across era-array and bitset block boundaries, archived and current writesets", async () => {
    // 70,000 blocks of 8 sectors: the era array spans 69 array blocks (1,018 eras each) and a writeset's bitset
    // three (32,576 bits each), so ranges cross both kinds of boundary.
    const blocks = 70_000;
    const meta = makeFile(tmp.dir, "meta", 16 << 20);
    const origin = makeFile(tmp.dir, "origin", blocks * 4096);
    const dev = await createEra(reg, "e", meta, origin, blocks * 8, 8);
    const t = dev.live!.targets()[0]!.target as EraTarget;
    const rand = rng(424242);
    const pick = (): number => Math.floor(rand() * blocks);
    const hot = [0, 1017, 1018, 32575, 32576, 32639, 32640, blocks - 1];
    for (let era = 1; era <= 4; era++) {
      const writes = [...Array(300)].map(pick).concat(hot.filter(() => rand() < 0.5));
      for (const b of writes) await dev.submit(writeBio(b * 8, 8, era));
      if (era < 4) await dev.message(S(0), ["checkpoint"]);
      // A run across changedBlocksSince's 65,536-block window.
      else for (const b of [65535, 65536]) await dev.submit(writeBio(b * 8, 8, era));
    }
    const whole = await t.metadata.logicalEras(true);
    expect(whole.some((e) => e === 4)).toBe(true);
    const ranges: [number, number][] = [
      [0, blocks],
      [0, 1],
      [1017, 2],
      [32575, 3],
      [32000, 2000],
      [blocks - 5, 100], // clipped at the end
      [blocks, 10], // empty
    ];
    for (let i = 0; i < 40; i++) {
      const first = pick();
      ranges.push([first, 1 + Math.floor(rand() * 40_000)]);
    }
    for (const [first, count] of ranges) {
      const got = await t.erasOf(first, count);
      expect(Array.from(got), `[${first}, +${count})`).toEqual(Array.from(whole.subarray(first, Math.min(blocks, first + count))));
    }
    // changedBlocksSince reads in windows; its runs still match the whole-device answer.
    for (const since of [1, 2, 4, 5]) {
      const want: number[] = [];
      whole.forEach((e, b) => e >= since && want.push(b));
      const got: number[] = [];
      for await (const x of t.changedBlocksSince(since)) for (let s: number = x.startSector; s < x.startSector + x.lengthSectors; s += 8) got.push(s / 8);
      expect(got).toEqual(want);
    }
  }, 60_000);
});
