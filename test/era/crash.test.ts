import { spawn } from "node:child_process";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { createEra, eraOf, expectEraCheckClean, expectRefCountsClean, invalidateSince, ROOT, rng } from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-era-crash-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

interface ChildRun {
  firstEra: number;
  /** Blocks acknowledged, with the era the child was in when it last saw a checkpoint complete. */
  acked: Array<{ block: number; eraAtLeast: number }>;
}

/** Run the child until it has acknowledged `killAfter` writes, then SIGKILL it. */
function runChildAndKill(meta: string, origin: string, blockSize: number, nrBlocks: number, seed: number, killAfter: number): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "test/era/crash-child.ts"), meta, origin, String(blockSize), String(nrBlocks), String(seed)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const result: ChildRun = { firstEra: -1, acked: [] };
    let era = -1;
    let buf = "";
    let stderr = "";
    let killed = false;
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const [kind, value] = buf.slice(0, nl).split(" ");
        buf = buf.slice(nl + 1);
        if (killed) continue;
        if (kind === "E") result.firstEra = era = Number(value);
        else if (kind === "C") era = Number(value) - 1; // writes acknowledged after this were in an era >= the old one
        else if (kind === "A") {
          result.acked.push({ block: Number(value), eraAtLeast: era });
          if (result.acked.length >= killAfter) {
            killed = true;
            child.kill("SIGKILL");
          }
        }
      }
    });
    child.on("exit", (code, signal) => {
      if (signal === "SIGKILL" && killed) resolve(result);
      else reject(new Error(`child exited (${code ?? signal}) before the kill point: ${stderr}`));
    });
  });
}

describe("era crash consistency (kill -9 at random points)", () => {
  it("every acknowledged write is recorded after recovery; the metadata stays valid", async () => {
    const rand = rng(42);
    const blockSize = 8;
    const nrBlocks = 5000;
    const meta = makeFile(tmp.dir, "meta", 4 << 20);
    const origin = makeFile(tmp.dir, "origin", nrBlocks * blockSize * 512);
    let allAcked = new Set<number>();
    for (let round = 0; round < 3; round++) {
      const killAfter = 50 + Math.floor(rand() * 400);
      const r = await runChildAndKill(meta, origin, blockSize, nrBlocks, 1000 + round, killAfter);
      expect(r.acked.length).toBeGreaterThanOrEqual(killAfter);
      // Offline, straight after the crash: the committed metadata is valid as it is.
      await expectEraCheckClean(meta);
      await expectRefCountsClean(meta);
      // Recovery: opening archives the crashed era's writeset; suspending archives the new one.
      const dev = await createEra(reg, "recover", meta, origin, nrBlocks * blockSize, blockSize);
      expect(eraOf(dev)).toBeGreaterThan(r.firstEra);
      await reg.remove(dev);
      await expectEraCheckClean(meta);
      await expectRefCountsClean(meta);
      const since1 = new Set(await invalidateSince(meta, 1));
      for (const a of r.acked) expect(since1.has(a.block)).toBe(true);
      // Finer: a write acknowledged in era E is listed as written since E.
      const byEra = new Map<number, number[]>();
      for (const a of r.acked) byEra.set(a.eraAtLeast, [...(byEra.get(a.eraAtLeast) ?? []), a.block]);
      for (const [era, blocks] of byEra) {
        const since = new Set(await invalidateSince(meta, era));
        for (const b of blocks) expect(since.has(b)).toBe(true);
      }
      allAcked = new Set([...allAcked, ...r.acked.map((a) => a.block)]);
    }
    const since1 = new Set(await invalidateSince(meta, 1));
    for (const b of allAcked) expect(since1.has(b)).toBe(true);
  });
});
