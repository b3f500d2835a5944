import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { run } from "../helpers/daemon.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { S, flush, replayLog, write } from "./helpers.js";

/**
 * The xfstests shape (mkfs, mark, work, mark, teardown, replay to a mark, fsck) on a real ext4 image. No kernel
 * block device exists here for mkfs to write through, so the filesystem images are built offline by mke2fs -d
 * and their blocks are written through the log-writes device in-process, with periodic flushes and a FUA for
 * the block holding the ext4 superblock, the way a filesystem commits.
 */
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

const SIZE = 16 << 20;
const CHUNK = 64 << 10;

async function mkfs(name: string, files: Record<string, Buffer>): Promise<Buffer> {
  const dir = path.join(tmp.dir, `${name}.d`);
  for (const [f, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), content);
  }
  const img = path.join(tmp.dir, `${name}.img`);
  const r = await run("mkfs.ext4", ["-q", "-F", "-U", "4b1a3e6c-8b43-4b4e-9a6e-1f0d2c3b4a59", "-E", "hash_seed=0b5c8a7e-2d1f-4e3a-9c6b-5a4f3e2d1c0b", "-d", dir, img, `${SIZE >> 20}M`]);
  expect(r.code, r.stderr).toBe(0);
  return fs.readFileSync(img);
}

/** Write the chunks of `next` that differ from `prev` through the device; the first chunk last, with FUA. */
async function writeImage(dev: MappedDevice, prev: Buffer, next: Buffer): Promise<number> {
  let since = 0;
  let written = 0;
  for (let off = CHUNK; off < next.length; off += CHUNK) {
    const chunk = next.subarray(off, off + CHUNK);
    if (chunk.equals(prev.subarray(off, off + CHUNK))) continue;
    await dev.submit(write(off / 512, Buffer.from(chunk)));
    written++;
    if (++since === 16) {
      await dev.submit(flush());
      since = 0;
    }
  }
  await dev.submit(flush());
  await dev.submit(write(0, Buffer.from(next.subarray(0, CHUNK)), true));
  return written;
}

it("ext4: mkfs, mark, update, mark, remove; replay to each mark is the exact image and passes e2fsck", async () => {
  const v1 = await mkfs("v1", { a: Buffer.from("hello\n"), "sub/b": crypto.randomBytes(300_000) });
  const v2 = await mkfs("v2", { a: Buffer.from("hello again\n"), "sub/b": crypto.randomBytes(300_000), "sub/c": crypto.randomBytes(1_000_000) });
  const blank = Buffer.alloc(SIZE);
  const data = makeFile(tmp.dir, "data", SIZE);
  const log = makeFile(tmp.dir, "log", 48 << 20);
  const dev = reg.create({ name: "logwrites-test" });
  await dev.load([{ start: S(0), length: S(SIZE / 512), type: "log-writes", params: `${data} ${log}` }], false);
  await dev.resume({ noflush: false });
  expect(await writeImage(dev, blank, v1)).toBeGreaterThan(5);
  await dev.message(S(0), ["mark", "mkfs"]);
  await writeImage(dev, v1, v2);
  await dev.message(S(0), ["mark", "update"]);
  await reg.remove(dev);
  expect(fs.readFileSync(data).equals(v2)).toBe(true);

  for (const [mark, image] of [["mkfs", v1], ["update", v2]] as const) {
    const found = await replayLog(["--log", log, "--find", "--end-mark", mark]);
    expect(found.code, found.stderr).toBe(0);
    const target = makeFile(tmp.dir, `replay-${mark}`, SIZE);
    const r = await replayLog(["--log", log, "--replay", target, "--end-mark", mark]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readFileSync(target).equals(image)).toBe(true);
    const fsck = await run("e2fsck", ["-fn", target]);
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
  }

  // Crash-consistency walk over the whole log onto a zeroed image: the flush points in the middle of writing the
  // first image (the "mkfs") are not consistent filesystems...
  const fromZero = makeFile(tmp.dir, "walk-from-zero", SIZE);
  const broken = await replayLog(["--walk", "--check", "fua,flush,mark", "--log", log, "--replay", fromZero, "--fsck", "e2fsck -fn {} >/dev/null 2>&1"]);
  expect(broken.code).toBe(1);
  expect(broken.stdout).toMatch(/^first failing entry: \d+@\d+ \(FLUSH\)$/m);
  // ...so the checks start at the mkfs mark, everything before it replayed unchecked: each FUA/mark point passes.
  const walkImg = makeFile(tmp.dir, "walk", SIZE);
  const walk = await replayLog(["--walk", "--check-from-mark", "mkfs", "--check", "fua,mark", "--log", log, "--replay", walkImg, "--fsck", "e2fsck -fn {} >/dev/null 2>&1"]);
  expect(walk.code, walk.stdout + walk.stderr).toBe(0);
  expect(walk.stdout).toMatch(/^entry \d+@\d+ MARK "mkfs": ok\n(entry \d+@\d+ FUA: ok\n)+entry \d+@\d+ MARK "update": ok\n/);
  expect(fs.readFileSync(walkImg).equals(v2)).toBe(true);
});
