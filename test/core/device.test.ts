import fs from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { expectDmError } from "../helpers/errors.js";

const S = (n: number) => n as Sector;
const line = (start: number, length: number, type: string, params = "") => ({ start: S(start), length: S(length), type, params });
const read = (sector: number, count: number): Bio => ({ op: "read", sector: S(sector), count: S(count), data: Buffer.alloc(count * 512), fua: false });
const write = (sector: number, data: Buffer, fua = false): Bio => ({ op: "write", sector: S(sector), count: S(data.length / 512), data, fua });

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir();
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

describe("table validation (kernel rules)", () => {
  it.each([
    ["first target not at 0", [line(1, 8, "zero")], /gap/],
    ["gap", [line(0, 8, "zero"), line(9, 8, "zero")], /gap/],
    ["overlap", [line(0, 8, "zero"), line(4, 8, "zero")], /overlap/],
    ["zero length", [line(0, 0, "zero")], /zero-length/],
    ["unknown target", [line(0, 8, "nosuch")], /unknown target type/],
    ["empty table", [], /no targets/],
    ["constructor rejects", [line(0, 8, "zero", "extra")], /zero/],
  ])("%s → EINVAL, nothing changes", async (_what, lines, text) => {
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 8, "zero")], false);
    await dev.resume({ noflush: false });
    await expectDmError(dev.load(lines, false), "EINVAL", text);
    expect(dev.inactive).toBeUndefined();
    expect(dev.live?.lines("table")).toEqual([line(0, 8, "zero")]);
  });

  it("linear on a missing file → ENOENT, and a device too small → EINVAL", async () => {
    const dev = reg.create({ name: "t" });
    await expectDmError(dev.load([line(0, 8, "linear", `${tmp.dir}/missing 0`)], false), "ENOENT");
    const f = makeFile(tmp.dir, "small", 4096);
    await expectDmError(dev.load([line(0, 9, "linear", `${f} 0`)], false), "EINVAL", /too small/);
    await expectDmError(dev.load([line(0, 8, "linear", `${f} x`)], false), "EINVAL", /Invalid device sector/);
    await expectDmError(dev.load([line(0, 8, "linear", `${f}`)], false), "EINVAL", /argument count/);
  });

  it("a failed load closes every device it opened", async () => {
    const f = makeFile(tmp.dir, "f", 1 << 20);
    const fds = () => fs.readdirSync("/proc/self/fd").length;
    const before = fds();
    const dev = reg.create({ name: "t" });
    await expectDmError(dev.load([line(0, 8, "linear", `${f} 0`), line(8, 8, "nosuch")], false), "EINVAL");
    await expectDmError(dev.load([line(0, 8, "linear", `${f} 0`), line(8, 8, "linear", `${f} 99999`)], false), "EINVAL");
    expect(fds()).toBe(before);
  });

  it("a table may not reference its own device, directly or through a stack", async () => {
    const a = reg.create({ name: "a" });
    await a.load([line(0, 8, "zero")], false);
    await a.resume({ noflush: false });
    await expectDmError(a.load([line(0, 8, "linear", "a 0")], false), "EINVAL", /itself/);
    const b = reg.create({ name: "b" });
    await b.load([line(0, 8, "linear", "a 0")], false);
    await b.resume({ noflush: false });
    await expectDmError(a.load([line(0, 8, "linear", `${reg.mapperDir}/b 0`)], false), "EINVAL", /itself/);
  });
});

describe("I/O through tables", () => {
  it("splits bios across targets and maps each part to its own backing", async () => {
    const f1 = makeFile(tmp.dir, "f1", 64 * 512);
    const f2 = makeFile(tmp.dir, "f2", 64 * 512);
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 16, "linear", `${f1} 8`), line(16, 8, "zero"), line(24, 16, "linear", `${f2} 0`)], false);
    await dev.resume({ noflush: false });
    const data = Buffer.alloc(40 * 512);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    await dev.submit(write(0, data, true));
    const b1 = fs.readFileSync(f1);
    const b2 = fs.readFileSync(f2);
    expect(b1.subarray(8 * 512, 24 * 512).equals(data.subarray(0, 16 * 512))).toBe(true);
    expect(b1.subarray(0, 8 * 512).every((x) => x === 0)).toBe(true);
    expect(b2.subarray(0, 16 * 512).equals(data.subarray(24 * 512))).toBe(true);
    const back = read(0, 40);
    await dev.submit(back);
    expect(back.data!.subarray(0, 16 * 512).equals(data.subarray(0, 16 * 512))).toBe(true);
    expect(back.data!.subarray(16 * 512, 24 * 512).every((x) => x === 0)).toBe(true);
    expect(back.data!.subarray(24 * 512).equals(data.subarray(24 * 512))).toBe(true);
  });

  it("refuses I/O past the end and writes to a read-only device; error target fails with EIO", async () => {
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 8, "zero"), line(8, 8, "error")], true);
    await dev.resume({ noflush: false });
    await expectDmError(dev.submit(read(10, 8)), "EINVAL");
    await expectDmError(dev.submit(write(0, Buffer.alloc(512))), "EPERM");
    await expectDmError(dev.submit(read(8, 1)), "EIO");
    const ok = read(0, 8);
    ok.data!.fill(1);
    await dev.submit(ok);
    expect(ok.data!.every((x) => x === 0)).toBe(true);
  });

  it("discard on a file-backed linear device punches a hole", async () => {
    const f = makeFile(tmp.dir, "f", 1 << 20, "pattern");
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 2048, "linear", `${f} 0`)], false);
    await dev.resume({ noflush: false });
    const before = fs.statSync(f).blocks;
    await dev.submit({ op: "discard", sector: S(0), count: S(1024), fua: false });
    expect(fs.statSync(f).blocks).toBeLessThan(before);
    expect(fs.readFileSync(f).subarray(0, 512 * 1024).every((x) => x === 0)).toBe(true);
  });
});

describe("suspend / resume / events", () => {
  it("suspend holds new I/O until resume; resume swaps the inactive table in", async () => {
    const f = makeFile(tmp.dir, "f", 1 << 20);
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 8, "zero")], false);
    await dev.resume({ noflush: false });
    await dev.suspend({ noflush: false });
    await dev.suspend({ noflush: false }); // already suspended: fine
    let done = false;
    const held = dev.submit(write(0, Buffer.alloc(4096, 0xab))).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(done).toBe(false);
    await dev.load([line(0, 2048, "linear", `${f} 0`)], false);
    expect(dev.live?.lines("table")[0]!.type).toBe("zero");
    await dev.resume({ noflush: false });
    await held;
    expect(dev.live?.lines("table")[0]!.type).toBe("linear");
    // The held write went to the new table.
    expect(fs.readFileSync(f).subarray(0, 4096).every((x) => x === 0xab)).toBe(true);
    // Resuming an active device without an inactive table is a no-op.
    await dev.resume({ noflush: false });
  });

  it("suspend waits for in-flight I/O to drain", async () => {
    const f = makeFile(tmp.dir, "f", 1 << 20);
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 2048, "linear", `${f} 0`)], false);
    await dev.resume({ noflush: false });
    let completed = 0;
    const writes = Array.from({ length: 32 }, (_, i) => dev.submit(write(i * 8, Buffer.alloc(4096, i + 1))).then(() => completed++));
    await dev.suspend({ noflush: false });
    // Every write submitted before the suspend has completed by the time suspend returns.
    expect(completed).toBe(32);
    await Promise.all(writes);
    await dev.resume({ noflush: false });
  });

  it("raiseEvent bumps the event number and wakes waiters; rename with a live table raises an event", async () => {
    const dev = reg.create({ name: "t" });
    await dev.load([line(0, 8, "zero")], false);
    await dev.resume({ noflush: false });
    const waiting = dev.waitEvent(0);
    reg.rename(dev, "u");
    await waiting;
    expect(dev.eventNr).toBe(1);
    expect(reg.find({ name: "u" })).toBe(dev);
    expect(reg.find({ name: "t" })).toBeUndefined();
  });
});

describe("registry rules", () => {
  it("names and uuids are unique, minors lowest-free, and the kernel's name rules apply", async () => {
    reg.create({ name: "a", uuid: "U1" });
    await expectDmError(Promise.resolve().then(() => reg.create({ name: "a" })), "EBUSY");
    await expectDmError(Promise.resolve().then(() => reg.create({ name: "b", uuid: "U1" })), "EBUSY");
    expect(reg.create({ name: "b" }).minor).toBe(1);
    await expectDmError(Promise.resolve().then(() => reg.create({ name: "c", minor: 1 })), "EBUSY");
    for (const bad of ["x/y", "control", ".", "..", "", "n".repeat(128)]) {
      await expectDmError(Promise.resolve().then(() => reg.create({ name: bad })), "EINVAL");
    }
    expect(reg.create({ name: "n".repeat(127) }).name.length).toBe(127);
    const a = reg.get({ name: "a" });
    await expectDmError(Promise.resolve().then(() => reg.setUuid(a, "U2")), "EINVAL");
  });

  it("an open device refuses removal unless deferred, and goes at last close", async () => {
    const a = reg.create({ name: "a" });
    await a.load([line(0, 8, "zero")], false);
    await a.resume({ noflush: false });
    a.open();
    await expectDmError(reg.remove(a), "EBUSY");
    await expectDmError(reg.remove(a, { force: true }), "EBUSY");
    expect(a.live?.lines("table")[0]!.type).toBe("error");
    expect(await reg.remove(a, { deferred: true })).toEqual({ deferred: true });
    expect(reg.find({ name: "a" })).toBe(a);
    a.close();
    await new Promise((r) => setTimeout(r, 20));
    expect(reg.find({ name: "a" })).toBeUndefined();
  });

  it("a stacked device holds its lower device open", async () => {
    const a = reg.create({ name: "a" });
    await a.load([line(0, 8, "zero")], false);
    await a.resume({ noflush: false });
    const b = reg.create({ name: "b" });
    await b.load([line(0, 8, "linear", "a 0")], false);
    await b.resume({ noflush: false });
    expect(a.openCount).toBe(1);
    await expectDmError(reg.remove(a), "EBUSY");
    await reg.remove(b);
    expect(a.openCount).toBe(0);
    await reg.remove(a);
  });
});
