import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run, startDaemon, type TestDaemon } from "../helpers/daemon.js";

/**
 * Block devices under tables are claimed exclusively, as the kernel's dm claims them: nothing else may mount,
 * mkfs or restore a device a table is using, and a table cannot be built on a mounted device. Root only
 * (loop devices); CI runs as root.
 */
const root = process.getuid?.() === 0;

/** Try an exclusive open of `dev` in another process, as mount and mkfs do: "free" or the errno. */
function exclusiveOpen(dev: string): string {
  const r = execFileSync(process.execPath, ["-e", `try { require("fs").openSync(${JSON.stringify(dev)}, require("fs").constants.O_RDONLY | require("fs").constants.O_EXCL); console.log("free") } catch (e) { console.log(e.code) }`], { encoding: "utf8" });
  return r.trim();
}

describe.runIf(root)("exclusive claims on block devices", () => {
  let d: TestDaemon;
  let loop = "";
  let mnt = "";
  beforeAll(async () => {
    d = await startDaemon();
    const file = path.join(d.dir, "disk.img");
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, 32 << 20);
    loop = execFileSync("losetup", ["-f", "--show", file], { encoding: "utf8" }).trim();
    mnt = fs.mkdtempSync(path.join(d.dir, "mnt-"));
  });
  afterAll(async () => {
    await run("umount", [mnt]);
    await d?.tsdmsetup(["remove_all", "--force"]);
    await d?.stop();
    if (loop) await run("losetup", ["-d", loop]);
    d?.cleanup();
  });

  it("tables share the claim; nothing else can open the device exclusively until the last table goes", async () => {
    expect(exclusiveOpen(loop)).toBe("free");
    for (const [name, offset] of [["a", 0], ["b", 8192]] as const) {
      const r = await d.tsdmsetup(["create", name, "--table", `0 8192 linear ${loop} ${offset}`]);
      expect(r.code, r.stderr).toBe(0);
    }
    expect(exclusiveOpen(loop)).toBe("EBUSY");
    // A rollback tool must not write under a live table (issue 6: the raw block-device guard).
    const restore = await d.tsdm(["bow-restore", "--check", loop]);
    expect(restore.code).not.toBe(0);
    expect(restore.stderr).toMatch(/busy|in use/i);

    expect((await d.tsdmsetup(["remove", "a"])).code).toBe(0);
    expect(exclusiveOpen(loop)).toBe("EBUSY"); // b still holds it
    expect((await d.tsdmsetup(["remove", "b"])).code).toBe(0);
    expect(exclusiveOpen(loop)).toBe("free");
  });

  it("a table on a mounted device is refused with EBUSY and leaves no device; after umount it loads", async () => {
    execFileSync("mkfs.ext4", ["-q", "-F", loop]);
    execFileSync("mount", [loop, mnt]);
    const before = fs.readdirSync(mnt).sort();
    const r = await d.tsdmsetup(["create", "over", "--table", `0 8192 linear ${loop} 0`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/Device or resource busy/);
    // As dmsetup: the ioctl's errno on stderr, the reason in the daemon's log (the kernel's is in dmesg).
    expect(r.stderr).toBe("device-mapper: reload ioctl on over (253:0) failed: Device or resource busy\nCommand failed.\n");
    expect(d.log()).toContain(`${loop} is in use`);
    expect((await d.tsdmsetup(["ls"])).stdout).toBe("No devices found\n");
    expect(fs.readdirSync(mnt).sort()).toEqual(before); // the mounted file system is untouched

    execFileSync("umount", [mnt]);
    const again = await d.tsdmsetup(["create", "over", "--table", `0 8192 linear ${loop} 0`]);
    expect(again.code, again.stderr).toBe(0);
    const mount = await run("mount", [loop, mnt]);
    expect(mount.code).not.toBe(0); // now the table holds it
    expect((await d.tsdmsetup(["remove", "over"])).code).toBe(0);
  });
});
