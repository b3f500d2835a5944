import fs from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { expectLoadRejected, flush, line, liveDevice, pattern, readBio, statusOf, tableOf, writeBio } from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let a: string;
let b: string;
let c: string;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir();
  a = makeFile(tmp.dir, "a", 1 << 20);
  b = makeFile(tmp.dir, "b", 1 << 20);
  c = makeFile(tmp.dir, "c", 1 << 20);
});
afterEach(async () => {
  for (let i = 0; i < 2; i++) for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const onDisk = (file: string, sector: number, count: number): Buffer => fs.readFileSync(file).subarray(sector * 512, (sector + count) * 512);
/** Resolves to true once `p` has settled, false if it is still pending after the current macrotask. */
const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((r) => setImmediate(r));
  return done;
};

describe("delay: arguments (kernel delay_ctr)", () => {
  it.each([
    ["A 0 100", "A 0 100"],
    ["A 0 0", "A 0 0"],
    ["A 8 10 B 16 20", "A 8 10 B 16 20"],
    ["A 8 10 B 16 20 C 24 30", "A 8 10 B 16 20 C 24 30"],
    ["A 0 1 A 00 02", "A 0 1 A 0 2"],
    ["A 0 4294967296", "A 0 0"],
  ])("%s → table %s, status 0 0 0", async (args, table) => {
    const sub = (s: string) => s.replace(/\bA\b/g, a).replace(/\bB\b/g, b).replace(/\bC\b/g, c);
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", sub(args))]);
    expect(tableOf(dev)).toEqual([sub(table)]);
    expect(statusOf(dev)).toEqual(["0 0 0"]);
  });

  it.each([
    ["A 0", "Requires exactly 3, 6 or 9 arguments"],
    ["A 0 1 B", "Requires exactly 3, 6 or 9 arguments"],
    ["A 0 1 B 0 1 C 0 1 x", "Requires exactly 3, 6 or 9 arguments"],
    ["A x 1", "Invalid device sector"],
    ["A +0 1", "Invalid device sector"],
    ["A 0 x", "Invalid delay"],
    ["A 0 -1", "Invalid delay"],
    ["A 0 +1", "Invalid delay"],
    ["A 0 1 B x 1", "Invalid device sector"],
    ["A 0 1 B 0 x", "Invalid delay"],
    ["A 0 1 B 0 1 C 0 x", "Invalid delay"],
    ["A 99999999 1", "too small for target: start=99999999, len=1024, dev_size=2048"],
    ["A 0 1 B 1025 1", "too small for target: start=1025, len=1024, dev_size=2048"],
  ])("%s → EINVAL %s, and nothing changes", async (args, reason) => {
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 0 0`)]);
    const params = args.replace(/\bA\b/g, a).replace(/\bB\b/g, b).replace(/\bC\b/g, c);
    await expectLoadRejected(dev, [line(0, 1024, "delay", params)], "EINVAL", reason);
  });

  it("a missing device fails with ENOENT (Device lookup failed) and closes the devices already opened", async () => {
    const dev = await liveDevice(reg, "d", [line(0, 8, "zero")]);
    const err = await expectLoadRejected(dev, [line(0, 1024, "delay", `${a} 0 1 ${tmp.dir}/missing 0 1`)], "ENOENT");
    expect(err.message).toContain("Device lookup failed");
  });
});

describe("delay: holding and releasing I/O", () => {
  it("a read takes at least the read delay and returns the device's data", async () => {
    fs.writeFileSync(a, pattern(1 << 20, 2));
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 16 150`)]);
    const r = readBio(3, 8);
    const t0 = performance.now();
    await dev.submit(r);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(150);
    expect(r.data!.equals(onDisk(a, 19, 8))).toBe(true);
  });

  it("a held write is neither on the device nor acknowledged until released; status counts it", async () => {
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 0 0 ${b} 8 60000`)]);
    const data = pattern(4096, 4);
    const w = dev.submit(writeBio(2, data));
    expect(statusOf(dev)).toEqual(["0 1 0"]);
    expect(await settled(w)).toBe(false);
    expect(onDisk(b, 10, 8).every((x) => x === 0)).toBe(true);
    // Reads use the read class: no delay, device a.
    const r = readBio(0, 1);
    await dev.submit(r);
    // Suspend releases everything held (the kernel's presuspend), and the write completes on device b.
    await dev.suspend({ noflush: false });
    await w;
    expect(statusOf(dev)).toEqual(["0 0 0"]);
    expect(onDisk(b, 10, 8).equals(data)).toBe(true);
    expect(onDisk(a, 0, 64).every((x) => x === 0)).toBe(true);
    await dev.resume({ noflush: false });
    // After resume, bios are delayed again.
    const w2 = dev.submit(writeBio(0, Buffer.alloc(512, 1)));
    expect(statusOf(dev)).toEqual(["0 1 0"]);
    await dev.suspend({ noflush: true });
    await w2;
    await dev.resume({ noflush: false });
  });

  it("flushes use the flush class (9 arguments) and writes the write class", async () => {
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 0 0 ${b} 0 0 ${c} 0 60000`)]);
    const fl = dev.submit(flush());
    await dev.submit(writeBio(0, Buffer.alloc(512, 9)));
    expect(statusOf(dev)).toEqual(["0 0 1"]);
    expect(await settled(fl)).toBe(false);
    expect(onDisk(b, 0, 1).every((x) => x === 9)).toBe(true);
    await dev.suspend({ noflush: false });
    await fl;
    await dev.resume({ noflush: false });
  });

  it("with 3 arguments every class is delayed by the same amount", async () => {
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 0 60000`)]);
    const held = [dev.submit(readBio(0, 1)), dev.submit(writeBio(0, Buffer.alloc(512))), dev.submit(flush())];
    expect(statusOf(dev)).toEqual(["1 1 1"]);
    await dev.suspend({ noflush: false });
    await Promise.all(held);
    await dev.resume({ noflush: false });
  });

  it("data written through a short delay reads back intact (many concurrent bios)", async () => {
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 0 5 ${b} 64 20`)]);
    const data = pattern(1024 * 512, 8);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 32 }, (_, i) => dev.submit(writeBio(i * 32, data.subarray(i * 32 * 512, (i + 1) * 32 * 512)))));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(20);
    expect(onDisk(b, 64, 1024).equals(data)).toBe(true);
    // Reads go to device a at offset 0 (which was not written): zeroes.
    const r = readBio(0, 1024);
    await dev.submit(r);
    expect(r.data!.every((x) => x === 0)).toBe(true);
  });

  it("removing the device answers held bios instead of dropping them", async () => {
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `${a} 0 60000`)]);
    const data = pattern(512, 6);
    const w = dev.submit(writeBio(5, data));
    await reg.remove(dev);
    await w;
    expect(onDisk(a, 5, 1).equals(data)).toBe(true);
  });

  it("a delay device stacks on another tsdm device, and a table swap releases held I/O", async () => {
    const lower = await liveDevice(reg, "lower", [line(0, 2048, "linear", `${a} 0`)]);
    const dev = await liveDevice(reg, "d", [line(0, 1024, "delay", `lower 100 60000`)]);
    expect(tableOf(dev)).toEqual([`253:${lower.minor} 100 60000`]);
    const w = dev.submit(writeBio(0, Buffer.alloc(512, 3)));
    await dev.load([line(0, 1024, "delay", `lower 100 0`)], false);
    await dev.resume({ noflush: false });
    await w;
    expect(onDisk(a, 100, 1).every((x) => x === 3)).toBe(true);
    expect(tableOf(dev)).toEqual([`253:${lower.minor} 100 0`]);
  });
});
