import v8 from "node:v8";
import vm from "node:vm";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { EraTarget } from "../../daemon/targets/era/target.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { createEra, eraOf, expectRefCountsClean, invalidateSince, S, writeBio } from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-era-mem-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

// A full GC before each sample: what is measured is memory the code still holds, not garbage awaiting a
// collector that a busy machine runs late (a 1 ms heapUsed sampler read 8.8 MB of garbage under CPU load).
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

/** Highest live JS heap growth over `baseline` seen while `work` runs (sampled every 50 ms, each after a full GC). */
async function peakHeapGrowth(work: () => Promise<void>): Promise<number> {
  const live = (): number => {
    gc();
    return process.memoryUsage().heapUsed;
  };
  const baseline = live();
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, live() - baseline)), 50);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return Math.max(peak, live() - baseline);
}

describe("era memory does not grow with the blocks a bio touches", () => {
  it("discarding 2M blocks, then digesting them, stays within a few MB of JS heap", async () => {
    const nrBlocks = 2 * 1024 * 1024;
    const meta = makeFile(tmp.dir, "meta", 32 << 20);
    const origin = makeFile(tmp.dir, "origin", nrBlocks * 4096);
    const dev = await createEra(reg, "e", meta, origin, nrBlocks * 8, 8);
    const t = dev.live!.targets()[0]!.target as EraTarget;
    await dev.submit(writeBio(0, 8)); // warm the paths once
    const discard = await peakHeapGrowth(() => dev.submit({ op: "discard", sector: S(0), count: S(nrBlocks * 8), fua: false }));
    const digest = await peakHeapGrowth(async () => {
      await dev.message(S(0), ["checkpoint"]);
      for (let i = 0; i < 12000 && t.metadata.archivedWritesets; i++) await new Promise((r) => setTimeout(r, 5));
    });
    expect(t.metadata.archivedWritesets).toBe(false);
    // A number per block would be 16 MB or more (the audit saw ~30 B/block); words and ranges are a few KB.
    expect(discard).toBeLessThan(8 << 20);
    expect(digest).toBeLessThan(8 << 20);
    expect(eraOf(dev)).toBe(2);
    await dev.suspend({ noflush: false });
    const all = await invalidateSince(meta, 1);
    expect(all.length).toBe(nrBlocks);
    await expectRefCountsClean(meta);
  }, 180_000);
});
