import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  LogFlag,
  LogFormatError,
  decodeEntry,
  decodeSuper,
  encodeEntry,
  encodeSuper,
  flagNames,
  isMalformedEntry,
  logBlocks,
  markEntry,
} from "../../daemon/targets/log-writes/format.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { S, fill, flush, replayLog, superNrEntries, until, write } from "./helpers.js";

describe("on-disk structs (spec §1.2, §1.3)", () => {
  it("super block: magic, version, nr_entries, sectorsize, zero padding and tail", () => {
    const b = encodeSuper({ nrEntries: 0x0102030405, sectorSize: 4096 });
    expect(b.length).toBe(4096);
    expect([...b.subarray(0, 8)]).toEqual([0x72, 0x68, 0x73, 0x77, 0x66, 0x73, 0x6a, 0x00]);
    expect(b.subarray(0, 8).toString("latin1")).toBe("rhswfsj\0");
    expect(b.readBigUInt64LE(8)).toBe(1n);
    expect(b.readBigUInt64LE(16)).toBe(0x0102030405n);
    expect(b.readUInt32LE(24)).toBe(4096);
    expect(b.subarray(28).every((x) => x === 0)).toBe(true);
    expect(decodeSuper(b)).toEqual({ nrEntries: 0x0102030405, sectorSize: 4096 });
  });

  it("super block errors carry replay-log's wording; garbage padding is accepted", () => {
    const b = encodeSuper({ nrEntries: 3, sectorSize: 512 });
    b.writeUInt32LE(0xdeadbeef, 28);
    expect(decodeSuper(b).nrEntries).toBe(3);
    const bad = Buffer.from(b);
    bad[0] = 0;
    expect(() => decodeSuper(bad)).toThrow(new LogFormatError("Magic doesn't match"));
    const v2 = Buffer.from(b);
    v2.writeBigUInt64LE(2n, 8);
    expect(() => decodeSuper(v2)).toThrow("Version mismatch, wanted 1, have 2");
    expect(() => decodeSuper(b.subarray(0, 16))).toThrow("Error reading super");
  });

  it("sectorsize: anything from one 32-byte header up to 16 MiB reads (QEMU writes 32, 64, ... 8 MiB)", () => {
    const withSize = (n: number) => {
      const b = encodeSuper({ nrEntries: 1, sectorSize: 512 });
      b.writeUInt32LE(n, 24);
      return b;
    };
    for (const n of [32, 64, 256, 1000, 8 << 20]) expect(decodeSuper(withSize(n)).sectorSize).toBe(n);
    for (const n of [0, 16, 31, 16 << 20]) expect(() => decodeSuper(withSize(n))).toThrow(`Invalid sectorsize ${n}`);
  });

  it("entry header: fields at 0/8/16/24, mark text at 32, NUL-terminated, zero tail", () => {
    const h = encodeEntry({ sector: logBlocks(16), nrSectors: logBlocks(8), flags: LogFlag.FUA | LogFlag.METADATA, dataLen: 0 }, 512);
    expect(h.length).toBe(512);
    expect(h.readBigUInt64LE(0)).toBe(16n);
    expect(h.readBigUInt64LE(8)).toBe(8n);
    expect(h.readBigUInt64LE(16)).toBe(18n);
    expect(h.readBigUInt64LE(24)).toBe(0n);
    expect(h.subarray(32).every((x) => x === 0)).toBe(true);
    const m = encodeEntry(markEntry(Buffer.from("fsync")), 512);
    expect(m.readBigUInt64LE(16)).toBe(8n);
    expect(m.readBigUInt64LE(24)).toBe(5n);
    expect(m.subarray(32, 38).toString("latin1")).toBe("fsync\0");
    expect(decodeEntry(m).mark?.toString()).toBe("fsync");
    expect(() => encodeEntry(markEntry(Buffer.alloc(480, 0x61)), 512)).toThrow(RangeError);
  });

  it("flag names and the xfstests malformed-entry rule", () => {
    expect(LogFlag).toEqual({ FLUSH: 1, FUA: 2, DISCARD: 4, MARK: 8, METADATA: 16 });
    expect(flagNames(0)).toBe("NONE");
    expect(flagNames(3)).toBe("FLUSH|FUA");
    expect(flagNames(0x44)).toBe("DISCARD|UNKNOWN.0x40");
    const zero = Buffer.alloc(512);
    expect(isMalformedEntry(zero, decodeEntry(zero))).toBe(true);
    const w = encodeEntry({ sector: logBlocks(0), nrSectors: logBlocks(1), flags: 0, dataLen: 0 }, 512);
    expect(isMalformedEntry(w, decodeEntry(w))).toBe(false);
    w[32] = 1;
    expect(isMalformedEntry(w, decodeEntry(w))).toBe(true);
  });
});

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir();
});
afterEach(async () => {
  for (const d of [...reg.list()].reverse()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const line = (length: number, params: string) => [{ start: S(0), length: S(length), type: "log-writes", params }];
const info = (name: string) => reg.get({ name }).live!.lines("info")[0]!.params;

describe("worked examples (spec §1.8), written by the target", () => {
  it("512 B device: 4 KiB write at byte 8192, then mark x", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    expect(info("lw")).toBe("0 0");
    const payload = Buffer.alloc(4096);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
    await dev.submit(write(16, payload));
    await dev.submit(flush());
    await until(() => info("lw") === "2 10"); // write + flush entries logged
    await dev.message(S(0), ["mark", "x"]);
    await until(() => info("lw") === "3 11");
    await until(() => superNrEntries(log) === 3); // the super is rewritten after the mark entry is on the log
    const b = fs.readFileSync(log);
    // Entry 0 header at byte 512, data at 1024..5119.
    expect(b.readBigUInt64LE(512)).toBe(16n);
    expect(b.readBigUInt64LE(520)).toBe(8n);
    expect(b.readBigUInt64LE(528)).toBe(0n);
    expect(b.readBigUInt64LE(536)).toBe(0n);
    expect(b.subarray(1024, 5120).equals(payload)).toBe(true);
    // Entry 1: the flush at byte 5120; entry 2: the mark at byte 5632.
    expect(b.readBigUInt64LE(5120 + 16)).toBe(1n);
    expect(b.readBigUInt64LE(5632 + 16)).toBe(8n);
    expect(b.readBigUInt64LE(5632 + 24)).toBe(1n);
    expect(b.subarray(5632 + 32, 5632 + 34).toString("latin1")).toBe("x\0");
    expect(b.subarray(5632 + 34, 6144).every((x) => x === 0)).toBe(true);
    // The mark rewrote the super: nr_entries 3, sectorsize 512.
    expect(b.subarray(0, 512).equals(encodeSuper({ nrEntries: 3, sectorSize: 512 }))).toBe(true);
  });

  it("the spec's exact sequence: write then mark gives status `2 10`", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(16, fill(8, 0x5a), true)); // FUA: logged at once, no flush needed
    await dev.message(S(0), ["mark", "x"]);
    await until(() => info("lw") === "2 10");
    await until(() => superNrEntries(log) === 2);
  });

  it("4 KiB data device: entries in 4 KiB units, status counts 512 B sectors", async () => {
    // A data device whose logical block size is 4096: a tsdm device logging in 4 KiB units (stacked).
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const innerLog = makeFile(tmp.dir, "inner-log", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const four = reg.create({ name: "four" });
    await four.load(line(2048, `${data} ${innerLog} 2 log_sector_size 4096`), false);
    await four.resume({ noflush: false });
    expect(four.logicalBlockSize).toBe(4096);
    expect(four.live!.lines("table")[0]!.params).toBe(`${data} ${innerLog} 2 log_sector_size 4096`);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `four ${log}`), false);
    await dev.resume({ noflush: false });
    expect(dev.logicalBlockSize).toBe(4096);
    expect(info("lw")).toBe("0 7");
    await dev.submit(write(16, fill(8, 0xab), true));
    await until(() => info("lw") === "1 23");
    await until(() => superNrEntries(log) === 1);
    const b = fs.readFileSync(log);
    expect(b.readBigUInt64LE(4096)).toBe(2n); // sector in 4 KiB units
    expect(b.readBigUInt64LE(4096 + 8)).toBe(1n);
    expect(b.readBigUInt64LE(4096 + 16)).toBe(2n);
    expect(b.subarray(8192, 12288).equals(fill(8, 0xab))).toBe(true);
    expect(b.subarray(0, 4096).equals(encodeSuper({ nrEntries: 1, sectorSize: 4096 }))).toBe(true);
    // A 512-byte write to a 4 KiB device is refused before it reaches anything.
    await expect(dev.submit(write(1, fill(1, 1)))).rejects.toThrow(/aligned/);
    // The inner device logged the same write in its 4 KiB log_sector_size units over a 512 B file; both logs
    // replay to the data image.
    await reg.remove(dev);
    await reg.remove(four);
    for (const l of [innerLog, log]) {
      const replay = makeFile(tmp.dir, "replay", 1 << 20);
      const r = await replayLog(["--log", l, "--replay", replay]);
      expect(r.code, r.stderr).toBe(0);
      expect(fs.readFileSync(replay).equals(fs.readFileSync(data))).toBe(true);
    }
    // FUA write, the flush the outer device sent down when it was removed, the end mark.
    expect((await replayLog(["--log", innerLog])).stdout).toBe("Log version=1, sectorsize=4096, entries=3\n");
  });
});

describe("find positions on a kernel-layout log (spec §8 test vector)", () => {
  for (const ss of [512, 4096]) {
    it(`sectorsize ${ss}`, async () => {
      const blocks = (n: number, b: number) => Buffer.alloc(n * ss, b);
      const e = (sector: number, nr: number, flags: number, data?: Buffer) => [encodeEntry({ sector: logBlocks(sector), nrSectors: logBlocks(nr), flags, dataLen: 0 }, ss), ...(data ? [data] : [])];
      const mark = (t: string) => [encodeEntry(markEntry(Buffer.from(t)), ss)];
      const parts = [
        encodeSuper({ nrEntries: 11, sectorSize: ss }),
        ...e(0, 4, 0, blocks(4, 1)),
        ...mark("mkfs"),
        ...e(10, 2, LogFlag.METADATA, blocks(2, 2)),
        ...e(20, 1, 0, blocks(1, 3)),
        ...e(0, 0, LogFlag.FLUSH),
        ...e(30, 2, LogFlag.FUA, blocks(2, 4)),
        ...e(40, 8, LogFlag.DISCARD),
        ...e(0, 0, LogFlag.FLUSH | LogFlag.FUA),
        ...mark("fsync"),
        ...e(50, 1, 0, blocks(1, 5)),
        ...mark("dm-log-writes-end"),
      ];
      const file = path.join(tmp.dir, "vector.log");
      fs.writeFileSync(file, Buffer.concat(parts));
      const find = async (...a: string[]) => (await replayLog(["--log", file, "--find", ...a])).stdout.trim();
      expect(await find("--end-mark", "mkfs")).toBe("1@7");
      expect(await find("--next-fua")).toBe("5@16");
      expect(await find("--next-flush")).toBe("4@13");
      expect(await find("--end-mark", "fsync")).toBe("8@19");
    });
  }
});
