import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { fillArgs, makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { discard, expectDmError, expectLoadRejected, flush, line, liveDevice, pattern, readBio, statusOf, tableOf, writeBio } from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let f1: string;
let f2: string;
let f3: string;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir();
  f1 = makeFile(tmp.dir, "s1", 1 << 20);
  f2 = makeFile(tmp.dir, "s2", 1 << 20);
  f3 = makeFile(tmp.dir, "s3", 1 << 20);
});
afterEach(async () => {
  // Remove upper devices first (stacked devices hold their lower ones open).
  for (let i = 0; i < 3; i++) for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

/** Independent model of the striped layout: target sector → [stripe index, sector on that stripe's device]. */
function model(sector: number, stripes: number, chunk: number, offsets: number[]): [number, number] {
  const c = Math.floor(sector / chunk);
  const stripe = c % stripes;
  return [stripe, offsets[stripe]! + Math.floor(c / stripes) * chunk + (sector % chunk)];
}

describe("striped: arguments (kernel stripe_ctr)", () => {
  it("table and status are printed as the kernel prints them", async () => {
    const dev = await liveDevice(reg, "s", [line(0, 1024, "striped", `2 8 ${f1} 16 ${f2} 32`)]);
    expect(tableOf(dev)).toEqual([`2 8 ${f1} 16 ${f2} 32`]);
    expect(statusOf(dev)).toEqual([`2 ${f1} ${f2} 1 AA`]);
  });

  it("numbers are normalised as the kernel reads them (kstrtouint / %llu)", async () => {
    const dev = await liveDevice(reg, "s", [line(0, 1536, "striped", `+3 08 ${f1} 00 ${f2} 0 ${f3} 7`)]);
    expect(tableOf(dev)).toEqual([`3 8 ${f1} 0 ${f2} 0 ${f3} 7`]);
    expect(statusOf(dev)).toEqual([`3 ${f1} ${f2} ${f3} 1 AAA`]);
  });

  it("a chunk size need not be a power of two; one stripe is allowed", async () => {
    const a = await liveDevice(reg, "a", [line(0, 1200, "striped", `2 12 ${f1} 0 ${f2} 0`)]);
    expect(tableOf(a)).toEqual([`2 12 ${f1} 0 ${f2} 0`]);
    const b = await liveDevice(reg, "b", [line(0, 1024, "striped", `1 1 ${f3} 0`)]);
    expect(statusOf(b)).toEqual([`1 ${f3} 1 A`]);
  });

  it.each([
    ["2", "Not enough arguments"],
    ["", "Not enough arguments"],
    ["0 8 F1 0 F2 0", "Invalid stripe count"],
    ["x 8 F1 0 F2 0", "Invalid stripe count"],
    ["-2 8 F1 0 F2 0", "Invalid stripe count"],
    ["4294967296 8 F1 0 F2 0", "Invalid stripe count"],
    ["2 0 F1 0 F2 0", "Invalid chunk_size"],
    ["2 -8 F1 0 F2 0", "Invalid chunk_size"],
    ["2 8k F1 0 F2 0", "Invalid chunk_size"],
    ["3 8 F1 0 F2 0 F3 0", "Target length not divisible by number of stripes"],
    ["2 7 F1 0 F2 0", "Target length not divisible by chunk size"],
    ["2 999999 F1 0 F2 0", "Target length not divisible by chunk size"],
    ["2 8 F1 0", "Not enough destinations specified"],
    ["2 8 F1 0 F2 0 F3 0", "Not enough destinations specified"],
    ["2 8 F1 x F2 0", "Couldn't parse stripe destination"],
    ["2 8 F1 0 F2 1z", "Couldn't parse stripe destination"],
    ["2 8 F1 +0 F2 0", "Couldn't parse stripe destination"],
    ["2 8 F1 0 F2 99999999", "too small for target: start=99999999, len=512, dev_size=2048"],
    ["2 8 F1 0 F2 1537", "too small for target: start=1537, len=512, dev_size=2048"],
  ])("%s → EINVAL %s, and nothing changes", async (args, reason) => {
    const dev = await liveDevice(reg, "s", [line(0, 1024, "striped", `2 8 ${f1} 0 ${f2} 0`)]);
    const params = fillArgs(args, { F1: f1, F2: f2, F3: f3 });
    await expectLoadRejected(dev, [line(0, 1024, "striped", params)], "EINVAL", reason);
  });

  it("a missing stripe device fails with ENOENT and closes the stripes already opened", async () => {
    const dev = await liveDevice(reg, "s", [line(0, 8, "zero")]);
    const err = await expectLoadRejected(dev, [line(0, 1024, "striped", `2 8 ${f1} 0 ${tmp.dir}/missing 0`)], "ENOENT");
    expect(err.message).toContain("Couldn't parse stripe destination");
  });
});

describe("striped: data path", () => {
  it.each([
    [2, 8, [0, 0]],
    [3, 8, [16, 0, 40]],
    [3, 12, [0, 5, 0]],
    [2, 1, [3, 1]],
  ])("%i stripes, chunk %i, offsets %j: every sector lands where the kernel puts it", async (stripes, chunk, offsets) => {
    const files = [f1, f2, f3].slice(0, stripes);
    const len = stripes * chunk * 10;
    const dev = await liveDevice(reg, "s", [line(0, len, "striped", `${stripes} ${chunk} ${files.map((f, i) => `${f} ${offsets[i]}`).join(" ")}`)]);
    const data = pattern(len * 512);
    // One large bio crossing every chunk boundary, plus an unaligned overwrite in the middle.
    await dev.submit(writeBio(0, data));
    const mid = pattern(7 * chunk * 512 + 3 * 512, 9);
    const midStart = Math.floor(chunk / 2) + 1;
    mid.copy(data, midStart * 512);
    await dev.submit(writeBio(midStart, mid));

    const backing = files.map((f) => fs.readFileSync(f));
    for (let s = 0; s < len; s++) {
      const [i, at] = model(s, stripes, chunk, offsets);
      expect(backing[i]!.subarray(at * 512, (at + 1) * 512).equals(data.subarray(s * 512, (s + 1) * 512)), `sector ${s}`).toBe(true);
    }
    // Nothing was written before any stripe's offset.
    files.forEach((_, i) => expect(backing[i]!.subarray(0, offsets[i]! * 512).every((b) => b === 0)).toBe(true));

    const back = readBio(0, len);
    await dev.submit(back);
    expect(back.data!.equals(data)).toBe(true);
    const part = readBio(midStart - 1, chunk * 3 + 2);
    await dev.submit(part);
    expect(part.data!.equals(data.subarray((midStart - 1) * 512, (midStart - 1 + chunk * 3 + 2) * 512))).toBe(true);
  });

  it.runIf(process.getuid?.() === 0)("stripes on real block devices (loop devices) hold the same layout", async () => {
    const loops = [0, 1].map((i) => execFileSync("losetup", ["-f", "--show", makeFile(tmp.dir, `loop${i}`, 1 << 20)], { encoding: "utf8" }).trim());
    try {
      const dev = await liveDevice(reg, "s", [line(0, 1024, "striped", `2 16 ${loops[0]} 8 ${loops[1]} 0`)]);
      const st = loops.map((l) => fs.statSync(l).rdev);
      // Block devices are shown as major:minor, as the kernel shows them.
      expect(tableOf(dev)[0]).toMatch(/^2 16 \d+:\d+ 8 \d+:\d+ 0$/);
      expect(st[0]).not.toBe(st[1]);
      // ...and that line loads back (table | load), with or without udev's /dev/block links.
      const again = await liveDevice(reg, "s-again", [line(0, 1024, "striped", tableOf(dev)[0]!)]);
      expect(tableOf(again)).toEqual(tableOf(dev));
      await reg.remove(again);
      await expect(liveDevice(reg, "s-none", [line(0, 8, "linear", "4095:1048575 0")])).rejects.toMatchObject({ errno: "ENXIO" });
      const data = pattern(1024 * 512, 13);
      await dev.submit(writeBio(0, data, true));
      await dev.submit(flush());
      const back = readBio(0, 1024);
      await dev.submit(back);
      expect(back.data!.equals(data)).toBe(true);
      await reg.remove(dev);
      const disks = loops.map((l) => fs.readFileSync(l));
      for (let s = 0; s < 1024; s++) {
        const [i, at] = model(s, 2, 16, [8, 0]);
        expect(disks[i]!.subarray(at * 512, (at + 1) * 512).equals(data.subarray(s * 512, (s + 1) * 512)), `sector ${s}`).toBe(true);
      }
    } finally {
      for (const l of loops) execFileSync("losetup", ["-d", l]);
    }
  });

  it("discard reaches each stripe's share of the range, and only that", async () => {
    const len = 3 * 8 * 8;
    const files = [f1, f2, f3];
    for (const f of files) fs.writeFileSync(f, pattern(1 << 20, 3));
    const before = files.map((f) => fs.readFileSync(f));
    const dev = await liveDevice(reg, "s", [line(0, len, "striped", `3 8 ${f1} 8 ${f2} 0 ${f3} 16`)]);
    const [from, count] = [5, 61];
    await dev.submit(discard(from, count));
    const after = files.map((f) => fs.readFileSync(f));
    const hit = files.map(() => new Set<number>());
    for (let s = from; s < from + count; s++) {
      const [i, at] = model(s, 3, 8, [8, 0, 16]);
      hit[i]!.add(at);
    }
    for (let i = 0; i < 3; i++) {
      for (let at = 0; at < 2048; at++) {
        const got = after[i]!.subarray(at * 512, (at + 1) * 512);
        // fallocate(PUNCH_HOLE) zeroes exactly the range: every other sector keeps its data.
        if (hit[i]!.has(at)) expect(got.every((b) => b === 0), `stripe ${i} sector ${at} discarded`).toBe(true);
        else expect(got.equals(before[i]!.subarray(at * 512, (at + 1) * 512)), `stripe ${i} sector ${at} kept`).toBe(true);
      }
    }
  });

  it("a flush goes to every stripe (observed on stacked delay devices holding it)", async () => {
    const d1 = await liveDevice(reg, "d1", [line(0, 2048, "delay", `${f1} 0 0 ${f1} 0 0 ${f1} 0 60000`)]);
    const d2 = await liveDevice(reg, "d2", [line(0, 2048, "delay", `${f2} 0 0 ${f2} 0 0 ${f2} 0 60000`)]);
    const s = await liveDevice(reg, "s", [line(0, 1024, "striped", `2 8 d1 0 d2 0`)]);
    expect(tableOf(s)).toEqual([`2 8 253:${d1.minor} 0 253:${d2.minor} 0`]);
    let flushed = false;
    const f = s.submit(flush()).then(() => (flushed = true));
    expect(statusOf(d1)).toEqual(["0 0 1"]);
    expect(statusOf(d2)).toEqual(["0 0 1"]);
    expect(flushed).toBe(false);
    // Suspending the delay devices releases what they hold, as the kernel's presuspend does.
    await d1.suspend({ noflush: false });
    await d2.suspend({ noflush: false });
    await d1.resume({ noflush: false });
    await d2.resume({ noflush: false });
    await f;
    expect(statusOf(d1)).toEqual(["0 0 0"]);
    // Swap in plain linear tables so that tearing down `s` (which flushes its stripes) does not wait a minute.
    for (const [d, file] of [[d1, f1], [d2, f2]] as const) {
      await d.load([line(0, 2048, "linear", `${file} 0`)], false);
      await d.resume({ noflush: false });
    }
  });

  it("an I/O error marks the failing stripe D and raises an event; the other stripe stays A", async () => {
    await liveDevice(reg, "bad", [line(0, 2048, "error")]);
    const s = await liveDevice(reg, "s", [line(0, 1024, "striped", `2 8 ${f1} 0 bad 0`)]);
    const ev = s.eventNr;
    // Chunk 0 lives on the file: fine. Chunk 1 is on the error device.
    await s.submit(readBio(0, 8));
    expect(statusOf(s)[0]).toMatch(/ 1 AA$/);
    await expectDmError(s.submit(readBio(0, 16)), "EIO");
    expect(statusOf(s)).toEqual([`2 ${f1} 253:${reg.find({ name: "bad" })!.minor} 1 AD`]);
    expect(s.eventNr).toBe(ev + 1);
  });
});
