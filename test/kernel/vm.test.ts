import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT, run } from "../helpers/daemon.js";

/**
 * tsdm against the kernel's own targets, in the kernel VM of ../shared/tools/kvm (Debian 6.12 under TCG; the
 * host kernel has no device-mapper). Each script boots the guest once (seconds to a minute) and exits 0 only
 * when tsdm and the kernel agree. Root is needed for the loop devices; TSDM_KVM_TESTS=0 leaves them out.
 */
const enabled = process.getuid?.() === 0 && process.env.TSDM_KVM_TESTS !== "0";

/** The harness: $KVM_TOOLS, else ../shared/tools/kvm next to the checkout (where the workplace puts it). */
const KVM_TOOLS = process.env.KVM_TOOLS ?? path.resolve(ROOT, "..", "shared", "tools", "kvm");

async function script(rel: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  expect(fs.existsSync(path.join(KVM_TOOLS, "run-guest.sh")), `kernel VM harness not found at ${KVM_TOOLS} (set KVM_TOOLS, or TSDM_KVM_TESTS=0 to leave these out)`).toBe(true);
  for (let attempt = 1; ; attempt++) {
    const r = await run("bash", [path.join(ROOT, rel)], { env: { KVM_TOOLS, ...env }, timeoutMs: 600_000 });
    const out = r.stdout + r.stderr;
    // The emulated guest kernel itself can die while booting (TCG has panicked in early init here, before any
    // of our code ran): that is no test result, so such a run is repeated. A guest that booted never is.
    if (r.code !== 0 && attempt < 3 && !guestBooted(out)) {
      console.warn(`${rel}: the guest kernel did not boot (attempt ${attempt}); running it again`);
      continue;
    }
    expect(r.code, `${rel} failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    return out;
  }
}

/**
 * run-guest.sh writes boot-times into its output dir, where guest-init records that it came up. Our scripts
 * name their output dir ("outputs in DIR", also when they fail); the guest's is DIR or a directory in it.
 */
function guestBooted(output: string): boolean {
  const dirs = [...output.matchAll(/outputs in (\S+)/g)].map((m) => m[1]!.replace(/[;,)]$/, ""));
  const bootTimes = dirs.flatMap((d) => {
    let subdirs: string[] = [];
    try {
      subdirs = fs.readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(d, e.name));
    } catch {
      // gone: nothing to read
    }
    return [d, ...subdirs].map((x) => path.join(x, "boot-times")).filter((f) => fs.existsSync(f));
  });
  if (bootTimes.length === 0) return true; // cannot tell: treat it as a real failure
  return bootTimes.every((f) => fs.readFileSync(f, "utf8").includes("guest-init:"));
}

// One file, so the VM runs one at a time (they share the guest build under $KVM_DIR).
describe.runIf(enabled)("kernel VM oracles", () => {
  it("log-writes: the same workload gives byte-identical logs and data through the kernel and tsdm (512 B sectors)", async () => {
    const out = await script("test/log-writes/kernel/compare.sh");
    expect(out).toContain("log images byte-identical");
    expect(out).toContain("data images identical");
  }, 600_000);

  it("log-writes: byte-identical logs on a 4 KiB-sector data device", async () => {
    const out = await script("test/log-writes/kernel/compare.sh", { SECTOR: "4096" });
    expect(out).toContain("log images byte-identical");
  }, 600_000);

  it("era: metadata written by the kernel opens in tsdm and the other way round; same era_dump", async () => {
    const out = await script("test/era/kernel/run.sh");
    expect(out).toMatch(/OK\s+era_dump of tsdm's image equals era_dump of the kernel's image/);
    expect(out).not.toMatch(/^FAIL/m);
  }, 600_000);

  it("dmsetup oracle: the same dmsetup command lines through the real dmsetup and the kernel, and through tsdmsetup and tsdmd, give the same exit codes, stdout and stderr", async () => {
    const out = await script("test/ctl/kernel/run.sh", { TSDM_SKIP_BUILD: "1" });
    expect(out).toMatch(/dmsetup oracle: transcripts identical \(\d+ steps\)/);
  }, 600_000);

  it("attach: a tsdm device through kernel NBD and through ublk: mkfs, mount, fstrim, EBUSY, fsck, read back, detach; ublk device of a killed tsdmd deleted at restart", async () => {
    const methods = (process.env.METHODS ?? "nbd ublk").split(/\s+/).filter(Boolean);
    const out = await script("test/attach/kvm/run.sh", { METHODS: methods.join(" ") });
    for (const m of methods) expect(out).toContain(`PASS ${m}`);
    if (methods.includes("ublk")) expect(out).toContain("PASS ublk-crash");
  }, 900_000);
});
