import fs from "node:fs";
import path from "node:path";
import { spawn, spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ENTRY_SIZE, HEADER_SIZE, MAGIC_BOW, MAGIC_WOB, crc32Raw, decodeEntry, decodeHeader, encodeEntry, encodeHeader } from "../../daemon/targets/bow/format.js";
import { restoreCheckpoint, type RestoreResult } from "../../daemon/targets/bow/restore.js";
import { Relocations } from "../../daemon/targets/bow/relocations.js";
import { tempDir } from "../helpers/registry.js";
import { run as runCli } from "../../tools/bow-restore/cli.js";
import { firstDifference } from "./helpers.js";
import { MemRawDevice, makeCheckpointed, type Checkpointed } from "./workload.js";

const ROOT = path.resolve(import.meta.dirname, "../..");
let tmp: ReturnType<typeof tempDir>;
let small: Checkpointed; // 512-byte blocks, a few log sectors
let big: Checkpointed; // 4096-byte blocks
let reference: Buffer; // `small` after one uninterrupted restore

beforeAll(async () => {
  tmp = tempDir("tsdm-bow-restore-");
  small = await makeCheckpointed(tmp.dir, { blockSize: 512, seed: 7, ops: 60 });
  big = await makeCheckpointed(tmp.dir, { blockSize: 4096, seed: 11, ops: 400, sectors: 16384 });
  const dev = new MemRawDevice(Buffer.from(small.after));
  expect((await restoreCheckpoint(dev)).kind).toBe("restored");
  reference = dev.image;
});
afterAll(() => tmp.cleanup());

async function restoreMem(image: Buffer, opts: Parameters<typeof restoreCheckpoint>[1] = {}): Promise<{ result: RestoreResult; image: Buffer }> {
  const dev = new MemRawDevice(Buffer.from(image));
  return { result: await restoreCheckpoint(dev, opts), image: dev.image };
}

function expectCheckpointImage(c: Checkpointed, image: Buffer): void {
  expect(firstDifference(image, c.before, c.blockSize, c.inUse)).toBe(-1);
}

describe("bow-restore: correctness", () => {
  it.each([
    ["512-byte blocks", () => small],
    ["4096-byte blocks", () => big],
  ])("%s: random writes all over the device roll back to the checkpoint on every block in use", async (_n, get) => {
    const c = get();
    expect(decodeHeader(c.after).magic).toBe(MAGIC_BOW);
    const { result, image } = await restoreMem(c.after);
    expect(result.kind).toBe("restored");
    expectCheckpointImage(c, image);
    expect(decodeHeader(image).magic).not.toBe(MAGIC_BOW);
    // Running it again finds nothing to do and changes nothing.
    const again = await restoreMem(image);
    expect(again.result.kind).toBe("no-magic");
    expect(again.image.equals(image)).toBe(true);
  });

  it("the workload really exercised the log: several log sectors, backups of backups, the live block 0 moving", async () => {
    const h = decodeHeader(small.after);
    expect(h.sequence).toBeGreaterThanOrEqual(2);
    // Walk the log sectors as vold validates them: a saved log sector may itself have been backed up and
    // overwritten later, so read through the relocations of the newer entries.
    const sectors: Buffer[] = [];
    const reloc = new Relocations();
    for (let seq = h.sequence; seq >= 0; seq--) {
      const ls = small.after.subarray(reloc.phys(0) * 512, reloc.phys(0) * 512 + 512);
      expect(decodeHeader(ls).sequence).toBe(seq);
      sectors.unshift(ls);
      for (let i = decodeHeader(ls).count - 1; i >= 0; i--) {
        const e = decodeEntry(ls, HEADER_SIZE, i);
        reloc.relocate(e.source, e.dest, e.size / 512);
      }
    }
    const backedUp = new Set<number>();
    let backupOfBackup = false;
    let s0cMoves = 0;
    for (const ls of sectors) {
      for (let i = 1; i < decodeHeader(ls).count; i++) {
        const e = decodeEntry(ls, HEADER_SIZE, i);
        for (let s = e.source; s < e.source + e.size / 512; s++) if (backedUp.has(s)) backupOfBackup = true;
        for (let s = e.dest; s < e.dest + e.size / 512; s++) backedUp.add(s);
        if (e.checksum === 0) s0cMoves++;
      }
    }
    expect(backupOfBackup).toBe(true);
    expect(s0cMoves).toBeGreaterThan(0);
  });

  it("dry run validates and writes nothing", async () => {
    const { result, image } = await restoreMem(big.after, { dryRun: true });
    expect(result).toMatchObject({ kind: "checked", valid: true, blockSize: 4096 });
    expect(image.equals(big.after)).toBe(true);
  });
});

describe("bow-restore: interruption", () => {
  it("--limit N for every N, then a full run, gives the same image as one uninterrupted restore", async () => {
    const total = ((await restoreMem(small.after)).result as { entries: number }).entries;
    expect(total).toBeGreaterThan(40);
    for (let n = 1; n < total; n++) {
      const first = await restoreMem(small.after, { limit: n });
      expect(first.result).toEqual({ kind: "limit", entries: n });
      expect(decodeHeader(first.image).magic).toBe(MAGIC_WOB);
      const phases: string[] = [];
      const second = await restoreMem(first.image, { onPhase: (p) => phases.push(p) });
      expect(second.result).toMatchObject({ kind: "restored", resumed: true });
      expect(phases).toEqual(["restoring"]); // WOB: no validation
      expect(second.image.equals(reference), `limit ${n}`).toBe(true);
    }
  });

  it("--limit N where N is exactly the number of entries finishes the restore (no magic, nothing to resume)", async () => {
    const total = ((await restoreMem(small.after)).result as { entries: number }).entries;
    const r = await restoreMem(small.after, { limit: total });
    expect(r.result).toMatchObject({ kind: "restored", entries: total, resumed: false });
    expect(r.image.equals(reference)).toBe(true);
    const resumed = await restoreMem((await restoreMem(small.after, { limit: total - 3 })).image, { limit: 3 });
    expect(resumed.result).toMatchObject({ kind: "restored", entries: 3, resumed: true });
    expect(resumed.image.equals(reference)).toBe(true);
  });

  it("a run interrupted one entry at a time still ends with the same image", async () => {
    let image: Buffer = Buffer.from(small.after);
    let runs = 0;
    for (;;) {
      const r = await restoreMem(image, { limit: 1 });
      image = r.image;
      runs++;
      if (r.result.kind !== "limit") break;
    }
    expect(runs).toBeGreaterThan(40);
    expect(image.equals(reference)).toBe(true);
  });

  for (const dropUnsynced of [false, true]) {
    it(`a crash at every write and sync (${dropUnsynced ? "unsynced writes lost" : "process kill"}), then a rerun, gives the same image`, async () => {
      const probe = new MemRawDevice(Buffer.from(small.after));
      await restoreCheckpoint(probe);
      const steps = probe.steps;
      expect(steps).toBeGreaterThan(150);
      for (let k = 1; k <= steps; k++) {
        const dev = new MemRawDevice(Buffer.from(small.after), k, dropUnsynced);
        await expect(restoreCheckpoint(dev)).rejects.toThrow(/crash at step/);
        // Every third time, a second crash during the resumed run, a few steps in; then a clean run.
        let image = dev.image;
        if (k % 3 === 0) {
          const dev2 = new MemRawDevice(dev.image, 1 + (k % 7), dropUnsynced);
          try {
            await restoreCheckpoint(dev2);
          } catch (err) {
            if (!/crash at step/.test((err as Error).message)) throw err;
          }
          image = dev2.image;
        }
        const final = await restoreMem(image);
        expect(["restored", "no-magic"]).toContain(final.result.kind);
        expect(final.image.equals(reference), `crash at step ${k}`).toBe(true);
      }
    });
  }

  it("a WOB restore that hits a bad entry fails without rolling forward, and block 0 stays WOB", async () => {
    const first = await restoreMem(small.after, { limit: 3 });
    // Corrupt the data of an entry not yet restored (entry 0 of the current sector: the previous log sector).
    const img = Buffer.from(first.image);
    const e0 = decodeEntry(img, HEADER_SIZE, 0);
    img[e0.dest * 512 + 100]! ^= 0xff;
    const dev = new MemRawDevice(img);
    await expect(restoreCheckpoint(dev)).rejects.toThrow(/Checksums don't match/);
    expect(decodeHeader(dev.image).magic).toBe(MAGIC_WOB);
  });
});

describe("bow-restore: validation failures roll forward", () => {
  /** Block 0 becomes the live block 0 (sector0), everything else stays as it was. */
  async function expectRolledForward(image: Buffer, mutated: Buffer): Promise<void> {
    const { result, image: out } = await restoreMem(mutated);
    expect(result.kind).toBe("rolled-forward");
    const h = decodeHeader(image);
    const bs = decodeHeader(mutated).blockSize; // vold copies the header's block_size bytes
    expect(out.subarray(0, bs).equals(mutated.subarray(h.sector0 * 512, h.sector0 * 512 + bs))).toBe(true);
    expect(out.subarray(bs).equals(mutated.subarray(bs))).toBe(true);
  }

  /** Edit the current log sector of `small` (block 0). */
  function editLog(edit: (b: Buffer) => void): Buffer {
    const img = Buffer.from(small.after);
    edit(img);
    return img;
  }

  it("corrupt backup data (checksum mismatch)", async () => {
    const img = editLog((b) => {
      const h = decodeHeader(b);
      const e = decodeEntry(b, HEADER_SIZE, h.count - 1);
      b[e.dest * 512 + 7]! ^= 0x01;
    });
    await expectRolledForward(small.after, img);
  });

  it("a checksum of 0 is never checked", async () => {
    const img = editLog((b) => {
      const h = decodeHeader(b);
      const e = decodeEntry(b, HEADER_SIZE, h.count - 1);
      encodeEntry({ ...e, checksum: 0 }, b, h.count - 1);
      b[e.dest * 512 + 7]! ^= 0x01;
    });
    expect((await restoreMem(img)).result.kind).toBe("restored");
  });

  it("a broken sequence chain (previous log sector with the wrong sequence, checksum fixed up)", async () => {
    const img = editLog((b) => {
      const e0 = decodeEntry(b, HEADER_SIZE, 0);
      const prev = b.subarray(e0.dest * 512, e0.dest * 512 + 512);
      const ph = decodeHeader(prev);
      encodeHeader({ ...ph, sequence: ph.sequence + 5 }, prev);
      encodeEntry({ ...e0, checksum: crc32Raw(0, prev) }, b, 0);
    });
    await expectRolledForward(small.after, img);
  });

  it.each([
    ["header_size below 28", (b: Buffer) => b.writeUInt16LE(20, 6)],
    ["header_size beyond the block", (b: Buffer) => b.writeUInt16LE(600, 6)],
    ["count 0", (b: Buffer) => b.writeUInt32LE(0, 12)],
    ["count beyond the block", (b: Buffer) => b.writeUInt32LE(21, 12)],
    ["block_size differing from the previous sectors'", (b: Buffer) => b.writeUInt32LE(1024, 8)],
  ])("%s", async (_what, edit) => {
    await expectRolledForward(small.after, editLog(edit));
  });

  // Raw field writes: encodeEntry refuses sizes no restore accepts.
  it.each([
    ["size below block_size", (b: Buffer, off: number) => b.writeUInt32LE(256, off + 16)],
    ["size + block_size overflowing u32", (b: Buffer, off: number) => b.writeUInt32LE(0xffffffff - 100, off + 16)],
    ["dest beyond the device end", (b: Buffer, off: number) => b.writeBigUInt64LE(BigInt(1e9), off + 8)],
    ["source beyond the device end", (b: Buffer, off: number) => (b.writeBigUInt64LE(BigInt(1e9), off), b.writeUInt32LE(0, off + 20))],
  ])("%s", async (_what, edit) => {
    const img = editLog((b) => edit(b, HEADER_SIZE + (decodeHeader(b).count - 1) * ENTRY_SIZE));
    await expectRolledForward(small.after, img);
  });

  it("a short device (image truncated below the backups)", async () => {
    const h = decodeHeader(big.after);
    const dests = Array.from({ length: h.count }, (_, i) => decodeEntry(big.after, HEADER_SIZE, i).dest);
    const cut = Math.max(...dests) * 512;
    expect(cut).toBeGreaterThan(h.sector0 * 512);
    const img = Buffer.from(big.after.subarray(0, cut));
    const { result, image } = await restoreMem(img);
    expect(result.kind).toBe("rolled-forward");
    expect(image.subarray(0, 4096).equals(img.subarray(h.sector0 * 512, h.sector0 * 512 + 4096))).toBe(true);
  });

  it("block_size below 28, or not one a kernel writes, is refused with nothing written; no magic is a no-op", async () => {
    for (const [bs, msg] of [
      [16, /too small/],
      [0x40000000, /implausible block_size/],
      [3000, /implausible block_size/],
    ] as const) {
      const img = editLog((b) => b.writeUInt32LE(bs, 8));
      const dev = new MemRawDevice(img);
      await expect(restoreCheckpoint(dev)).rejects.toThrow(msg);
      expect(dev.image.equals(img)).toBe(true);
    }
    const plain = Buffer.alloc(8192, 0x5a);
    expect((await restoreMem(plain)).result).toEqual({ kind: "no-magic", magic: 0x5a5a5a5a });
  });
});

describe("tsdm bow-restore CLI", () => {
  /** The CLI in this process (its run() with stdout/stderr captured): exit codes and messages, quickly. */
  const tsdmInProcess = async (args: string[]) => {
    let stdout = "";
    let stderr = "";
    const out = process.stdout.write.bind(process.stdout);
    const err = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((c: string | Uint8Array) => ((stdout += String(c)), true)) as typeof process.stdout.write;
    process.stderr.write = ((c: string | Uint8Array) => ((stderr += String(c)), true)) as typeof process.stderr.write;
    try {
      const status = await runCli(args);
      return { status, stdout, stderr };
    } finally {
      process.stdout.write = out;
      process.stderr.write = err;
    }
  };
  /** The real binary entry, in a process of its own. */
  const tsdm = (args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", path.join(ROOT, "tools/tsdm.ts"), "bow-restore", ...args], { cwd: ROOT, encoding: "utf8" });

  it("--check, restore, then nothing to do; exit codes; roll forward exits 2", async () => {
    const f = path.join(tmp.dir, "cli.img");
    fs.writeFileSync(f, small.after);
    const spawned = tsdm(["--check", f]); // once through the real entry point
    expect(spawned.status, spawned.stderr).toBe(0);
    let r: { status: number | null; stdout: string; stderr: string } = spawned;
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/valid checkpoint log: block size 512, \d+ log sector\(s\), \d+ entries/);
    expect(fs.readFileSync(f).equals(small.after)).toBe(true);
    r = await tsdmInProcess(["--limit", "5", f]);
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(/stopped after 5 entries \(--limit\); block 0 is marked WOB, run again to resume/);
    r = await tsdmInProcess(["--check", f]);
    expect(r.stdout).toMatch(/interrupted restore is pending/);
    r = await tsdmInProcess([f]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/resumed/);
    expect(fs.readFileSync(f).equals(reference)).toBe(true);
    r = await tsdmInProcess([f]);
    expect([r.status, r.stdout]).toEqual([0, `${f}: no checkpoint log (no BOW/WOB magic in block 0); nothing to do\n`]);

    const bad = Buffer.from(small.after);
    const e = decodeEntry(bad, HEADER_SIZE, decodeHeader(bad).count - 1);
    bad[e.dest * 512]! ^= 1;
    fs.writeFileSync(f, bad);
    r = await tsdmInProcess(["--check", f]);
    expect(r.status).toBe(2);
    expect(fs.readFileSync(f).equals(bad)).toBe(true);
    r = await tsdmInProcess([f]);
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/rolled forward/);
    // A limit that reaches the last entry is a finished restore: exit 0, no "run again".
    fs.writeFileSync(f, small.after);
    const total = ((await restoreMem(small.after)).result as { entries: number }).entries;
    r = await tsdmInProcess(["--limit", String(total), f]);
    expect(r.status, r.stdout).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^${f}: restored the checkpoint: ${total} log entries, \\d+ bytes written back\n$`));
    expect(fs.readFileSync(f).equals(reference)).toBe(true);
    r = await tsdmInProcess([path.join(tmp.dir, "missing")]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cannot open/);
  });

  it("kill -9 at chosen writes and syncs, then a rerun: the same image", async () => {
    const probe = new MemRawDevice(Buffer.from(small.after));
    await restoreCheckpoint(probe);
    const steps = probe.steps;
    // A spread of crash points: early (before/after the first WOB), mid-sector, and at sequence hand-overs.
    const points = [2, 5, Math.floor(steps / 2), steps - 1];
    for (const k of points) {
      const f = path.join(tmp.dir, `kill-${k}.img`);
      fs.writeFileSync(f, small.after);
      await new Promise<void>((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "tools/tsdm.ts"), "bow-restore", "--step-gate", f], { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] });
        let buf = "";
        let seen = 0;
        child.stdout.on("data", (d: Buffer) => {
          buf += d.toString();
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!line.startsWith("step ")) continue;
            seen++;
            if (seen === k) child.kill("SIGKILL");
            else child.stdin.write("\n");
          }
        });
        child.on("error", reject);
        child.on("exit", (code, signal) => (signal === "SIGKILL" ? resolve() : reject(new Error(`exit ${code} before step ${k}`))));
      });
      const r = tsdm(["-q", f]);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.readFileSync(f).equals(reference), `kill at step ${k}`).toBe(true);
      fs.rmSync(f);
    }
  });
});
