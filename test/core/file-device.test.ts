import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import { onUserspaceBlockDevice } from "../../daemon/io/backing-fs.js";
import { FileDevice, major, minor } from "../../daemon/io/file-device.js";

/**
 * FileDevice's three ways to a file: on the calling thread (tmpfs; RWF_NOWAIT elsewhere, which does what the
 * page cache holds and hands the rest to the pool) and the thread pool. Whatever the mix, the file must end
 * up exactly as a model says, and reads must see it, cached or not.
 */
const S = (n: number): Sector => n as Sector;
const read = (sector: number, count: number): Bio => ({ op: "read", sector: S(sector), count: S(count), data: Buffer.alloc(count * 512, 0xee), fua: false });
const write = (sector: number, data: Buffer, fua = false): Bio => ({ op: "write", sector: S(sector), count: S(data.length / 512), data, fua });

/** xorshift32: reproducible workloads. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

/** Drop the file's pages from the page cache (coreutils: `dd iflag=nocache count=0` advises DONTNEED for all of it). */
const dropCache = (file: string): void => void execFileSync("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);

const SECTORS = 8192; // 4 MiB
const dirs = [os.tmpdir(), "/dev/shm"].filter((d) => fs.existsSync(d));
let work: string[] = [];
beforeEach(() => (work = dirs.map((d) => fs.mkdtempSync(path.join(d, "tsdm-filedev-")))));
afterEach(() => work.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

describe.each(dirs.map((d, i) => [d, i] as const))("FileDevice on %s", (_dir, i) => {
  it("random concurrent reads and writes of every size agree with a model, cached and uncached", async () => {
    const file = path.join(work[i]!, "img");
    fs.writeFileSync(file, Buffer.alloc(SECTORS * 512));
    const model = Buffer.alloc(SECTORS * 512);
    const dev = FileDevice.open(file, false);
    const next = rng(0x5eed + i);
    const sizes = [1, 7, 8, 64, 128, 129, 512]; // 512 B .. 256 KiB: both sides of the calling-thread limit
    try {
      for (let round = 0; round < 4; round++) {
        // A batch of non-overlapping writes in flight together (NBD gives no order to overlapping ones).
        const taken = new Uint8Array(SECTORS);
        const writes: Promise<void>[] = [];
        for (let k = 0; k < 48; k++) {
          const n = sizes[next(sizes.length)]!;
          const at = next(SECTORS - n);
          if (taken.subarray(at, at + n).some((t) => t)) continue;
          taken.fill(1, at, at + n);
          const data = Buffer.alloc(n * 512);
          for (let b = 0; b < data.length; b += 4) data.writeUInt32LE((round << 24) ^ (at * 512 + b), b);
          data.copy(model, at * 512);
          writes.push(dev.submit(write(at, data, next(4) === 0)));
        }
        await Promise.all(writes);
        if (round % 2 === 1) {
          await dev.submit({ op: "flush", sector: S(0), count: S(0), fua: false });
          dropCache(file);
        }
        const reads = Array.from({ length: 64 }, () => {
          const n = sizes[next(sizes.length)]!;
          const at = next(SECTORS - n);
          const bio = read(at, n);
          return dev.submit(bio).then(() => expect(bio.data!.equals(model.subarray(at * 512, (at + n) * 512)), `round ${round}: ${n} sectors at ${at}`).toBe(true));
        });
        await Promise.all(reads);
      }
      await dev.submit({ op: "flush", sector: S(0), count: S(0), fua: false });
    } finally {
      await dev.close();
    }
    expect(fs.readFileSync(file).equals(model)).toBe(true);
  });

  it("reads past the end of a file that shrank under it read as zeroes", async () => {
    const file = path.join(work[i]!, "img");
    fs.writeFileSync(file, Buffer.alloc(64 * 512, 0x5a));
    const dev = FileDevice.open(file, false);
    try {
      fs.truncateSync(file, 40 * 512 + 100);
      const across = read(36, 8); // 4 sectors and 100 bytes of data, then the end
      await dev.submit(across);
      const want = Buffer.alloc(8 * 512);
      want.fill(0x5a, 0, 4 * 512 + 100);
      expect(across.data!.equals(want)).toBe(true);
      const beyond = read(48, 8);
      await dev.submit(beyond);
      expect(beyond.data!.every((b) => b === 0)).toBe(true);
    } finally {
      await dev.close();
    }
  });
});

describe("file systems served from userspace (no work on the event loop for files there)", () => {
  it.runIf(process.getuid?.() === 0)("a loop device is; the disk holding the test's temp dir is not", () => {
    const img = path.join(work[0]!, "disk.img");
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 8 << 20);
    const loop = execFileSync("losetup", ["-f", "--show", img], { encoding: "utf8" }).trim();
    try {
      const devOf = (p: string): [number, number] => {
        const rdev = fs.statSync(p).rdev;
        return [major(rdev), minor(rdev)];
      };
      expect(onUserspaceBlockDevice(...devOf(loop))).toBe(true);
    } finally {
      execFileSync("losetup", ["-d", loop]);
    }
    const tmpDev = fs.statSync(os.tmpdir()).dev;
    const name = major(tmpDev) === 0 ? "" : path.basename(fs.realpathSync(`/sys/dev/block/${major(tmpDev)}:${minor(tmpDev)}`));
    if (!/^(loop|nbd|ublkb)/.test(name)) expect(onUserspaceBlockDevice(major(tmpDev), minor(tmpDev))).toBe(false);
  });
});
