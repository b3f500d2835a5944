import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import type { Sector } from "../../daemon/core/units.js";
import { MAGIC_BOW, MAX_ENTRY_BYTES, crc32Raw, decodeEntry, decodeHeader, HEADER_SIZE } from "../../daemon/targets/bow/format.js";
import { fillArgs, makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { DmError } from "../../daemon/core/errors.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { BlockDevice } from "../../daemon/io/block-device.js";
import { FileDevice } from "../../daemon/io/file-device.js";
import type { TargetContext } from "../../daemon/targets/target.js";
import { bowTarget } from "../../daemon/targets/bow/index.js";
import { restoreCheckpoint } from "../../daemon/targets/bow/restore.js";
import { MemBlockDevice, contextFor, settle } from "./mem-device.js";
import { MemRawDevice } from "./workload.js";
import { createBow, discard, expectDmError, free, pattern, ranges, read, readFileRange, restoreFile, setState, state, write } from "./helpers.js";

const S = (n: number) => n as Sector;
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-bow-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

/** BowTest's loop file: 4096 sectors, each starting with "Sector <i>". */
function sectorFile(name = "loop", sectors = 4096): string {
  const buf = Buffer.alloc(sectors * 512);
  for (let i = 0; i < sectors; i++) buf.write(`Sector ${i}`, i * 512, "latin1");
  const p = path.join(tmp.dir, name);
  fs.writeFileSync(p, buf);
  return p;
}
const sectorText = (b: Buffer, off = 0) => b.toString("latin1", off, b.indexOf(0, off));

describe("bow: table line", () => {
  it.each([512, 1024, 2048, 4096])("block_size:%i is accepted and raises the logical block size", async (bs) => {
    const f = makeFile(tmp.dir, "d", 1 << 20);
    const dev = await createBow(reg, "b", f, 2048, `1 block_size:${bs}`);
    expect(dev.logicalBlockSize).toBe(bs);
    expect(dev.live!.lines("table")[0]!.params).toBe(`${f} 1 block_size:${bs}`);
    expect(dev.live!.lines("info")[0]!.params).toBe(`0 0 ${bs}`);
  });

  it("defaults to the lower device's logical block size; 4096 may be forced on a 512-byte device", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20);
    expect((await createBow(reg, "a", f, 2048)).logicalBlockSize).toBe(512);
    expect((await createBow(reg, "b", f, 2048, "1 block_size:4096")).logicalBlockSize).toBe(4096);
    expect((await createBow(reg, "c", f, 2048, "0")).logicalBlockSize).toBe(512);
  });

  it.each([
    ["", /Invalid argument count/],
    ["F 1 block_size:3000", /Invalid block_size/],
    ["F 1 block_size:8192", /Invalid block_size/],
    ["F 1 block_size:256", /Invalid block_size/],
    ["F 2 block_size:4096 x", /Invalid feature arguments/],
    ["F 1 foo", /Invalid feature arguments/],
    ["F 1", /Invalid feature arguments/],
    ["F x", /Invalid feature arguments/],
  ])("%j is rejected", async (params, text) => {
    const f = makeFile(tmp.dir, "d", 1 << 20);
    const dev = reg.create({ name: "b" });
    await expectDmError(dev.load([{ start: S(0), length: S(2048), type: "bow", params: fillArgs(params, { F: f }) }], false), "EINVAL", text);
  });

  it("a length that is not a whole number of blocks, or past the device, is rejected", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20);
    const dev = reg.create({ name: "b" });
    await expectDmError(dev.load([{ start: S(0), length: S(2044), type: "bow", params: `${f} 1 block_size:4096` }], false), "EINVAL", /multiple of the block size/);
    await expectDmError(dev.load([{ start: S(0), length: S(4096), type: "bow", params: f }], false), "EINVAL", /too small/);
  });
});

describe("bow: state machine", () => {
  it("0→1→2 only; illegal changes are EINVAL and change nothing", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const dev = await createBow(reg, "b", f, 2048);
    await discard(dev, 8, 64);
    const before = fs.readFileSync(f);
    for (const bad of ["2", "0", "3", "x", "-1", ""]) await expectDmError(setState(dev, bad), "EINVAL");
    expect(await state(dev)).toBe(0);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
    await setState(dev, "1\n"); // sysfs-style: only the first character counts
    expect(await state(dev)).toBe(1);
    for (const bad of ["1", "0", "3", "x"]) await expectDmError(setState(dev, bad), "EINVAL", /Invalid state/);
    await setState(dev, "21"); // "21" reads as 2
    expect(await state(dev)).toBe(2);
    for (const bad of ["0", "1", "2", "3"]) await expectDmError(setState(dev, bad), "EINVAL");
    expect(dev.live!.lines("info")[0]!.params).toMatch(/^2 /);
  });

  it("0→1 with fewer than two free blocks: ENOSPC, state 0, disk untouched", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const dev = await createBow(reg, "b", f, 2048);
    const before = fs.readFileSync(f);
    await expectDmError(setState(dev, "1"), "ENOSPC");
    await discard(dev, 100, 1);
    await expectDmError(setState(dev, "1"), "ENOSPC");
    expect(await state(dev)).toBe(0);
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 100", "Unchanged: 101", "Top: 2048"]);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
  });

  it("0→1 with block 0 trimmed: EIO, state 0, disk untouched", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const dev = await createBow(reg, "b", f, 2048);
    const before = fs.readFileSync(f);
    await discard(dev, 0, 16);
    await expectDmError(setState(dev, "1"), "EIO", /block 0/);
    expect(await state(dev)).toBe(0);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
  });

  it("unknown messages and wrong arities are EINVAL", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20);
    const dev = await createBow(reg, "b", f, 2048);
    await expectDmError(dev.message(S(0), ["frob"]), "EINVAL", /unknown message/);
    await expectDmError(dev.message(S(0), ["state", "1", "2"]), "EINVAL");
    await expectDmError(dev.message(S(0), ["free", "x"]), "EINVAL");
  });
});

describe("bow: state 0 trims", () => {
  it("BowTest discardVisible", async () => {
    const dev = await createBow(reg, "b", sectorFile(), 4096);
    for (const s of [8, 16, 12, 4]) await discard(dev, s, 1);
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 4", "Unchanged: 5", "Free: 8", "Unchanged: 9", "Free: 12", "Unchanged: 13", "Free: 16", "Unchanged: 17", "Top: 4096"]);
    expect(await free(dev)).toBe(4 * 512);
  });

  it("overlapping and adjacent discards merge; discards over free space change nothing; discards are not passed down", async () => {
    const f = sectorFile();
    const before = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 10, 10);
    await discard(dev, 15, 10); // overlap
    await discard(dev, 25, 5); // adjacent
    await discard(dev, 5, 5); // adjacent below
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 5", "Unchanged: 30", "Top: 4096"]);
    await discard(dev, 12, 3);
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 5", "Unchanged: 30", "Top: 4096"]);
    expect(await free(dev)).toBe(25 * 512);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
  });

  it("a write un-trims exactly the blocks it touches, and is written", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 100, 100);
    await write(dev, 150, pattern(3, 1));
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 100", "Unchanged: 150", "Free: 153", "Unchanged: 200", "Top: 4096"]);
    expect(await free(dev)).toBe(97 * 512);
    await write(dev, 100, pattern(1, 2));
    await write(dev, 199, pattern(1, 3));
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 101", "Unchanged: 150", "Free: 153", "Unchanged: 199", "Top: 4096"]);
    expect(readFileRange(f, 150, 3).equals(pattern(3, 1))).toBe(true);
    expect(await free(dev)).toBe(95 * 512);
  });

  it("with 4096-byte blocks, unaligned discards free only whole blocks and unaligned writes un-trim whole blocks", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const dev = await createBow(reg, "b", f, 2048, "1 block_size:4096");
    await discard(dev, 3, 30); // sectors 3..33: whole blocks 1..3 (sectors 8..32)
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 8", "Unchanged: 32", "Top: 2048"]);
    await write(dev, 17, pattern(1, 9)); // inside block 2
    expect(await ranges(dev)).toEqual(["Unchanged: 0", "Free: 8", "Unchanged: 16", "Free: 24", "Unchanged: 32", "Top: 2048"]);
    expect(await free(dev)).toBe(2 * 4096);
  });

  it("reads in state 0 pass through, sector 0 included", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    expect(sectorText(await read(dev, 0, 1))).toBe("Sector 0");
    expect(sectorText(await read(dev, 77, 1))).toBe("Sector 77");
  });
});

describe("bow: entering state 1", () => {
  it("the spec's worked example: allocation from the head of the free list, header and entry 0", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    const block0 = readFileRange(f, 0, 1);
    await discard(dev, 1, 1);
    await discard(dev, 3, 2);
    await setState(dev, "1");
    expect(await ranges(dev)).toEqual(["Sector0: 0", "Free: 1", "Unchanged: 2", "Sector0_current: 3", "Backup: 4", "Unchanged: 5", "Top: 4096"]);
    const log = readFileRange(f, 0, 1);
    const h = decodeHeader(log);
    expect(h).toEqual({ magic: MAGIC_BOW, headerVersion: 0x100, headerSize: 28, blockSize: 512, count: 1, sequence: 0, sector0: 3 });
    expect(decodeEntry(log, HEADER_SIZE, 0)).toEqual({ source: 0, dest: 4, size: 512, checksum: crc32Raw(0, block0) });
    expect(readFileRange(f, 3, 1).equals(block0)).toBe(true);
    expect(readFileRange(f, 4, 1).equals(block0)).toBe(true);
    expect(await free(dev)).toBe(512); // exact (the kernel would say 1536)

    // Write sector 2: backed up into sector 1, logged with a checksum seeded with block 2.
    const old2 = readFileRange(f, 2, 1);
    await write(dev, 2, pattern(1, 5));
    expect(await ranges(dev)).toEqual(["Sector0: 0", "Backup: 1", "Changed: 2", "Sector0_current: 3", "Backup: 4", "Unchanged: 5", "Top: 4096"]);
    const log2 = readFileRange(f, 0, 1);
    expect(decodeHeader(log2).count).toBe(2);
    expect(decodeEntry(log2, HEADER_SIZE, 1)).toEqual({ source: 2, dest: 1, size: 512, checksum: crc32Raw(2, old2) });
    expect(readFileRange(f, 1, 1).equals(old2)).toBe(true);
    expect(await free(dev)).toBe(0);
    // No space left: the next write to data that needs a backup fails, and writes nothing.
    const old6 = readFileRange(f, 6, 1);
    await expectDmError(write(dev, 6, pattern(1, 6)), "ENOSPC");
    expect(readFileRange(f, 6, 1).equals(old6)).toBe(true);
    expect(await ranges(dev)).toEqual(["Sector0: 0", "Backup: 1", "Changed: 2", "Sector0_current: 3", "Backup: 4", "Unchanged: 5", "Top: 4096"]);
  });

  it.each([
    ["a Free range split by a state-0 write: the piece below is used first", [["discard", 10, 10], ["discard", 30, 10], ["write", 15, 1]], 10],
    ["a discard merging with the Free range before it: that range keeps its place", [["discard", 10, 2], ["discard", 30, 10], ["discard", 12, 2]], 30],
  ] as const)("the kernel's free-list order: %s", async (_what, ios, live) => {
    const dev = await createBow(reg, "b", sectorFile(), 4096);
    for (const [op, sector, n] of ios) await (op === "write" ? write(dev, sector, pattern(n, 1)) : discard(dev, sector, n));
    await setState(dev, "1");
    const map = await ranges(dev);
    expect(map).toContain(`Sector0_current: ${live}`);
    expect(map).toContain(`Backup: ${live + 1}`);
  });

  it("F7: a head free extent of exactly one block becomes the live copy of block 0 and is never reused", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 100, 10);
    await discard(dev, 50, 1); // head: exactly one block
    await setState(dev, "1");
    expect(await ranges(dev)).toEqual(["Sector0: 0", "Unchanged: 1", "Sector0_current: 50", "Unchanged: 51", "Backup: 100", "Free: 101", "Unchanged: 110", "Top: 4096"]);
    await write(dev, 0, pattern(1, 1)); // block 0 → its live copy at 50
    for (let i = 0; i < 5; i++) await write(dev, 200 + i, pattern(1, 10 + i));
    expect(readFileRange(f, 50, 1).equals(pattern(1, 1))).toBe(true);
    expect((await read(dev, 0, 1)).equals(pattern(1, 1))).toBe(true);
  });
});

describe("bow: crashes around entering state 1", () => {
  it("the lower device failing writes during 0→1: EIO, state 0, map unchanged, no log on disk", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const lower = reg.create({ name: "lower" });
    // flakey with up 0 / down 1: always down, every write fails.
    await lower.load([{ start: S(0), length: S(4096), type: "flakey", params: `${f} 0 0 1 1 error_writes` }], false);
    await lower.resume({ noflush: false });
    const dev = await createBow(reg, "b", `${reg.mapperDir}/lower`, 4096);
    await discard(dev, 100, 50);
    const map = await ranges(dev);
    await expectDmError(setState(dev, "1"), "EIO");
    expect(await state(dev)).toBe(0);
    expect(await ranges(dev)).toEqual(map);
    expect(await free(dev)).toBe(50 * 512);
    await reg.remove(dev);
    await reg.remove(lower);
    expect(fs.readFileSync(f).equals(orig)).toBe(true);
    expect((await restoreFile(f)).kind).toBe("no-magic");
  });

  it("a crash right after the first log write rolls back to the original block 0", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 100, 50);
    await setState(dev, "1");
    await reg.remove(dev); // gone before any write
    expect(decodeHeader(readFileRange(f, 0, 1)).magic).toBe(MAGIC_BOW);
    expect(await restoreFile(f)).toMatchObject({ kind: "restored", entries: 1 });
    expect(fs.readFileSync(f).subarray(0, 100 * 512).equals(orig.subarray(0, 100 * 512))).toBe(true);
  });
});

describe("bow: sector 0 in state 1", () => {
  it("one-block I/O at 0 goes to the live copy; a multi-block bio at 0 is split; commit puts the live data at block 0", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 1000, 100);
    await setState(dev, "1");
    const log = readFileRange(f, 0, 1);
    expect(sectorText(await read(dev, 0, 1))).toBe("Sector 0");
    await write(dev, 0, pattern(1, 1));
    expect(readFileRange(f, 0, 1).equals(log)).toBe(true); // the log is untouched
    expect((await read(dev, 0, 1)).equals(pattern(1, 1))).toBe(true);
    // Sectors 0..3 in one bio: sector 0 redirected, 1..3 backed up.
    await write(dev, 0, pattern(4, 2));
    expect((await read(dev, 0, 4)).equals(pattern(4, 2))).toBe(true);
    expect(readFileRange(f, 1, 3).equals(pattern(4, 2).subarray(512))).toBe(true);
    expect(decodeHeader(readFileRange(f, 0, 1)).count).toBe(2);
    await setState(dev, "2");
    expect(readFileRange(f, 0, 4).equals(pattern(4, 2))).toBe(true);
    expect(decodeHeader(readFileRange(f, 0, 1)).magic).not.toBe(MAGIC_BOW);
    await reg.remove(dev); // a restore refuses an image a bow device still uses
    expect((await restoreFile(f)).kind).toBe("no-magic");
  });

  it("a write to the live copy's block moves it (checksum 0, sector0 updated) and keeps block 0's contents", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 1000, 100);
    await setState(dev, "1");
    const s0c = decodeHeader(readFileRange(f, 0, 1)).sector0;
    expect(s0c).toBe(1000);
    await write(dev, 0, pattern(1, 1));
    await write(dev, s0c, pattern(1, 2)); // a "free" block in the filesystem's view
    const log = readFileRange(f, 0, 1);
    const h = decodeHeader(log);
    expect(h.sector0).not.toBe(s0c);
    expect(decodeEntry(log, HEADER_SIZE, h.count - 1)).toEqual({ source: s0c, dest: h.sector0, size: 512, checksum: 0 });
    expect((await read(dev, 0, 1)).equals(pattern(1, 1))).toBe(true);
    expect((await read(dev, s0c, 1)).equals(pattern(1, 2))).toBe(true);
    expect(await ranges(dev)).toContain(`Sector0_current: ${h.sector0}`);
    await write(dev, 0, pattern(1, 3));
    expect(readFileRange(f, h.sector0, 1).equals(pattern(1, 3))).toBe(true);
  });
});

describe("bow: BowTest write matrix (submit and revert)", () => {
  /** BowTest's FindChanged: every in-use sector still says "Sector i", except `changed`. */
  function findChanged(image: Buffer, freeSectors: Set<number>, changed: number): void {
    let seen = -1;
    for (let i = 0; i < 4096; i++) {
      if (i !== changed && freeSectors.has(i)) continue;
      const text = sectorText(image, i * 512);
      if (text === "Changed") {
        expect(seen).toBe(-1);
        seen = i;
      } else expect(text).toBe(`Sector ${i}`);
    }
    expect(seen).toBe(changed);
  }
  const changedSector = () => {
    const b = Buffer.alloc(512);
    b.write("Changed", "latin1");
    return b;
  };

  for (const type of ["Sector0", "Sector0_current", "Unchanged", "Backup", "Free"]) {
    for (const mode of ["submit", "revert"] as const) {
      it(`write to ${type}, ${mode}`, async () => {
        const f = sectorFile();
        const dev = await createBow(reg, "b", f, 4096);
        await discard(dev, 1, 1);
        await discard(dev, 3, 2);
        const freeSectors = new Set([1, 3, 4]);
        await setState(dev, "1");
        const target = (await ranges(dev)).find((l) => l.startsWith(`${type}:`))!;
        const sector = Number(target.split(": ")[1]);
        // Free ranges are reached only by a backup that consumes them: leave one for this write.
        await write(dev, sector, changedSector());
        if (mode === "submit") {
          await setState(dev, "2");
          await reg.remove(dev);
          findChanged(fs.readFileSync(f), freeSectors, sector);
        } else {
          await reg.remove(dev);
          expect((await restoreFile(f)).kind).toBe("restored");
          findChanged(fs.readFileSync(f), freeSectors, -1);
        }
      });
    }
  }

  it("a write to a Changed range is not backed up again", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 1000, 100);
    await setState(dev, "1");
    await write(dev, 10, pattern(1, 1));
    const count = decodeHeader(readFileRange(f, 0, 1)).count;
    await write(dev, 10, pattern(1, 2));
    expect(decodeHeader(readFileRange(f, 0, 1)).count).toBe(count);
    await reg.remove(dev);
    await restoreFile(f);
    expect(sectorText(readFileRange(f, 10, 1))).toBe("Sector 10");
  });
});

describe("bow: backup-on-write", () => {
  it("one bio across mixed ranges; a write bigger than the head free extent takes several entries", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 3000, 4);
    await discard(dev, 3010, 3);
    await discard(dev, 3100, 40);
    await discard(dev, 40, 5); // free range in the middle of the bio below
    await setState(dev, "1");
    await write(dev, 30, pattern(3, 1)); // unchanged → backup
    const before = decodeHeader(readFileRange(f, 0, 1)).count;
    // 20..60 covers Unchanged, Changed (30..33), Unchanged, Free (40..45), Unchanged
    await write(dev, 20, pattern(40, 2));
    expect((await read(dev, 20, 40)).equals(pattern(40, 2))).toBe(true);
    const h = decodeHeader(readFileRange(f, 0, 1));
    expect(h.count - before).toBeGreaterThanOrEqual(2);
    expect(await ranges(dev)).toContain("Changed: 20");
    await reg.remove(dev);
    expect((await restoreFile(f)).kind).toBe("restored");
    const now = fs.readFileSync(f);
    for (let s = 1; s < 4096; s++) {
      const isFree = (s >= 3000 && s < 3004) || (s >= 3010 && s < 3013) || (s >= 3100 && s < 3140) || (s >= 40 && s < 45);
      if (!isFree) expect(now.compare(orig, s * 512, s * 512 + 512, s * 512, s * 512 + 512), `sector ${s}`).toBe(0);
    }
    expect(now.subarray(0, 512).equals(orig.subarray(0, 512))).toBe(true);
  });

  it("a backup larger than MAX_ENTRY_BYTES is logged in pieces of at most that, and rolls back", async () => {
    const f = makeFile(tmp.dir, "big", 40 << 20, "pattern");
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 81920, "1 block_size:4096");
    await discard(dev, 40960, 40960); // the second 20 MiB
    await setState(dev, "1");
    const zeroes = MAX_ENTRY_BYTES + (2 << 20);
    await dev.submit({ op: "write_zeroes", sector: S(2048), count: S(zeroes / 512), fua: false });
    const log = readFileRange(f, 0, 8);
    const h = decodeHeader(log);
    const sizes = Array.from({ length: h.count }, (_, i) => decodeEntry(log, HEADER_SIZE, i).size);
    expect(sizes).toEqual([4096, MAX_ENTRY_BYTES, 2 << 20]);
    expect((await read(dev, 2048, zeroes / 512)).equals(Buffer.alloc(zeroes))).toBe(true);
    await reg.remove(dev);
    expect(await restoreFile(f)).toMatchObject({ kind: "restored", entries: 3 });
    expect(fs.readFileSync(f).subarray(0, 40960 * 512).equals(orig.subarray(0, 40960 * 512))).toBe(true);
  });

  it("a write into the middle of a Free range needs no backup and splits it", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 100, 100);
    await setState(dev, "1");
    const count = decodeHeader(readFileRange(f, 0, 1)).count;
    await write(dev, 150, pattern(2, 1));
    expect(decodeHeader(readFileRange(f, 0, 1)).count).toBe(count);
    expect(await ranges(dev)).toEqual(["Sector0: 0", "Unchanged: 1", "Sector0_current: 100", "Backup: 101", "Free: 102", "Changed: 150", "Free: 152", "Unchanged: 200", "Top: 4096"]);
    expect(await free(dev)).toBe(96 * 512);
  });

  it("a discard in state 1 backs its data up first, then goes down; restore brings the data back", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 2048, "1 block_size:4096");
    await discard(dev, 1024, 512);
    await setState(dev, "1");
    await discard(dev, 64, 64);
    expect(readFileRange(f, 64, 64).equals(Buffer.alloc(64 * 512))).toBe(true); // punched
    expect(await ranges(dev)).toContain("Changed: 64");
    await reg.remove(dev);
    await restoreFile(f);
    expect(readFileRange(f, 64, 64).equals(orig.subarray(64 * 512, 128 * 512))).toBe(true);
  });

  it("zero-length and flush bios change neither the map nor the log", async () => {
    const f = sectorFile();
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 100, 100);
    await setState(dev, "1");
    const map = await ranges(dev);
    const log = readFileRange(f, 0, 1);
    await dev.submit({ op: "flush", sector: S(0), count: S(0), fua: false });
    await dev.submit({ op: "write", sector: S(10), count: S(0), data: Buffer.alloc(0), fua: false });
    await dev.submit({ op: "write", sector: S(0), count: S(0), data: Buffer.alloc(0), fua: true });
    expect(await ranges(dev)).toEqual(map);
    expect(readFileRange(f, 0, 1).equals(log)).toBe(true);
  });

  it("unaligned writes with 4096-byte blocks back up whole blocks", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 2048, "1 block_size:4096");
    await discard(dev, 1024, 512);
    await setState(dev, "1");
    await write(dev, 13, pattern(5, 1)); // sectors 13..17: blocks 1 and 2, partly
    await write(dev, 3, pattern(2, 2)); // inside block 0: goes to its live copy
    expect((await read(dev, 0, 24)).subarray(13 * 512, 18 * 512).equals(pattern(5, 1))).toBe(true);
    expect((await read(dev, 3, 2)).equals(pattern(2, 2))).toBe(true);
    expect(await ranges(dev)).toContain("Changed: 8");
    const log = readFileRange(f, 0, 8);
    const e = decodeEntry(log, HEADER_SIZE, 1);
    expect(e).toEqual({ source: 8, dest: e.dest, size: 8192, checksum: crc32Raw(1, orig.subarray(8 * 512, 24 * 512)) });
    await reg.remove(dev);
    await restoreFile(f);
    expect(fs.readFileSync(f).subarray(0, 1024 * 512).equals(orig.subarray(0, 1024 * 512))).toBe(true);
  });

  it("state 2 passes everything through, discards included", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const dev = await createBow(reg, "b", f, 2048);
    await discard(dev, 1024, 512);
    await setState(dev, "1");
    await setState(dev, "2");
    const map = await ranges(dev);
    await write(dev, 5, pattern(1, 1));
    await discard(dev, 100, 8);
    expect(readFileRange(f, 5, 1).equals(pattern(1, 1))).toBe(true);
    expect(readFileRange(f, 100, 8).equals(Buffer.alloc(4096))).toBe(true);
    expect(await ranges(dev)).toEqual(map);
  });
});

describe("bow: ENOSPC", () => {
  it("a data write without space fails completely; the map, the data and a later rollback stay right", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 100, 6); // 2 for state 1, 4 for backups
    await setState(dev, "1");
    await write(dev, 10, pattern(2, 1));
    const map = await ranges(dev);
    const log = readFileRange(f, 0, 1);
    await expectDmError(write(dev, 20, pattern(3, 2)), "ENOSPC"); // needs 3, 2 left
    expect(await ranges(dev)).toEqual(map);
    expect(readFileRange(f, 0, 1).equals(log)).toBe(true);
    expect(readFileRange(f, 20, 3).equals(orig.subarray(20 * 512, 23 * 512))).toBe(true);
    await write(dev, 20, pattern(2, 3)); // still fits
    await expectDmError(write(dev, 100, pattern(1, 4)), "ENOSPC"); // the live copy of block 0 cannot move
    await expectDmError(write(dev, 104, pattern(1, 4)), "ENOSPC"); // nor a Backup block be backed up
    await write(dev, 0, pattern(1, 5)); // block 0 itself needs no space
    await reg.remove(dev);
    expect((await restoreFile(f)).kind).toBe("restored");
    const now = fs.readFileSync(f);
    for (let s = 0; s < 4096; s++) {
      if (s >= 100 && s < 106) continue;
      expect(now.compare(orig, s * 512, s * 512 + 512, s * 512, s * 512 + 512), `sector ${s}`).toBe(0);
    }
  });

  it("log rollover without space: the triggering write fails; rollback is still exact", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 4096);
    // 512-byte blocks: 20 entries per log sector. Entry 0 + 19 one-block backups fill it.
    await discard(dev, 2000, 2 + 19);
    await setState(dev, "1");
    for (let i = 0; i < 19; i++) await write(dev, 10 + 2 * i, pattern(1, i));
    expect(decodeHeader(readFileRange(f, 0, 1)).count).toBe(20);
    expect(await free(dev)).toBe(0);
    // The 20th backup needs its block plus one for the rollover: ENOSPC, nothing written.
    await expectDmError(write(dev, 500, pattern(1, 99)), "ENOSPC");
    expect(readFileRange(f, 500, 1).equals(orig.subarray(500 * 512, 501 * 512))).toBe(true);
    await reg.remove(dev);
    expect((await restoreFile(f)).kind).toBe("restored");
    const now = fs.readFileSync(f);
    expect(now.subarray(0, 2000 * 512).equals(orig.subarray(0, 2000 * 512))).toBe(true);
  });
});

describe("bow: I/O errors", () => {
  /** A real file whose writes fail in [from, to) sectors: a fault injector around the data path (flushes work). */
  function faultyFile(path: string, from: number, to: number): BlockDevice {
    const inner = FileDevice.open(path, false);
    return Object.assign(Object.create(inner) as BlockDevice, {
      submit: (bio: Bio) =>
        bio.op === "write" && bio.sector < to && bio.sector + bio.count > from ? Promise.reject(new DmError("EIO", "injected write error")) : inner.submit(bio),
      close: () => inner.close(),
    });
  }
  const ctxFor = (dev: BlockDevice): TargetContext => ({
    deviceName: "b",
    readOnly: false,
    start: S(0),
    openDevice: async () => dev,
    raiseEvent: () => undefined,
    log: () => undefined,
  });
  const bio = (op: Bio["op"], sector: number, data?: Buffer, count = data ? data.length / 512 : 0): Bio => ({ op, sector: S(sector), count: S(count), data, fua: false });

  it("a backup copy that fails (EIO) leaves the map, the log and the data as they were", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const lower = faultyFile(f, 2048, 4096);
    const t = await bowTarget.construct(ctxFor(lower), [f], S(4096));
    try {
      await t.map(bio("discard", 3000, undefined, 100)); // bad free space
      await t.map(bio("discard", 1000, undefined, 2)); // good, at the head: taken by 0→1
      await t.message!(["state", "1"]);
      const map = await t.message!(["ranges"]);
      const log = readFileRange(f, 0, 1);
      await expectDmError(t.map(bio("write", 10, pattern(2, 1))), "EIO", /injected/);
      expect(await t.message!(["ranges"])).toBe(map);
      expect(await t.message!(["free"])).toBe(String(100 * 512));
      expect(readFileRange(f, 0, 1).equals(log)).toBe(true);
      expect(readFileRange(f, 10, 2).equals(orig.subarray(10 * 512, 12 * 512))).toBe(true);
      await t.map(bio("write", 0, pattern(1, 2))); // block 0's live copy still works
      const back = bio("read", 0, Buffer.alloc(512));
      await t.map(back);
      expect(back.data!.equals(pattern(1, 2))).toBe(true);
    } finally {
      await t.destroy();
      await lower.close();
    }
    expect(await restoreFile(f)).toMatchObject({ kind: "restored", entries: 1 });
    expect(fs.readFileSync(f).subarray(0, 1000 * 512).equals(orig.subarray(0, 1000 * 512))).toBe(true);
  });

  it("a failed backup copy frees its space only once the bio's other copies have stopped writing", async () => {
    const init = Buffer.alloc(4096 * 512);
    for (let i = 0; i < 4096; i++) pattern(1, 7000 + i).copy(init, i * 512);
    let fail44 = true;
    let open50!: () => void;
    let reached50!: () => void;
    const held50 = new Promise<void>((r) => (open50 = r));
    const at50 = new Promise<void>((r) => (reached50 = r));
    let hold50: Promise<void> | undefined = held50;
    // The first write to block 44 fails; the first write to block 50 waits for open50().
    const mem = new MemBlockDevice(Buffer.from(init), (b) => {
      if (b.op === "write" && b.sector === 44 && fail44) {
        fail44 = false;
        return Promise.reject(new DmError("EIO", "injected write error"));
      }
      if (b.op === "write" && b.sector === 50 && hold50) {
        const h = hold50;
        hold50 = undefined;
        reached50();
        return h;
      }
      return undefined;
    });
    const t = await bowTarget.construct(contextFor(mem), ["mem"], S(4096));
    // Free list, head first: [100,102) (taken by 0→1), [44,45), [50,52), [200,210).
    for (const [a, n] of [[200, 10], [50, 2], [44, 1], [100, 2]] as const) await t.map(bio("discard", a, undefined, n));
    await t.message!(["state", "1"]);
    const failed = t.map(bio("write", 10, pattern(2, 1))).catch((e: unknown) => e); // backups 10→44 (fails), 11→50 (held)
    await at50;
    await settle();
    const w = pattern(2, 2);
    await t.map(bio("write", 20, w)); // must not back up into 44 or 50 while the failed bio's copy may still land there
    open50();
    expect(await failed).toMatchObject({ errno: "EIO" });
    const back = bio("read", 10, Buffer.alloc(12 * 512));
    await t.map(back);
    expect(back.data!.subarray(0, 1024).equals(init.subarray(10 * 512, 12 * 512))).toBe(true);
    expect(back.data!.subarray(10 * 512).equals(w)).toBe(true);
    await t.destroy();
    expect((await restoreCheckpoint(new MemRawDevice(mem.image))).kind).toBe("restored");
    const free = new Set([44, 50, 51, 100, 101, ...Array.from({ length: 10 }, (_, i) => 200 + i)]);
    const inUse = Array.from({ length: 4096 }, (_, b) => b).filter((b) => !free.has(b));
    expect(inUse.find((b) => !mem.image.subarray(b * 512, b * 512 + 512).equals(init.subarray(b * 512, b * 512 + 512)))).toBeUndefined();
  });

  it("a failed log write stops all later writes (EIO) instead of writing past an unknown log", async () => {
    const f = sectorFile();
    let failBlock0 = false;
    const inner = FileDevice.open(f, false);
    const lower = Object.assign(Object.create(inner) as BlockDevice, {
      submit: (b: Bio) => (failBlock0 && b.op === "write" && b.sector === 0 ? Promise.reject(new DmError("EIO", "injected log write error")) : inner.submit(b)),
      close: () => inner.close(),
    });
    const t = await bowTarget.construct(ctxFor(lower), [f], S(4096));
    try {
      await t.map(bio("discard", 1000, undefined, 100));
      await t.message!(["state", "1"]);
      failBlock0 = true;
      await expectDmError(t.map(bio("write", 10, pattern(1, 1))), "EIO", /log write failed/);
      failBlock0 = false;
      await expectDmError(t.map(bio("write", 20, pattern(1, 2))), "EIO", /log unusable/);
      expect(sectorText(readFileRange(f, 10, 1))).toBe("Sector 10"); // the new data never went down
    } finally {
      await t.destroy();
      await lower.close();
    }
  });
});

describe("bow: log rollover", () => {
  async function fill(blockSize: number, entries: number) {
    const f = makeFile(tmp.dir, `d${blockSize}-${entries}`, 8 << 20, "pattern");
    const orig = fs.readFileSync(f);
    const spb = blockSize / 512;
    const dev = await createBow(reg, `b${blockSize}-${entries}`, f, 16384, `1 block_size:${blockSize}`);
    await discard(dev, 8192, 8192);
    await setState(dev, "1");
    for (let i = 1; i < entries; i++) await write(dev, 2 * i * spb, pattern(spb, i)); // every other block: one entry each
    return { f, orig, dev, spb };
  }

  it.each([
    [4096, 169, 0, 169],
    [4096, 170, 1, 2],
    [4096, 169 + 168 * 2 + 1, 3, 2],
    [512, 20, 0, 20],
    [512, 21, 1, 2],
  ])("block %i, %i entries → sequence %i with %i entries; the chain restores", async (bs, entries, seq, count) => {
    const { f, orig, dev, spb } = await fill(bs, entries);
    const log = readFileRange(f, 0, spb);
    const h = decodeHeader(log);
    expect([h.sequence, h.count]).toEqual([seq, count]);
    // Walk the chain: entry 0 of each sequence > 0 is the previous log sector, with a checksum seeded 0.
    let cur = log;
    for (let s = seq; s > 0; s--) {
      const e0 = decodeEntry(cur, HEADER_SIZE, 0);
      expect(e0.source).toBe(0);
      const prev = readFileRange(f, e0.dest, spb);
      expect(e0.checksum).toBe(crc32Raw(0, prev));
      expect(decodeHeader(prev).sequence).toBe(s - 1);
      expect(decodeHeader(prev).count).toBe(Math.floor((bs - 28) / 24));
      cur = prev;
    }
    await reg.remove(dev);
    const r = await restoreFile(f);
    expect(r).toMatchObject({ kind: "restored", entries: entries + seq });
    expect(fs.readFileSync(f).subarray(0, 8192 * 512).equals(orig.subarray(0, 8192 * 512))).toBe(true);
  });
});

describe("bow: status and removal", () => {
  it("status reports state, exact free bytes and block size; removal in state 0 changes nothing", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20, "pattern");
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 2048, "1 block_size:1024");
    await discard(dev, 0 + 64, 128);
    expect(dev.live!.lines("info")[0]!.params).toBe(`0 ${128 * 512} 1024`);
    await reg.remove(dev);
    expect(fs.readFileSync(f).equals(orig)).toBe(true);
    expect((await restoreFile(f)).kind).toBe("no-magic");
    expect(fs.readFileSync(f).equals(orig)).toBe(true);
  });

  it("a table brought back after a daemon restart rolls an open checkpoint back; a user's load leaves the log", async () => {
    const f = sectorFile();
    const orig = fs.readFileSync(f);
    const dev = await createBow(reg, "b", f, 4096);
    await discard(dev, 1000, 100);
    await setState(dev, "1");
    await write(dev, 0, pattern(1, 1));
    await write(dev, 10, pattern(20, 2));
    await reg.remove(dev); // the daemon "dies" in state 1
    const line = { start: S(0), length: S(4096), type: "bow", params: f };
    const user = reg.create({ name: "u" });
    await user.load([line], false);
    expect(decodeHeader(readFileRange(f, 0, 1)).magic).toBe(MAGIC_BOW); // untouched: warned only
    await user.clear();
    await reg.remove(user);
    const back = reg.create({ name: "b" });
    await back.load([line], false, { restoring: true });
    await back.resume({ noflush: false });
    const now = fs.readFileSync(f);
    expect(now.subarray(0, 1000 * 512).equals(orig.subarray(0, 1000 * 512))).toBe(true);
    expect(await state(back)).toBe(0);
  });

  it("a table reload keeps the device usable and tables round-trip", async () => {
    const f = makeFile(tmp.dir, "d", 1 << 20);
    const dev = await createBow(reg, "b", f, 2048, "1 block_size:2048");
    const line = dev.live!.lines("table")[0]!;
    await dev.load([line], false);
    await dev.suspend({ noflush: false });
    await dev.resume({ noflush: false });
    expect(dev.live!.lines("table")[0]).toEqual(line);
  });
});
