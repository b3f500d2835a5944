import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { LogFlag, encodeEntry, encodeSuper, logBlocks } from "../../daemon/targets/log-writes/format.js";
import { run } from "../helpers/daemon.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { snapshotForCheck } from "../../tools/replay-log/walk.js";
import { S, discard, fill, flush, replayLog, write } from "./helpers.js";

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

const p = (name: string) => path.join(tmp.dir, name);
const line = (length: number, params: string) => [{ start: S(0), length: S(length), type: "log-writes", params }];
const randomFile = (name: string, bytes: number) => {
  fs.writeFileSync(p(name), crypto.randomBytes(bytes));
  return p(name);
};
const copy = (from: string, to: string) => {
  fs.copyFileSync(from, p(to));
  return p(to);
};

function firstDifferentSector(a: Buffer, b: Buffer): number {
  for (let i = 0; i < Math.max(a.length, b.length); i += 512) if (!a.subarray(i, i + 512).equals(b.subarray(i, i + 512))) return i / 512;
  return -1;
}

/** A tsdm log: writes, flushes, FUA, discards and three marks, with the data image saved at each mark. */
async function tsdmWorkload(): Promise<{ seed: string; log: string; data: string; atMark: Map<string, Buffer> }> {
  const seed = randomFile("seed", 1 << 20);
  const data = copy(seed, "data");
  const log = makeFile(tmp.dir, "log", 4 << 20);
  const dev = reg.create({ name: "lw" });
  await dev.load(line(2048, `${data} ${log}`), false);
  await dev.resume({ noflush: false });
  const atMark = new Map<string, Buffer>();
  const mark = async (name: string) => {
    await dev.submit(flush()); // everything completed so far is logged before the mark
    await dev.message(S(0), ["mark", name]);
    atMark.set(name, fs.readFileSync(data));
  };
  const rnd = (n: number) => crypto.randomBytes(n * 512);
  await dev.submit(write(0, rnd(8)));
  await dev.submit(write(100, rnd(3), true));
  await mark("first");
  await dev.submit(discard(200, 64));
  await Promise.all([dev.submit(write(8, rnd(16))), dev.submit(write(400, rnd(1))), dev.submit(write(1000, rnd(40)))]);
  await mark("second");
  await dev.submit({ op: "write_zeroes", sector: S(1500), count: S(100), fua: false });
  await dev.submit(write(2000, rnd(48), true));
  await mark("third");
  await dev.submit(write(2040, rnd(8))); // unflushed: logged at removal, before the end mark
  await reg.remove(dev);
  return { seed, log, data, atMark };
}

describe("replaying tsdm logs", () => {
  it("replay to each mark reproduces the image at that mark; the full log reproduces the final image", async () => {
    const { seed, log, data, atMark } = await tsdmWorkload();
    for (const [name, image] of atMark) {
      const target = copy(seed, `replay-${name}`);
      const r = await replayLog(["--log", log, "--replay", target, "--end-mark", name]);
      expect(r.code, r.stderr).toBe(0);
      expect(firstDifferentSector(fs.readFileSync(target), image), `replay to mark ${name}`).toBe(-1);
    }
    const full = copy(seed, "replay-full");
    const r = await replayLog(["--log", log, "--replay", full]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readFileSync(full).equals(fs.readFileSync(data))).toBe(true);
    // --start-mark continues from a mark: first → end on top of the "first" image gives the final image.
    const cont = copy(seed, "replay-cont");
    fs.writeFileSync(cont, atMark.get("first")!);
    expect((await replayLog(["--log", log, "--replay", cont, "--start-mark", "first"])).code).toBe(0);
    expect(fs.readFileSync(cont).equals(fs.readFileSync(data))).toBe(true);
  });

  it("info, --num-entries (and its prefix), --find, --limit, -v lines", async () => {
    const { seed, log } = await tsdmWorkload();
    expect((await replayLog(["--log", log])).stdout).toMatch(/^Log version=1, sectorsize=512, entries=(\d+)\n$/);
    const n = (await replayLog(["--log", log, "--num"])).stdout.trim();
    expect(Number(n)).toBeGreaterThan(10);
    const found = (await replayLog(["--log", log, "--find", "--end-mark", "second"])).stdout.trim();
    expect(found).toMatch(/^\d+@\d+$/);
    const fua = await replayLog(["--log", log, "--find", "--next-fua"]);
    // The FUA write is logged at completion; the plain write before it waits for the flush.
    expect(fua.stdout.trim()).toBe("0@5");
    const end = (await replayLog(["--log", log, "--find", "--end-mark=dm-log-writes-end"])).stdout.trim();
    expect(end.split("@")[0]).toBe(String(Number(n) - 1));
    const target = copy(seed, "t");
    const v = await replayLog(["-v", "--log", log, "--replay", target, "--limit", "2"]);
    expect(v.code).toBe(0);
    expect(v.stdout).toBe("replaying 0@2: sector 100, size 1536, flags 0x2(FUA)\nreplaying 1@6: sector 0, size 4096, flags 0x0(NONE)\n");
  });

  it("discards punch holes in files; --no-discard leaves them; --start/--end-sector filter writes", async () => {
    const seed = randomFile("seed", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const data = copy(seed, "data");
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(discard(256, 512)); // 256 KiB: whole 4 KiB blocks of the file
    await dev.submit(write(0, fill(8, 0x77), true));
    await dev.submit(write(1024, fill(8, 0x88), true));
    await reg.remove(dev);

    const t1 = copy(seed, "t1");
    const blocksBefore = fs.statSync(t1).blocks;
    expect((await replayLog(["--log", log, "--replay", t1])).code).toBe(0);
    const img = fs.readFileSync(t1);
    expect(img.subarray(256 * 512, 768 * 512).every((b) => b === 0)).toBe(true);
    expect(fs.statSync(t1).blocks).toBeLessThan(blocksBefore); // a real hole, not written zeroes
    expect(img.equals(fs.readFileSync(data))).toBe(true);

    const t2 = copy(seed, "t2");
    expect((await replayLog(["--log", log, "--replay", t2, "--no-discard"])).code).toBe(0);
    expect(fs.readFileSync(t2).subarray(256 * 512, 768 * 512).equals(fs.readFileSync(seed).subarray(256 * 512, 768 * 512))).toBe(true);

    const t3 = copy(seed, "t3");
    const r = await replayLog(["-vv", "--log", log, "--replay", t3, "--no-discard", "--start-sector", "1000", "--end-sector", "2000"]);
    expect(r.stdout).toMatch(/^skipping 0@2: sector 0, size 4096/m); // FUA writes are logged at completion
    expect(r.stdout).toMatch(/^replaying 1@11: sector 1024, size 4096/m);
    const img3 = fs.readFileSync(t3);
    expect(img3.subarray(0, 4096).equals(fs.readFileSync(seed).subarray(0, 4096))).toBe(true);
    expect(img3.subarray(1024 * 512, 1032 * 512).equals(fill(8, 0x88))).toBe(true);
  });
});

describe("replaying onto a block device", () => {
  it("a loop device: writes land, discards go down as BLKDISCARD", async () => {
    const seed = randomFile("seed", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const data = copy(seed, "data");
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(0, fill(8, 0x5e), true));
    await dev.submit(discard(512, 256));
    await reg.remove(dev);
    const backing = copy(seed, "backing");
    const attach = await run("losetup", ["-f", "--show", backing]);
    expect(attach.code, attach.stderr).toBe(0);
    const loop = attach.stdout.trim();
    try {
      const r = await replayLog(["-v", "--log", log, "--replay", loop]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).not.toMatch(/doesn't support discard/);
    } finally {
      await run("losetup", ["-d", loop]);
    }
    expect(fs.readFileSync(backing).equals(fs.readFileSync(data))).toBe(true);
    expect(fs.readFileSync(backing).subarray(512 * 512, 768 * 512).every((b) => b === 0)).toBe(true);
  });
});

describe("errors and exit codes (spec §3.4)", () => {
  async function smallLog(): Promise<string> {
    const data = makeFile(tmp.dir, "data", 1 << 20);
    const log = makeFile(tmp.dir, "log", 1 << 20);
    const dev = reg.create({ name: "lw" });
    await dev.load(line(2048, `${data} ${log}`), false);
    await dev.resume({ noflush: false });
    await dev.submit(write(0, fill(1, 1), true));
    await dev.message(S(0), ["mark", "m"]);
    await reg.remove(dev);
    return log;
  }

  it.each([
    ["no --log", [], 1, /--log is required/],
    ["unknown option", ["--log", "X", "--bogus"], 1, /unrecognized option '--bogus'/],
    ["ambiguous prefix", ["--log", "X", "--n"], 1, /ambiguous/],
    ["option missing its argument", ["--log"], 1, /requires an argument/],
    ["flag with a value", ["--log", "X", "--find=1"], 1, /doesn't allow an argument/],
    ["bad number", ["--log", "X", "--limit", "12x"], 1, /Invalid entry number/],
    ["--check 0", ["--log", "X", "--check", "0", "--fsck", "true"], 1, /Invalid entry number/],
    ["missing log file", ["--log", "MISSING"], 1, /Couldn't open log/],
    ["missing replay target (never created)", ["--log", "X", "--replay", "MISSING"], 1, /Couldn't open replay file/],
    ["--fsck without --check", ["--log", "X", "--fsck", "true"], 1, /--fsck and --check go together/],
    ["start entry past the end", ["--log", "X", "--start-entry", "99"], 1, /Invalid entry number/],
    ["start mark not found", ["--log", "X", "--start-mark", "nope"], 1, /Couldn't find starting mark/],
    ["find without a match", ["--log", "X", "--find", "--end-mark", "nope"], 1, /Couldn't find entry/],
  ])("%s", async (_what, args, code, text) => {
    const log = await smallLog();
    const r = await replayLog(args.map((a) => (a === "X" ? log : a === "MISSING" ? p("missing") : a)));
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(text);
    expect(fs.existsSync(p("missing"))).toBe(false);
  });

  it("bad magic, wrong version, empty log, overstated nr_entries", async () => {
    const bad = p("bad.log");
    fs.writeFileSync(bad, Buffer.alloc(4096));
    expect(await replayLog(["--log", bad])).toMatchObject({ code: 1, stderr: "Magic doesn't match\n" });
    const v2 = encodeSuper({ nrEntries: 1, sectorSize: 512 });
    v2.writeBigUInt64LE(2n, 8);
    fs.writeFileSync(bad, v2);
    expect(await replayLog(["--log", bad])).toMatchObject({ code: 1, stderr: "Version mismatch, wanted 1, have 2\n" });
    fs.writeFileSync(bad, encodeSuper({ nrEntries: 0, sectorSize: 512 }));
    expect(await replayLog(["--log", bad, "--num-entries"])).toMatchObject({ code: 1, stderr: "Invalid entry number\n" });
    // nr_entries says 3 but only one entry is there: zeroes after it are malformed.
    const entry = encodeEntry({ sector: logBlocks(0), nrSectors: logBlocks(1), flags: LogFlag.FUA, dataLen: 0 }, 512);
    fs.writeFileSync(bad, Buffer.concat([encodeSuper({ nrEntries: 3, sectorSize: 512 }), entry, Buffer.alloc(512, 9), Buffer.alloc(4096)]));
    expect(await replayLog(["--log", bad, "--find", "--end-mark", "x"])).toMatchObject({ code: 255, stderr: "Malformed entry @3\n" });
    const target = makeFile(tmp.dir, "t", 1 << 20);
    expect(await replayLog(["--log", bad, "--replay", target])).toMatchObject({ code: 1, stderr: "Malformed entry @3\n" });
    expect(fs.readFileSync(target).subarray(0, 512).equals(Buffer.alloc(512, 9))).toBe(true); // entry 0 was replayed
  });

  it("--fsck with --check: the command runs at each FUA; a failure stops the replay with exit 1", async () => {
    const log = await smallLog();
    const target = makeFile(tmp.dir, "t", 1 << 20);
    const ok = await replayLog(["--log", log, "--replay", target, "--check", "fua", "--fsck", `echo checked >> ${p("calls")}`]);
    expect(ok.code).toBe(0);
    expect(fs.readFileSync(p("calls"), "utf8")).toBe("checked\n");
    const bad = await replayLog(["--log", log, "--replay", target, "--check", "1", "--fsck", "exit 3"]);
    expect(bad).toMatchObject({ code: 1, stderr: "Fsck errored out on entry 0\n" });
  });
});

describe("details of the xfstests replay-log (src/log-writes)", () => {
  /** A hand-built log: `blocks` are header blocks (512 B) and payload blocks, the super counting `entries`. */
  const handLog = (entries: number, blocks: Buffer[]) => {
    fs.writeFileSync(p("hand.log"), Buffer.concat([encodeSuper({ nrEntries: entries, sectorSize: 512 }), ...blocks]));
    return p("hand.log");
  };
  const header = (sector: number, nr: number, flags: number) => encodeEntry({ sector: logBlocks(sector), nrSectors: logBlocks(nr), flags, dataLen: 0 }, 512);
  /** A mark header whose bytes after the text are `tail` (the kernel writes zeroes there). */
  const markHeader = (text: string, dataLen: number, tail = "") => {
    const b = encodeEntry({ sector: logBlocks(0), nrSectors: logBlocks(0), flags: LogFlag.MARK, dataLen }, 512);
    Buffer.from(text + tail, "latin1").copy(b, 32);
    return b;
  };

  it("-vv: --start-entry seeks print the header position and no flag names; --find and --start-mark seeks do", async () => {
    // Entry 0: header @1, payload @2-3; entry 1 (FUA): header @4, payload @5; entry 2 (mark): header @6.
    const log = handLog(3, [header(5, 2, 0), fill(2, 0x61), header(9, 1, LogFlag.FUA), fill(1, 0x62), markHeader("m", 1)]);
    const target = makeFile(tmp.dir, "t", 1 << 20);
    const bySeek = await replayLog(["-vv", "--log", log, "--replay", target, "--start-entry", "2"]);
    expect(bySeek.stdout).toBe("seek entry 0@1: 5, size 2, flags 0x0\nseek entry 1@4: 9, size 1, flags 0x2\nreplaying 2@7: sector 0, size 0, flags 0x8(MARK)\n");
    const byFind = await replayLog(["-vv", "--log", log, "--find", "--end-mark", "m", "--start-entry", "1"]);
    expect(byFind.stdout).toBe("seek entry 0@1: 5, size 2, flags 0x0\nseek entry 1@5: 9, size 1, flags 0x2(FUA)\nseek entry 2@7: 0, size 0, flags 0x8(MARK)\n2@7\n");
    const byMark = await replayLog(["-vv", "--log", log, "--find", "--next-fua", "--start-mark", "m"]);
    expect(byMark).toMatchObject({ code: 1, stdout: "seek entry 0@2: 5, size 2, flags 0x0(NONE)\nseek entry 1@5: 9, size 1, flags 0x2(FUA)\nseek entry 2@7: 0, size 0, flags 0x8(MARK)\n" });
  });

  it("stray operands are ignored, as getopt_long leaves them to a main() that never looks", async () => {
    const log = handLog(1, [markHeader("m", 1)]);
    expect(await replayLog(["--log", log, "stray", "--num-entries", "more"])).toMatchObject({ code: 0, stdout: "1\n", stderr: "" });
  });

  it("marks match as strncmp(name, text, data_len + 1): the byte after the text counts, an embedded NUL ends it", async () => {
    // data_len 3 but "abcd" on disk (no NUL after the text), and data_len 5 holding "ab\0cd".
    const log = handLog(3, [markHeader("abc", 3, "d"), markHeader("ab\0cd", 5), markHeader("abc", 3)]);
    const find = async (mark: string) => (await replayLog(["--log", log, "--find", "--end-mark", mark])).stdout.trim();
    expect(await find("abc")).toBe("2@4"); // not entry 0: its text is not NUL-terminated at data_len
    expect(await find("abcd")).toBe("0@2");
    expect(await find("abcdXYZ")).toBe("0@2"); // strncmp stops after data_len + 1 bytes
    expect(await find("ab")).toBe("1@3");
  });
});

describe("logs written by QEMU blklogwrites (spec §4, §7)", () => {
  const qemuLog = async (opts: string, cmds: string[]) => {
    const seed = randomFile("seed", 4 << 20);
    const base = copy(seed, "base.img");
    fs.writeFileSync(p("q.log"), "");
    const imageOpts = `driver=blklogwrites,file.driver=file,file.filename=${base},log.driver=file,log.filename=${p("q.log")}${opts}`;
    const r = await run("qemu-io", ["--image-opts", imageOpts, ...cmds.flatMap((c) => ["-c", c])]);
    expect(r.code, r.stderr).toBe(0);
    return { seed, base };
  };

  it.each([
    ["512 B units", ""],
    ["4 KiB units, eager super", ",log-sector-size=4096,log-super-update-interval=1"],
    // QEMU takes any power of two from 32 (the entry header's size) up: headers then have no room after their fields.
    ["256 B units", ",log-sector-size=256,log-super-update-interval=1"],
    ["32 B units", ",log-sector-size=32,log-super-update-interval=1"],
  ])("%s: replay gives a bit-identical image", async (_what, opts) => {
    const { seed, base } = await qemuLog(opts, ["write -P 0xab 0 64k", "flush", "write -P 0xcd 1M 4k", "write -z 2M 64k", "discard 3M 8k", "aio_write -P 0x11 512 1k", "aio_flush"]);
    const replay = copy(seed, "replay.img");
    const r = await replayLog(["--log", p("q.log"), "--replay", replay]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readFileSync(replay).equals(fs.readFileSync(base))).toBe(true);
    expect(fs.readFileSync(replay).equals(fs.readFileSync(seed))).toBe(false);
    const info = await replayLog(["--log", p("q.log")]);
    expect(info.stdout).toMatch(`sectorsize=${/log-sector-size=(\d+)/.exec(opts)?.[1] ?? 512},`);
  });

  it("log-append=on: a continued log replays to the final image", async () => {
    const { seed, base } = await qemuLog("", ["write -P 0x01 0 8k", "flush"]);
    const more = await run("qemu-io", [
      "--image-opts",
      `driver=blklogwrites,file.driver=file,file.filename=${base},log.driver=file,log.filename=${p("q.log")},log-append=on`,
      "-c",
      "write -P 0x02 4k 8k",
      "-c",
      "flush",
    ]);
    expect(more.code, more.stderr).toBe(0);
    const replay = copy(seed, "replay.img");
    expect((await replayLog(["--log", p("q.log"), "--replay", replay])).code).toBe(0);
    expect(fs.readFileSync(replay).equals(fs.readFileSync(base))).toBe(true);
  });
});

describe("crash-consistency walk (--walk)", () => {
  it("checks a snapshot at each flush/FUA/mark and reports the first failing entry", async () => {
    const { seed, log } = await tsdmWorkload();
    // The "invariant": sector 2000 never holds data from the FUA write of the third phase.
    const entries = (await replayLog(["-v", "--log", log, "--replay", copy(seed, "scan")])).stdout.split("\n");
    const fuaLine = entries.find((l) => /sector 2000, size 24576, flags 0x2/.test(l))!;
    const fuaIndex = Number(/replaying (\d+)@/.exec(fuaLine)![1]);
    const want = fs.readFileSync(seed).subarray(2000 * 512, 2001 * 512).toString("hex");
    const check = `test "$(dd if={} bs=512 skip=2000 count=1 status=none | od -An -v -tx1 | tr -d ' \\n')" = ${want}`;
    const target = copy(seed, "walk.img");
    const r = await replayLog(["--walk", "--log", log, "--replay", target, "--fsck", check]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`^first failing entry: ${fuaIndex}@\\d+ \\(FUA\\)$`, "m"));
    expect(r.stdout).toMatch(/^entry \d+@\d+ MARK "first": ok$/m);
    // Without the invariant every point passes; --check narrows the points to marks.
    const all = await replayLog(["--walk", "--check", "mark", "--log", log, "--replay", copy(seed, "walk2.img"), "--fsck", "test -s {}"]);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout.match(/: ok$/gm)!.length).toBe(4); // first, second, third, dm-log-writes-end
    expect(all.stdout).toMatch(/walk: 4 check points passed/);
  });

  it("--check-from-mark / --check-from-entry replay what comes before unchecked; --check-in-place checks the target itself", async () => {
    const { seed, log } = await tsdmWorkload();
    // Holds from the mark "second" on (sector 400 was rewritten before it), not before.
    const second = (await replayLog(["--log", log, "--find", "--end-mark", "second"])).stdout.split("@")[0]!;
    const changed = `! cmp -s -i 204800:204800 -n 512 {} ${p("seed")}`;
    const failing = await replayLog(["--walk", "--log", log, "--replay", copy(seed, "w1"), "--fsck", changed]);
    expect(failing.code).toBe(1);
    const fromMark = await replayLog(["--walk", "--check-from-mark", "second", "--log", log, "--replay", copy(seed, "w2"), "--fsck", changed]);
    expect(fromMark.code, fromMark.stdout).toBe(0);
    expect(fromMark.stdout.split("\n")[0]).toMatch(new RegExp(`^entry ${second}@\\d+ MARK "second": ok$`));
    const fromEntry = await replayLog(["--walk", "--check-from-entry", second, "--log", log, "--replay", copy(seed, "w3"), "--fsck", changed]);
    expect(fromEntry.stdout).toBe(fromMark.stdout);
    // In place: '{}' is the replay target (a regular file here), no snapshot.
    const target = copy(seed, "w4");
    const inPlace = await replayLog(["--walk", "--check-in-place", "--check", "mark", "--log", log, "--replay", target, "--fsck", `test {} = '${target}'`]);
    expect(inPlace.code, inPlace.stdout).toBe(0);
    expect(await replayLog(["--walk", "--check-from-mark", "nope", "--log", log, "--replay", target, "--fsck", "true"])).toMatchObject({ code: 1, stderr: "Couldn't find the mark to check from\n" });
    expect((await replayLog(["--check-in-place", "--log", log, "--replay", target, "--check", "mark", "--fsck", "true"])).stderr).toMatch(/--check-in-place goes with --walk/);
  });

  it("a check's snapshot keeps the image's holes (no full copy per check point without reflink)", () => {
    const img = makeFile(tmp.dir, "big", 256 << 20);
    const fd = fs.openSync(img, "r+");
    fs.writeSync(fd, fill(8, 0x5a), 0, 4096, 100 << 20);
    fs.closeSync(fd);
    const snap = snapshotForCheck(img, false);
    try {
      expect(fs.statSync(snap.path).size).toBe(256 << 20);
      expect(fs.statSync(snap.path).blocks * 512).toBeLessThan(1 << 20);
      const got = Buffer.alloc(4096);
      const sfd = fs.openSync(snap.path, "r");
      fs.readSync(sfd, got, 0, 4096, 100 << 20);
      fs.closeSync(sfd);
      expect(got.equals(fill(8, 0x5a))).toBe(true);
    } finally {
      snap.cleanup();
    }
    expect(fs.existsSync(snap.path)).toBe(false);
  });
});
