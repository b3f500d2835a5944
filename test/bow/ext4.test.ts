import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { execFileSync, spawnSync } from "node:child_process";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { MAGIC_BOW, decodeHeader } from "../../daemon/targets/bow/format.js";
import { makeRegistry, tempDir } from "../helpers/registry.js";
import { createBow, discard, rng, setState, write } from "./helpers.js";

/**
 * A filesystem-level proof without mounting: an ext4 image is checkpointed through the real bow target
 * (fstrim = discarding the blocks dumpe2fs reports free), an "update" made by debugfs on a copy is written
 * through bow block by block (every block the updated filesystem uses that changed or was free before, as a
 * filesystem writes what it allocates), then either committed (state 2) or rolled back with `tsdm bow-restore`
 * after a "failed boot". e2fsck -fn must find the result clean, and the files must read as expected.
 */
const ROOT = path.resolve(import.meta.dirname, "../..");
const BS = 4096;
const BLOCKS = 4096; // 16 MiB
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-bow-ext4-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const debugfs = (img: string, cmd: string, write = false) =>
  execFileSync("debugfs", [...(write ? ["-w"] : []), "-R", cmd, img], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

/** Free blocks as dumpe2fs lists them per group ("Free blocks: 1291-4095, 4100"). */
function freeBlocks(img: string): Set<number> {
  const out = execFileSync("dumpe2fs", [img], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const free = new Set<number>();
  for (const m of out.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1]!.split(",").map((p) => p.trim()).filter(Boolean)) {
      const [a, b] = part.split("-").map(Number);
      for (let x = a!; x <= (b ?? a!); x++) free.add(x);
    }
  }
  return free;
}

function fsck(img: string): { status: number | null; out: string } {
  const r = spawnSync("e2fsck", ["-fn", img], { encoding: "utf8" });
  return { status: r.status, out: r.stdout + r.stderr };
}

function md5InUse(img: Buffer, free: Set<number>): string {
  const h = crypto.createHash("md5");
  for (let b = 0; b < BLOCKS; b++) if (!free.has(b)) h.update(img.subarray(b * BS, (b + 1) * BS));
  return h.digest("hex");
}

function hostFile(name: string, bytes: number, seed: number): string {
  const p = path.join(tmp.dir, name);
  const r = rng(seed);
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = Math.floor(r() * 256);
  fs.writeFileSync(p, b);
  return p;
}

async function checkpointAndUpdate() {
  const img = path.join(tmp.dir, "data.img");
  fs.writeFileSync(img, "");
  fs.truncateSync(img, BLOCKS * BS);
  execFileSync("mkfs.ext4", ["-q", "-F", "-b", String(BS), "-E", "nodiscard", img]);
  fs.writeFileSync(path.join(tmp.dir, "orig.txt"), "Original\n");
  debugfs(img, `write ${hostFile("keep.bin", 300_000, 1)} keep`, true);
  debugfs(img, `write ${path.join(tmp.dir, "orig.txt")} file`, true);
  debugfs(img, `write ${hostFile("old.bin", 500_000, 2)} old`, true);
  expect(fsck(img).status).toBe(0);
  const before = fs.readFileSync(img);
  const freeBefore = freeBlocks(img);

  // The update, made on a copy: overwrite "file", delete "old", add "new" and a directory.
  const updated = path.join(tmp.dir, "updated.img");
  fs.copyFileSync(img, updated);
  fs.writeFileSync(path.join(tmp.dir, "changed.txt"), "Changed\n");
  debugfs(updated, "rm file", true);
  debugfs(updated, `write ${path.join(tmp.dir, "changed.txt")} file`, true);
  debugfs(updated, "rm old", true);
  debugfs(updated, `write ${hostFile("new.bin", 700_000, 3)} new`, true);
  debugfs(updated, "mkdir dir", true);
  expect(fsck(updated).status).toBe(0);
  const after = fs.readFileSync(updated);
  const freeAfter = freeBlocks(updated);

  // Boot: bow over the device, fstrim, state 1.
  const dev = await createBow(reg, "bow", img, BLOCKS * (BS / 512), `1 block_size:${BS}`);
  for (let b = 0; b < BLOCKS; ) {
    if (!freeBefore.has(b)) {
      b++;
      continue;
    }
    let e = b;
    while (e < BLOCKS && freeBefore.has(e)) e++;
    await discard(dev, b * 8, (e - b) * 8);
    b = e;
  }
  expect(Number(await dev.message(0 as never, ["free"]))).toBe(freeBefore.size * BS);
  await setState(dev, "1");
  // The filesystem writes what changed and what it newly allocated, in no particular order.
  const toWrite: number[] = [];
  for (let b = 0; b < BLOCKS; b++) {
    if (freeAfter.has(b)) continue;
    const differs = after.compare(before, b * BS, (b + 1) * BS, b * BS, (b + 1) * BS) !== 0;
    if (differs || freeBefore.has(b)) toWrite.push(b);
  }
  const r = rng(9);
  toWrite.sort(() => r() - 0.5);
  expect(toWrite.length).toBeGreaterThan(100);
  await Promise.all(toWrite.map((b) => write(dev, b * 8, after.subarray(b * BS, (b + 1) * BS))));
  return { img, dev, before, freeBefore, after, freeAfter };
}

describe("bow: ext4 checkpoint, update, then commit or roll back", () => {
  it("commit: the raw device is the updated filesystem, fsck-clean, no magic", async () => {
    const { img, dev, after, freeAfter } = await checkpointAndUpdate();
    expect(decodeHeader(fs.readFileSync(img)).magic).toBe(MAGIC_BOW);
    await setState(dev, "2");
    await reg.remove(dev);
    const now = fs.readFileSync(img);
    expect(decodeHeader(now).magic).not.toBe(MAGIC_BOW);
    expect(md5InUse(now, freeAfter)).toBe(md5InUse(after, freeAfter));
    const f = fsck(img);
    expect(f.status, f.out).toBe(0);
    expect(debugfs(img, "cat file")).toBe("Changed\n");
    expect(debugfs(img, "ls -l")).toMatch(/ new\s/);
  });

  it("failed boot: tsdm bow-restore gives back the pre-update filesystem, identical on every block in use", async () => {
    const { img, dev, before, freeBefore } = await checkpointAndUpdate();
    await reg.remove(dev); // no commit
    const check = spawnSync(process.execPath, ["--import", "tsx", path.join(ROOT, "tools/tsdm.ts"), "bow-restore", "--check", img], { cwd: ROOT, encoding: "utf8" });
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toMatch(/valid checkpoint log: block size 4096/);
    const run = spawnSync(process.execPath, ["--import", "tsx", path.join(ROOT, "tools/tsdm.ts"), "bow-restore", img], { cwd: ROOT, encoding: "utf8" });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/restored the checkpoint/);
    const now = fs.readFileSync(img);
    expect(md5InUse(now, freeBefore)).toBe(md5InUse(before, freeBefore));
    const f = fsck(img);
    expect(f.status, f.out).toBe(0);
    expect(debugfs(img, "cat file")).toBe("Original\n");
    expect(debugfs(img, "ls -l")).not.toMatch(/ new\s/);
    expect(debugfs(img, "ls -l")).toMatch(/ old\s/);
  });
});
