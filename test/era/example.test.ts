import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, run, startDaemon, type TestDaemon } from "../helpers/daemon.js";

// examples/era-backup.sh end to end against a real tsdmd, through its NBD server: a full copy, an incremental
// copy of the extents nbdinfo maps as written since the noted era, and one from a metadata snapshot with
// `tsdm era invalidate --metadata-snapshot`; the script compares the backup with the device after each step.
describe("examples/era-backup.sh", () => {
  let d: TestDaemon;
  beforeAll(async () => {
    d = await startDaemon();
  });
  afterAll(async () => {
    if (!d) return;
    if (d.proc.exitCode === null) await d.stop();
    d.cleanup();
  });

  it("full, then incremental over NBD, then incremental from a metadata snapshot: the backup equals the device", async () => {
    const env = { TSDM_SOCKET: d.socket, WORK: path.join(d.dir, "work"), SIZE_MB: "64" };
    const r = await run("bash", [path.join(ROOT, "examples/era-backup.sh")], { env, timeoutMs: 300_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/== OK: full \+ 2 incremental backups equal the device/);
    expect(r.stdout.match(/^backup equals the device: [0-9a-f]{32}$/gm)).toHaveLength(3);
    // Exactly the era blocks (64 KiB) the workloads touched: 1 + 3 + 16 + 2 (discard) + 1 (write-zeroes), then 1 + 5.
    expect(r.stdout).toContain(`copied ${23 * 65536} bytes in 5 extents; next backup: written since era 3`);
    expect(r.stdout).toContain(`copied ${6 * 65536} bytes in 2 extents; next backup: written since era 4`);
    // The device is removed at the end, even on success.
    expect((await d.tsdmsetup(["ls"])).stdout).toMatch(/No devices found/);
  }, 320_000);
});
