import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run, startDaemon, ROOT, type TestDaemon } from "../helpers/daemon.js";

// examples/bow-update.sh end to end, as root, against a real tsdmd whose devices are kernel block devices
// (--attach fuse: nbdfuse + loop): mkfs, mount /dev/mapper/bow, fstrim, state 1, update, then commit or a
// failed boot rolled back by tsdm bow-restore; the script itself checks the files and runs e2fsck.
describe.runIf(process.getuid?.() === 0)("examples/bow-update.sh", () => {
  let d: TestDaemon;
  beforeAll(async () => {
    d = await startDaemon({ args: ["--attach", "fuse"] });
  });
  afterAll(async () => {
    if (!d) return;
    await run("sh", ["-c", `umount ${d.dir}/mnt 2>/dev/null || true`]);
    if (d.proc.exitCode === null) await d.stop();
    d.cleanup();
  });

  for (const outcome of ["commit", "fail"]) {
    it(`demo ${outcome}`, async () => {
      const env = {
        TSDM_SOCKET: d.socket,
        DM_DEV_DIR: d.devDir,
        IMG: path.join(d.dir, `userdata-${outcome}.img`),
        MNT: path.join(d.dir, "mnt"),
        META: path.join(d.dir, "metadata"),
        SIZE_MB: "32",
      };
      const r = await run("bash", [path.join(ROOT, "examples/bow-update.sh"), "demo", outcome], { env, timeoutMs: 120_000 });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`== OK \\(${outcome}\\)`));
      expect(r.stdout).toMatch(/e2fsck: clean/);
      // fstrim's count reached bow exactly (two blocks go to the log when state 1 starts).
      const trimmed = Number(/\((\d+) bytes\) trimmed/.exec(r.stdout)![1]);
      const free = Number(/bow state 1, free (\d+) bytes/.exec(r.stdout)![1]);
      expect(free).toBe(trimmed - 2 * 4096);
      if (outcome === "fail") expect(r.stdout).toMatch(/restored the checkpoint: \d+ log entries/);
    });
  }
});
