import fs from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { BlockDevice } from "../../daemon/io/block-device.js";
import { FileDevice } from "../../daemon/io/file-device.js";
import { LogWritesTarget } from "../../daemon/targets/log-writes/target.js";
import { fillArgs, makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { GatedDevice, S, constructOn, describeEntries, discard, fill, flush, readLog, superNrEntries, until, write } from "./helpers.js";

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

async function errorOf(p: Promise<unknown>): Promise<DmError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(DmError);
  return e as DmError;
}

describe("ordering: completion order, flush batches, FUA bypass (spec §2.3)", () => {
  it("W1,W2,W3,C3,C2,Wflush,C1,Cflush logs W3,W2,flush and W1 only at removal", async () => {
    const dataPath = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const gated = new GatedDevice(FileDevice.open(dataPath, false));
    const { target, close } = await constructOn(gated, log, 2048);
    const w1 = target.map(write(8, fill(1, 1)));
    const w2 = target.map(write(16, fill(2, 2)));
    const w3 = target.map(write(32, fill(3, 3)));
    await gated.submitted(3);
    await gated.complete(2); // C3
    await gated.complete(1); // C2
    const fl = target.map(flush());
    await gated.submitted(4);
    await gated.complete(0); // C1: completed after the flush was submitted
    await gated.complete(3); // Cflush
    await Promise.all([w1, w2, w3, fl]);
    // W3 (header + 3), W2 (header + 2), flush (header): next_sector 1 → 9, W1 still unflushed.
    await until(() => target.status("info") === "3 8");
    await close();
    const parsed = readLog(log);
    expect(describeEntries(parsed)).toEqual(["w32+3", "w16+2", "flush", "w8+1", "mark:dm-log-writes-end"]);
    expect(parsed.payload[0]!.equals(fill(3, 3))).toBe(true);
    expect(parsed.payload[3]!.equals(fill(1, 1))).toBe(true);
  });

  it("Wa,Wb,Wc,Cc,Ca,FLUSH,FUAd,Cb,CFLUSH,CFUAd logs c,a,flush,fuad; b waits for the next flush", async () => {
    const dataPath = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const gated = new GatedDevice(FileDevice.open(dataPath, false));
    const { target, close } = await constructOn(gated, log, 2048);
    const ios = [target.map(write(0, fill(1, 0xa))), target.map(write(8, fill(1, 0xb))), target.map(write(16, fill(1, 0xc)))];
    await gated.submitted(3);
    await gated.complete(2); // Cc
    await gated.complete(0); // Ca
    ios.push(target.map(flush()));
    await gated.submitted(4);
    ios.push(target.map(write(24, fill(1, 0xd), true)));
    await gated.submitted(5);
    await gated.complete(1); // Cb
    await gated.complete(3); // CFLUSH
    await gated.complete(4); // CFUAd
    await Promise.all(ios);
    await until(() => superNrEntries(log) === 4); // the FUA entry rewrote the super
    expect(describeEntries(readLog(log))).toEqual(["w16+1", "w0+1", "flush", "fua24+1"]);
    // A later flush picks b up.
    const fl2 = target.map(flush());
    await gated.complete(5);
    const fua2 = target.map(write(32, fill(1, 0xe), true));
    await gated.complete(6);
    await Promise.all([fl2, fua2]);
    await until(() => superNrEntries(log) === 7);
    expect(describeEntries(readLog(log)).slice(4)).toEqual(["w8+1", "flush", "fua32+1"]);
    await close();
  });

  it("a mark lands before completed-but-unflushed writes; discards are logged in completion order without payload", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20, "pattern");
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(0, fill(4, 0x11)));
    await dev.submit(discard(64, 16));
    await dev.message(S(0), ["MaRk", "one"]); // keyword is case-insensitive
    await dev.submit(flush());
    await dev.submit({ op: "write_zeroes", sector: S(128), count: S(8), fua: false });
    await reg.remove(dev);
    const parsed = readLog(log);
    expect(describeEntries(parsed)).toEqual(["mark:one", "w0+4", "discard64+16", "flush", "w128+8", "mark:dm-log-writes-end"]);
    expect(parsed.entries[2]!.dataBytes).toBe(0);
    expect(parsed.payload[4]!.equals(Buffer.alloc(8 * 512))).toBe(true); // write-zeroes logged as a zero write
    expect(parsed.nrEntries).toBe(6);
    const img = fs.readFileSync(data);
    expect(img.subarray(64 * 512, 80 * 512).every((b) => b === 0)).toBe(true); // the discard reached the file
  });

  it("super block: untouched until the first FUA or mark, then current after each", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    fs.writeFileSync(log, Buffer.alloc(512, 0xee), { flag: "r+" }); // an old super that must stay until the first FUA
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(0, fill(1, 1)));
    await dev.submit(flush());
    await until(() => dev.live!.lines("info")[0]!.params === "2 3");
    expect(fs.readFileSync(log).subarray(0, 512).every((b) => b === 0xee)).toBe(true);
    await dev.submit(write(8, fill(1, 2), true));
    await until(() => superNrEntries(log) === 3);
    await dev.submit(write(16, fill(1, 3)));
    await dev.submit(flush());
    await until(() => dev.live!.lines("info")[0]!.params === "5 8");
    expect(superNrEntries(log)).toBe(3); // plain writes and flushes do not update it
  });
});

describe("write-zeroes (spec §2.2: the kernel sees zero-page writes)", () => {
  it("a large write-zeroes is logged as 1 MiB zero writes, without a buffer of its length; flush order kept", async () => {
    const MiB = 2048; // sectors
    const dataPath = makeFile(tmp.dir, "data", 48 << 20, "pattern");
    const log = makeFile(tmp.dir, "log", 48 << 20);
    const gated = new GatedDevice(FileDevice.open(dataPath, false));
    const { target, close } = await constructOn(gated, log, 48 * MiB);
    const w0 = target.map(write(0, fill(8, 0x11)));
    await gated.complete(0);
    await w0;
    const before = process.memoryUsage().arrayBuffers;
    const wz = target.map({ op: "write_zeroes", sector: S(8 * MiB + 8), count: S(32 * MiB + 16), fua: false });
    await gated.submitted(2);
    // Submitted, not completed: the old code held a 32 MiB zero buffer here.
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(4 << 20);
    await gated.complete(1);
    await wz;
    const fl = target.map(flush());
    await gated.complete(2);
    await fl;
    await close();
    const parsed = readLog(log);
    const entries = describeEntries(parsed);
    const chunks = Array.from({ length: 32 }, (_, i) => `w${8 * MiB + 8 + i * MiB}+${MiB}`);
    expect(entries).toEqual(["w0+8", ...chunks, `w${40 * MiB + 8}+16`, "flush", "mark:dm-log-writes-end"]);
    for (let i = 1; i <= 33; i++) expect(parsed.payload[i]!.every((b) => b === 0)).toBe(true);
    expect(fs.readFileSync(dataPath).subarray((8 * MiB + 8) * 512, (40 * MiB + 24) * 512).every((b) => b === 0)).toBe(true);
  });

  it("a FUA write-zeroes gives FUA entries, each logged at completion ahead of unflushed writes", async () => {
    const data = makeFile(tmp.dir, "data", 4 << 20);
    const log = makeFile(tmp.dir, "log", 8 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(8192, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(0, fill(8, 1)));
    await dev.submit({ op: "write_zeroes", sector: S(2048), count: S(3072), fua: true });
    await dev.suspend({ noflush: false }); // the logger is idle once suspended
    expect(superNrEntries(log)).toBe(2);
    expect(describeEntries(readLog(log))).toEqual(["fua2048+2048", "fua4096+1024"]);
    await dev.resume({ noflush: false });
    await reg.remove(dev);
    expect(describeEntries(readLog(log))).toEqual(["fua2048+2048", "fua4096+1024", "w0+8", "mark:dm-log-writes-end"]);
  });
});

describe("marks and messages (spec §2.6)", () => {
  it("bad messages fail with EINVAL and log nothing; long marks are cut to sectorsize-33", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    expect((await errorOf(dev.message(S(0), ["mark"]))).errno).toBe("EINVAL");
    expect((await errorOf(dev.message(S(0), ["mark", "a", "b"]))).message).toMatch(/expect 2 arguments, got 3/);
    expect((await errorOf(dev.message(S(0), ["flush", "now"]))).message).toMatch(/Unrecognised log writes target message/);
    expect(dev.live!.lines("info")[0]!.params).toBe("0 0");
    await dev.message(S(0), ["mark", "a b"]); // dm_split_args already turned "a\ b" into one word
    await dev.message(S(0), ["mark", "x".repeat(600)]);
    await until(() => superNrEntries(log) === 2);
    const parsed = readLog(log);
    expect(parsed.entries[0]!.header.mark!.toString()).toBe("a b");
    expect(parsed.entries[1]!.header.dataLen).toBe(479);
    expect(parsed.entries[1]!.header.mark!.toString()).toBe("x".repeat(479));
  });
});

describe("tables (spec §2.1)", () => {
  it("status, table line, target version and block size", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log} extra ignored`), false); // the kernel ignores extra arguments
    await dev.resume({ noflush: false });
    expect(dev.live!.lines("table")[0]!.params).toBe(`${data} ${log}`);
    expect(dev.live!.lines("info")[0]!.params).toBe("0 0");
    expect(dev.logicalBlockSize).toBe(512);
  });

  it.each([["4096"], ["2 frobnicate 1"], ["1"], ["0"], ["2 4096 log_sector_size"], ["x 2 log_sector_size 4096"]])(
    "extra arguments '%s' are ignored, as the kernel ignores everything after the two devices",
    async (extra) => {
      const data = makeFile(tmp.dir, "data", 1 << 20);
      const log = makeFile(tmp.dir, "log", 1 << 20);
      const dev = reg.create({ name: "lw" });
      await dev.load(line(2048, `${data} ${log} ${extra}`), false);
      await dev.resume({ noflush: false });
      expect(dev.live!.lines("table")[0]!.params).toBe(`${data} ${log}`);
      expect(dev.logicalBlockSize).toBe(512);
    },
  );

  it("the tsdm option group: 2 log_sector_size N (keyword in any case)", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log} 2 LOG_SECTOR_SIZE 4096 trailing`), false);
    await dev.resume({ noflush: false });
    expect(dev.live!.lines("table")[0]!.params).toBe(`${data} ${log} 2 log_sector_size 4096`);
    expect(dev.logicalBlockSize).toBe(4096);
  });

  it("the same device as data and log device is accepted, as by the kernel (dmsetup oracle)", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${data}`), false);
    await dev.resume({ noflush: false });
    expect(dev.live!.lines("table")[0]!.params).toBe(`${data} ${data}`);
    expect(dev.live!.lines("info")[0]!.params).toBe("0 0");
  });

  it.each([
    ["no arguments", "", /Invalid argument count/],
    ["one argument", "DATA", /Invalid argument count/],
    ["missing data device", "MISSING LOG", /Device lookup failed/],
    ["missing log device", "DATA MISSING", /Log device lookup failed/],
    ["data device too small", "SMALL LOG", /too small/],
    ["bad log_sector_size", "DATA LOG 2 log_sector_size 1000", /power of two/],
    ["log_sector_size too small", "DATA LOG 2 log_sector_size 256", /Invalid log_sector_size/],
    ["log_sector_size without value", "DATA LOG 1 log_sector_size", /needs a value/],
    ["unknown option inside the log_sector_size group", "DATA LOG 4 log_sector_size 4096 frobnicate 1", /Unrecognised optional parameter/],
    ["log_sector_size not a number", "DATA LOG 2 log_sector_size big", /Invalid log_sector_size/],
    ["option count beyond the arguments", "DATA LOG 3 log_sector_size 4096", /optional parameters/],
  ])("%s → EINVAL, live table and log untouched", async (_what, params, reason) => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const small = makeFile(tmp.dir, "small", 4096);
    const log = makeFile(tmp.dir, "log", 1 << 20, "pattern");
    const before = fs.readFileSync(log);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    const p = fillArgs(params, { DATA: data, LOG: log, MISSING: `${tmp.dir}/missing`, SMALL: small });
    const e = await errorOf(dev.load(line(2048, p), false));
    expect(e.message).toMatch(reason);
    expect(["EINVAL", "ENOENT"]).toContain(e.errno);
    expect(dev.inactive).toBeUndefined();
    expect(dev.live!.lines("table")[0]!.params).toBe(`${data} ${log}`);
    expect(fs.readFileSync(log).equals(before)).toBe(true);
  });
});

describe("log full (spec §2.5)", () => {
  it("the entry that would reach the end disables logging; I/O passes through; the super stays consistent", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 16 * 512); // room for the super + 15 sectors
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(0, fill(4, 1), true)); // next_sector 1 → 6
    await dev.submit(write(8, fill(4, 2), true)); // 6 → 11
    await until(() => superNrEntries(log) === 2);
    await dev.submit(write(16, fill(4, 3), true)); // 11 → 16 = end of device: refused
    await until(() => dev.live!.lines("info")[0]!.params.endsWith("logging_disabled"));
    expect(dev.live!.lines("info")[0]!.params).toBe("2 15 logging_disabled");
    await dev.submit(write(24, fill(2, 4), true)); // passes through, not logged
    await dev.message(S(0), ["mark", "dropped"]); // accepted, dropped
    await reg.remove(dev); // no end mark either
    const img = fs.readFileSync(data);
    expect(img.subarray(24 * 512, 26 * 512).equals(fill(2, 4))).toBe(true);
    const parsed = readLog(log);
    expect(parsed.nrEntries).toBe(2);
    expect(describeEntries(parsed)).toEqual(["fua0+4", "fua8+4"]);
  });
});

describe("log device errors (spec §2.5)", () => {
  it("a failed log write disables logging; the data write still completes; the super is never written", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    // The log file opened read-only: every log write fails with EROFS, a real I/O error from the device.
    const { target, close } = await constructOn(FileDevice.open(data, false), log, 2048, [], FileDevice.open(log, true));
    await target.map(write(0, fill(8, 0x42), true));
    await until(() => target.status("info").endsWith("logging_disabled"));
    expect(target.status("info")).toBe("1 9 logging_disabled");
    await target.map(write(8, fill(8, 0x43), true)); // passes through unlogged
    expect(target.status("info")).toBe("1 9 logging_disabled");
    await close();
    expect(fs.readFileSync(data).subarray(0, 16 * 512).equals(Buffer.concat([fill(8, 0x42), fill(8, 0x43)]))).toBe(true);
    expect(fs.readFileSync(log).every((b) => b === 0)).toBe(true);
  });
});

describe("suspend and read-only tables", () => {
  it("suspend returns once the logger has written everything queued: status and super agree", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 4 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await Promise.all(Array.from({ length: 32 }, (_, i) => dev.submit(write(i * 16, fill(16, i + 1), i % 4 === 0))));
    await dev.message(S(0), ["mark", "m"]);
    await dev.suspend({ noflush: false });
    const [entries] = dev.live!.lines("info")[0]!.params.split(" ");
    expect(Number(entries)).toBe(9); // 8 FUA writes + the mark; the 24 plain writes wait for a flush
    expect(superNrEntries(log)).toBe(9);
    await dev.resume({ noflush: false });
  });

  it("a read-only table logs nothing, not even the end mark", async () => {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw", readOnly: true });
    await dev.load(line(2048, `${data} ${log}`), true);
    await dev.resume({ noflush: false });
    await expect(dev.submit(write(0, fill(1, 1)))).rejects.toThrow();
    await reg.remove(dev);
    expect(fs.readFileSync(log).every((b) => b === 0)).toBe(true);
  });
});

describe("memory bounds (beyond the kernel, which holds everything)", () => {
  const direct = (data: BlockDevice, logDev: BlockDevice, memory: { heldBytes: number; pendingBytes: number }) =>
    new LogWritesTarget({
      dev: data,
      logDev,
      sectorSize: 512,
      explicitSectorSize: false,
      start: S(0),
      readOnly: false,
      memory,
      ctx: { deviceName: "lw-mem", readOnly: false, start: S(0), openDevice: () => Promise.reject(new Error("unused")), raiseEvent: () => undefined, log: () => undefined },
    });

  it("writes held without a flush beyond the bound are logged early, in completion order, still before the flush", async () => {
    const data = FileDevice.open(makeFile(tmp.dir, "data", 1 << 20), false);
    const logPath = makeFile(tmp.dir, "log", 4 << 20);
    const logDev = FileDevice.open(logPath, false);
    const target = direct(data, logDev, { heldBytes: 16 << 10, pendingBytes: 1 << 30 });
    // 40 writes of 1 KiB: every 17 pass the 16 KiB bound and are logged with no flush in sight; 6 stay held.
    for (let i = 0; i < 40; i++) await target.map(write(i * 2, fill(2, i + 1)));
    await until(() => target.status("info").startsWith("34 "));
    await target.map(flush());
    await target.destroy();
    await Promise.all([data.close(), logDev.close()]);
    const entries = describeEntries(readLog(logPath));
    expect(entries).toEqual([...Array.from({ length: 40 }, (_, i) => `w${i * 2}+2`), "flush", "mark:dm-log-writes-end"]);
  });

  it("a log device that falls behind slows writers down instead of queueing without bound", async () => {
    const data = FileDevice.open(makeFile(tmp.dir, "data", 1 << 20), false);
    const logPath = makeFile(tmp.dir, "log", 4 << 20);
    const gatedLog = new GatedDevice(FileDevice.open(logPath, false));
    const target = direct(data, gatedLog, { heldBytes: 4 << 10, pendingBytes: 8 << 10 });
    // FUA writes go to the queue at once; the log device takes nothing until released.
    let done = 0;
    const writes = Array.from({ length: 32 }, (_, i) => target.map(write(i * 2, fill(2, i + 1), true)).then(() => done++));
    await new Promise((r) => setTimeout(r, 50));
    // 8 KiB of payload may be pending: 8 writes in, one more handed to the (stuck) log device; the rest wait.
    expect(done).toBeLessThanOrEqual(9);
    expect(done).toBeGreaterThan(0);
    for (let i = 0; i < 200 && done < 32; i++) {
      await gatedLog.complete(i);
    }
    await Promise.all(writes);
    expect(done).toBe(32);
  });
});
