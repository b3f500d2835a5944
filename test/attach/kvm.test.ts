import path from "node:path";
import { describe, expect, it } from "vitest";
import { run } from "../helpers/daemon.js";

// The kernel attach paths (ublk, kernel NBD) need drivers this machine's kernel lacks: they run in the
// kernel VM of ../shared/tools/kvm (Debian 6.12, TCG emulation). A run boots the guest once and attaches a
// tsdm device through each driver (mkfs, mount, fstrim, EBUSY, fsck, read back, detach); it takes about
// 2.5-3 minutes per method under TCG, so it runs only when asked: TSDM_KVM_TESTS=1 (METHODS="nbd ublk").
describe.runIf(process.env.TSDM_KVM_TESTS === "1" && process.getuid?.() === 0)("kernel VM: ublk and kernel nbd attach", () => {
  it(
    "attaches, serves a file system and detaches through each kernel driver",
    async () => {
      const r = await run(path.join(import.meta.dirname, "kvm", "run.sh"), [], { env: { METHODS: process.env.METHODS ?? "nbd ublk" }, timeoutMs: 900_000 });
      const methods = (process.env.METHODS ?? "nbd ublk").split(/\s+/).filter(Boolean);
      for (const m of methods) expect(r.stdout, r.stdout + r.stderr).toContain(`PASS ${m}`);
      expect(r.code).toBe(0);
    },
    900_000,
  );
});
