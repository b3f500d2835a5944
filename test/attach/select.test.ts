import fs from "node:fs";
import { describe, expect, it } from "vitest";
import { chooseAttacher, probeMethods } from "../../daemon/attach/select.js";
import { silentLogger } from "../../daemon/core/log.js";
import { startDaemon } from "../helpers/daemon.js";
import { tempDir } from "../helpers/registry.js";

// Method selection against what this kernel really offers (this machine: no nbd, no ublk; FUSE + loop).
describe.runIf(process.getuid?.() === 0)("attach method selection", () => {
  const env = { runDir: "/nonexistent", log: silentLogger };
  const probe = probeMethods();

  it("probes each method and says why one is unusable", () => {
    expect(probe.fuse).toBeUndefined();
    expect(probe.ublk === undefined).toBe(fs.existsSync("/dev/ublk-control"));
    if (probe.nbd !== undefined) expect(probe.nbd).toMatch(/nbd/);
  });

  it("auto takes the best usable method, ublk > nbd > fuse, and explains what it skipped", () => {
    const c = chooseAttacher("auto", env);
    if ("error" in c) throw new Error(c.error);
    const best = (["ublk", "nbd", "fuse"] as const).find((m) => probe[m] === undefined);
    expect(c.attacher.method).toBe(best);
    if (best === "fuse") expect(c.why).toMatch(/ublk: .*; nbd: /);
  });

  it("an explicit method that cannot work is an error naming the reason, not a silent fallback", () => {
    const missing = (["ublk", "nbd"] as const).find((m) => probe[m] !== undefined);
    if (!missing) return; // a kernel with both drivers: nothing to refuse
    const c = chooseAttacher(missing, env);
    expect("error" in c && c.error).toContain(`${missing}: ${probe[missing]}`);
  });

  it("tsdmd --attach with an unusable method refuses to start", async () => {
    const missing = (["ublk", "nbd"] as const).find((m) => probe[m] !== undefined);
    if (!missing) return;
    const tmp = tempDir("tsdm-select-");
    try {
      const err = await startDaemon({ dir: tmp.dir, args: ["--attach", missing] }).then(
        async (d) => {
          await d.stop();
          return undefined;
        },
        (e: Error) => e,
      );
      expect(err?.message).toMatch(/cannot attach kernel block devices/);
    } finally {
      tmp.cleanup();
    }
  });
});
