import fs from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { discard, expectDmError, expectLoadRejected, flush, line, liveDevice, pattern, readBio, sleep, statusOf, tableOf, writeBio } from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let f: string;
const FILE_BYTES = 1 << 20;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir();
  f = makeFile(tmp.dir, "f", FILE_BYTES);
  fs.writeFileSync(f, pattern(FILE_BYTES, 5));
});
afterEach(async () => {
  for (let i = 0; i < 2; i++) for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const onDisk = (sector: number, count: number): Buffer => fs.readFileSync(f).subarray(sector * 512, (sector + count) * 512);
const original = (sector: number, count: number): Buffer => pattern(FILE_BYTES, 5).subarray(sector * 512, (sector + count) * 512);
/** `0 1`: up for 0 s, down for 1 s, repeating: always down, deterministically. `1 0`: always up. */
const flakey = (features: string, intervals = "0 1", offset = 0) => [line(0, 1024, "flakey", `${f} ${offset} ${intervals}${features ? ` ${features}` : ""}`)];

describe("flakey: arguments (kernel 6.12 flakey_ctr / parse_features)", () => {
  // Expected table lines as printed by the Debian 6.12 kernel for the same arguments (device shown as F).
  it.each([
    ["0 180 0", "0 180 0 2 error_reads error_writes"],
    ["0 0 1", "0 0 1 2 error_reads error_writes"],
    ["8 1 1 1 drop_writes", "8 1 1 1 drop_writes"],
    ["0 1 1 1 error_writes", "0 1 1 1 error_writes"],
    ["0 1 1 1 error_reads", "0 1 1 1 error_reads"],
    ["0 1 1 2 error_writes error_reads", "0 1 1 2 error_reads error_writes"],
    ["0 1 1 2 error_reads drop_writes", "0 1 1 2 error_reads drop_writes"],
    ["0 1 1 5 corrupt_bio_byte 32 r 1 0", "0 1 1 5 corrupt_bio_byte 32 r 1 0"],
    ["0 1 1 5 corrupt_bio_byte 32 W 255 16", "0 1 1 5 corrupt_bio_byte 32 w 255 16"],
    ["0 1 1 6 drop_writes corrupt_bio_byte 32 r 1 0", "0 1 1 6 drop_writes corrupt_bio_byte 32 r 1 0"],
    ["0 1 1 6 error_reads corrupt_bio_byte 32 r 1 0", "0 1 1 6 error_reads corrupt_bio_byte 32 r 1 0"],
    ["0 1 1 10 corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 r 1 0", "0 1 1 5 corrupt_bio_byte 2 r 1 0"],
    ["0 1 1 11 drop_writes corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 r 1 0", "0 1 1 6 drop_writes corrupt_bio_byte 2 r 1 0"],
    ["0 1 1 2 random_read_corrupt 500000000", "0 1 1 2 random_read_corrupt 500000000"],
    ["0 1 1 4 random_read_corrupt 1 random_write_corrupt 1000000000", "0 1 1 4 random_read_corrupt 1 random_write_corrupt 1000000000"],
    ["0 1 1 4 random_read_corrupt 1 random_read_corrupt 2", "0 1 1 2 random_read_corrupt 2"],
    ["0 1 1 3 drop_writes random_write_corrupt 5", "0 1 1 3 drop_writes random_write_corrupt 5"],
    ["0 1 1 3 error_writes random_write_corrupt 5", "0 1 1 3 error_writes random_write_corrupt 5"],
    ["0 1 1 2 random_read_corrupt 0", "0 1 1 2 error_reads error_writes"],
    ["0 1 1 0", "0 1 1 2 error_reads error_writes"],
    ["0 1 1 0 extra", "0 1 1 2 error_reads error_writes"],
    ["0 1 1 1 drop_writes extra", "0 1 1 1 drop_writes"],
    ["0 01 1 1 DROP_WRITES", "0 1 1 1 drop_writes"],
    ["0 1 1 1 Error_Reads", "0 1 1 1 error_reads"],
    ["0 4294967296 1", "0 0 1 2 error_reads error_writes"],
    ["0 1 1 5 corrupt_bio_byte 1 r 1 4294967295", "0 1 1 5 corrupt_bio_byte 1 r 1 4294967295"],
    ["0 1 1 5 corrupt_bio_byte 1 r 1 4294967296", "0 1 1 5 corrupt_bio_byte 1 r 1 0"],
  ])("F %s → table F %s, status empty", async (args, table) => {
    const dev = await liveDevice(reg, "fl", [line(0, 1024, "flakey", `${f} ${args}`)]);
    expect(tableOf(dev)).toEqual([`${f} ${table}`]);
    expect(statusOf(dev)).toEqual([""]);
  });

  it.each([
    ["0 1", "Invalid argument count"],
    ["x 1 1", "Invalid device sector"],
    ["+0 1 1", "Invalid device sector"],
    ["0 x 1", "Invalid up interval"],
    ["0 1 x", "Invalid up interval"],
    ["0 -1 1", "Invalid up interval"],
    ["0 0 0", "Total (up + down) interval is zero"],
    ["0 4294967295 1", "Total (up + down) interval is zero"],
    ["0 4294967295 2", "Interval overflow"],
    ["0 1 1 1 bogus", "Unrecognised flakey feature requested"],
    ["0 1 1 2 drop_writes", "Invalid number of feature args"],
    ["0 1 1 12 drop_writes corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 r 1 0 x", "Invalid number of feature args"],
    ["0 1 1 x drop_writes", "Invalid number of feature args"],
    ["0 1 1 2 drop_writes drop_writes", "Feature drop_writes duplicated"],
    ["0 1 1 2 error_writes error_writes", "Feature error_writes duplicated"],
    ["0 1 1 2 error_reads error_reads", "Feature error_reads duplicated"],
    ["0 1 1 2 drop_writes error_writes", "Feature error_writes conflicts with feature drop_writes"],
    ["0 1 1 2 error_writes drop_writes", "Feature drop_writes conflicts with feature error_writes"],
    ["0 1 1 1 corrupt_bio_byte", "Feature corrupt_bio_byte requires parameters"],
    ["0 1 1 2 corrupt_bio_byte 1", "Invalid corrupt bio direction (r or w)"],
    ["0 1 1 4 corrupt_bio_byte 1 r 1", "Invalid corrupt bio flags mask"],
    ["0 1 1 4 corrupt_bio_byte 1 r 1 0", "Insufficient feature arguments"],
    ["0 1 1 4 corrupt_bio_byte 1 r 1 0 drop_writes", "Insufficient feature arguments"],
    ["0 1 1 5 corrupt_bio_byte 0 r 1 0", "Invalid corrupt bio byte"],
    ["0 1 1 5 corrupt_bio_byte 4294967296 r 1 0", "Invalid corrupt bio byte"],
    ["0 1 1 5 corrupt_bio_byte 1 x 1 0", "Invalid corrupt bio direction (r or w)"],
    ["0 1 1 5 corrupt_bio_byte 1 r 256 0", "Invalid corrupt value to write into bio byte (0-255)"],
    ["0 1 1 5 corrupt_bio_byte 1 r 1 x", "Invalid corrupt bio flags mask"],
    ["0 1 1 6 drop_writes corrupt_bio_byte 32 w 1 0", "drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set"],
    ["0 1 1 6 error_writes corrupt_bio_byte 32 w 1 0", "error_writes is incompatible with corrupt_bio_byte with the WRITE flag set"],
    ["0 1 1 2 random_read_corrupt 1000000001", "Invalid random corrupt argument"],
    ["0 1 1 1 random_read_corrupt", "Feature random_read_corrupt requires a parameter"],
    ["0 1 1 1 random_write_corrupt", "Feature random_write_corrupt requires a parameter"],
    ["99999999 1 1", "too small for target: start=99999999, len=1024, dev_size=2048"],
    ["1025 1 1", "too small for target: start=1025, len=1024, dev_size=2048"],
  ])("F %s → EINVAL %s, and nothing changes", async (args, reason) => {
    const dev = await liveDevice(reg, "fl", flakey("", "1 0"));
    await expectLoadRejected(dev, [line(0, 1024, "flakey", `${f} ${args}`)], "EINVAL", reason);
  });

  it("a missing device fails with the lookup's errno", async () => {
    const dev = await liveDevice(reg, "fl", [line(0, 8, "zero")]);
    const err = await expectLoadRejected(dev, [line(0, 1024, "flakey", `${tmp.dir}/missing 0 1 1`)], "ENOENT");
    expect(err.message).toContain("Device lookup failed");
    // Argument errors are found before the device is looked up, as in the kernel.
    await expectLoadRejected(dev, [line(0, 1024, "flakey", `${tmp.dir}/missing 0 1 1 1 bogus`)], "EINVAL", "Unrecognised flakey feature requested");
  });
});

describe("flakey: behaviour while up and down", () => {
  it("while up (`1 0`) it is linear at the offset, whatever the features", async () => {
    const dev = await liveDevice(reg, "fl", flakey("1 error_writes", "1 0", 16));
    const data = pattern(4096, 7);
    await dev.submit(writeBio(3, data));
    expect(onDisk(19, 8).equals(data)).toBe(true);
    const r = readBio(0, 16);
    await dev.submit(r);
    expect(r.data!.equals(onDisk(16, 16))).toBe(true);
    await dev.submit(flush());
  });

  it("down with no features: every read, write, flush and discard fails with EIO, and nothing is written", async () => {
    const dev = await liveDevice(reg, "fl", flakey(""));
    await expectDmError(dev.submit(readBio(0, 8)), "EIO");
    await expectDmError(dev.submit(writeBio(0, Buffer.alloc(4096, 1))), "EIO");
    await expectDmError(dev.submit(flush()), "EIO");
    await expectDmError(dev.submit(discard(0, 64)), "EIO");
    expect(onDisk(0, 64).equals(original(0, 64))).toBe(true);
  });

  it("drop_writes: writes and discards are acknowledged but never reach the device; reads still work", async () => {
    const dev = await liveDevice(reg, "fl", flakey("1 drop_writes"));
    await dev.submit(writeBio(0, Buffer.alloc(4096, 0xee)));
    await dev.submit(discard(8, 8));
    await dev.submit(flush());
    expect(onDisk(0, 16).equals(original(0, 16))).toBe(true);
    const r = readBio(0, 8);
    await dev.submit(r);
    expect(r.data!.equals(original(0, 8))).toBe(true);
  });

  it("error_writes: writes fail with EIO, reads work", async () => {
    const dev = await liveDevice(reg, "fl", flakey("1 error_writes"));
    await expectDmError(dev.submit(writeBio(0, Buffer.alloc(512, 1))), "EIO");
    const r = readBio(2, 4);
    await dev.submit(r);
    expect(r.data!.equals(original(2, 4))).toBe(true);
    expect(onDisk(0, 1).equals(original(0, 1))).toBe(true);
  });

  it("error_reads: reads fail with EIO, writes go through", async () => {
    const dev = await liveDevice(reg, "fl", flakey("1 error_reads"));
    await expectDmError(dev.submit(readBio(0, 1)), "EIO");
    const data = pattern(1024, 11);
    await dev.submit(writeBio(4, data));
    expect(onDisk(4, 2).equals(data)).toBe(true);
  });

  it("corrupt_bio_byte <N> r: exactly byte N of each read is replaced; the device is untouched", async () => {
    const dev = await liveDevice(reg, "fl", flakey("5 corrupt_bio_byte 10 r 88 0"));
    const r = readBio(0, 8);
    await dev.submit(r);
    const expected = Buffer.from(original(0, 8));
    expected[9] = 88;
    expect(r.data!.equals(expected)).toBe(true);
    // A byte past the end of the bio corrupts nothing; writes are not corrupted.
    const data = pattern(512, 3);
    await dev.submit(writeBio(100, data));
    expect(onDisk(100, 1).equals(data)).toBe(true);
    expect(onDisk(0, 8).equals(original(0, 8))).toBe(true);
  });

  it("corrupt_bio_byte <N> w: byte N of each write reaches the device corrupted; the writer's buffer is intact", async () => {
    const dev = await liveDevice(reg, "fl", flakey("5 corrupt_bio_byte 3 w 90 0"));
    const data = Buffer.alloc(4096, 0x42);
    await dev.submit(writeBio(8, data));
    expect(data.every((b) => b === 0x42)).toBe(true);
    const disk = onDisk(8, 8);
    expect(disk[2]).toBe(90);
    disk[2] = 0x42;
    expect(disk.every((b) => b === 0x42)).toBe(true);
    // Reads are clean.
    const r = readBio(8, 1);
    await dev.submit(r);
    expect(r.data![2]).toBe(90);
    expect(r.data![3]).toBe(0x42);
  });

  it("corrupt_bio_byte with a flags mask corrupts only bios carrying those flags (REQ_FUA = 131072)", async () => {
    const dev = await liveDevice(reg, "fl", flakey("5 corrupt_bio_byte 1 w 0 131072"));
    await dev.submit(writeBio(0, Buffer.alloc(512, 7)));
    expect(onDisk(0, 1)[0]).toBe(7);
    await dev.submit(writeBio(1, Buffer.alloc(512, 7), true));
    expect(onDisk(1, 1)[0]).toBe(0);
    expect(onDisk(1, 1).subarray(1).every((b) => b === 7)).toBe(true);
  });

  it("random_write_corrupt 1000000000 changes at most one byte of every write, never the caller's buffer", async () => {
    const dev = await liveDevice(reg, "fl", flakey("2 random_write_corrupt 1000000000"));
    for (let i = 0; i < 8; i++) {
      const data = pattern(2048, i);
      await dev.submit(writeBio(i * 4, data));
      expect(data.equals(pattern(2048, i))).toBe(true);
      const disk = onDisk(i * 4, 4);
      let diff = 0;
      for (let b = 0; b < data.length; b++) if (disk[b] !== data[b]) diff++;
      expect(diff).toBeLessThanOrEqual(1);
    }
  });

  it("the phase follows whole seconds since the table was loaded (`2 3600`: up for 2 s, then down)", async () => {
    const beforeLoad = performance.now();
    const dev = await liveDevice(reg, "fl", flakey("", "2 3600"));
    const loaded = performance.now();
    const early = await dev.submit(readBio(0, 1)).then(
      () => "ok",
      () => "failed",
    );
    // Only a lower bound on time is trusted: the read surely ran in the up phase if it ended < 2 s after load.
    if (performance.now() - beforeLoad < 1900) expect(early).toBe("ok");
    const wait = 2050 - (performance.now() - loaded);
    if (wait > 0) await sleep(wait);
    await expectDmError(dev.submit(readBio(0, 1)), "EIO");
  });

  it("stacks on another tsdm device", async () => {
    const lower = await liveDevice(reg, "lower", [line(0, 2048, "linear", `${f} 0`)]);
    const dev = await liveDevice(reg, "fl", [line(0, 1024, "flakey", `lower 512 0 1 1 drop_writes`)]);
    expect(tableOf(dev)).toEqual([`253:${lower.minor} 512 0 1 1 drop_writes`]);
    const r = readBio(0, 4);
    await dev.submit(r);
    expect(r.data!.equals(original(512, 4))).toBe(true);
    await dev.submit(writeBio(0, Buffer.alloc(512)));
    expect(onDisk(512, 1).equals(original(512, 1))).toBe(true);
  });
});
