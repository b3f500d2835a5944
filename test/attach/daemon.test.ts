import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { makeFile } from "../helpers/registry.js";
import { attachLeftovers, devnoOf, sh } from "./helpers.js";

// The real tsdmd with --attach fuse, driven by tsdmsetup: nodes appear when create returns, `info` reports
// the kernel device, remove refuses a mounted node, mknodes repairs, and a daemon stop leaves nothing behind.
describe.runIf(process.getuid?.() === 0)("tsdmd --attach fuse", () => {
  let d: TestDaemon;
  let runDir: string;
  let backing: string;
  const mapper = (n: string): string => path.join(d.devDir, "mapper", n);
  const ok = async (args: string[]): Promise<string> => {
    const r = await d.tsdmsetup(args);
    if (r.code !== 0) throw new Error(`tsdmsetup ${args.join(" ")}: exit ${r.code}\n${r.stderr}`);
    return r.stdout;
  };

  beforeAll(async () => {
    d = await startDaemon({ args: ["--attach", "fuse"] });
    runDir = path.join(d.stateDir, "attach");
    backing = makeFile(d.dir, "backing.img", 64 << 20);
    expect(d.log()).toMatch(/attach via fuse/);
  });

  afterAll(async () => {
    if (!d) return;
    await sh(`umount ${d.dir}/mnt 2>/dev/null || true`);
    if (d.proc.exitCode === null) await d.stop();
    d.cleanup();
  });

  it("create returns with /dev/mapper/NAME in place; info shows the loop device's major:minor", async () => {
    await ok(["create", "fs1", "--table", `0 ${64 * 2048} linear ${backing} 0`]);
    const st = fs.statSync(mapper("fs1"));
    expect(st.isBlockDevice()).toBe(true);
    const { major, minor } = devnoOf(st);
    expect(major).toBe(7); // loop
    const info = await ok(["info", "fs1"]);
    expect(info).toContain(`Major, minor:      ${major}, ${minor}`);
    expect(info).toMatch(/Open count:\s+0/);
  });

  it("mkfs + mount work on the node; remove of the mounted device fails with EBUSY and changes nothing", async () => {
    const mnt = path.join(d.dir, "mnt");
    fs.mkdirSync(mnt, { recursive: true });
    await sh(`mkfs.ext4 -q -F ${mapper("fs1")} && mount ${mapper("fs1")} ${mnt} && echo hello > ${mnt}/f && sync -f ${mnt}`);
    expect(await ok(["info", "fs1"])).toMatch(/Open count:\s+1/);
    const r = await d.tsdmsetup(["remove", "fs1"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Device or resource busy/);
    expect(fs.statSync(mapper("fs1")).isBlockDevice()).toBe(true);
    expect((await sh(`cat ${mnt}/f`)).trim()).toBe("hello");
    await sh(`umount ${mnt}`);
    await sh(`e2fsck -fn ${mapper("fs1")}`);
  });

  it("info's open count includes a process holding the node open (no mount), as remove's EBUSY does", async () => {
    const holder = spawn("sh", ["-c", `exec 3<${mapper("fs1")}; exec sleep 60`], { stdio: "ignore" });
    try {
      for (let i = 0; i < 200 && !fs.existsSync(`/proc/${holder.pid}/fd/3`); i++) await new Promise((r) => setTimeout(r, 25));
      expect(await ok(["info", "fs1"])).toMatch(/Open count:\s+1\n/);
      const r = await d.tsdmsetup(["remove", "fs1"]);
      expect(r.stderr).toMatch(/Device or resource busy/);
    } finally {
      holder.kill("SIGKILL");
      await new Promise((r) => holder.once("exit", r));
    }
    expect(await ok(["info", "fs1"])).toMatch(/Open count:\s+0\n/);
  });

  it("mknodes recreates a deleted node", async () => {
    const before = devnoOf(fs.statSync(mapper("fs1")));
    fs.unlinkSync(mapper("fs1"));
    await ok(["mknodes"]);
    expect(devnoOf(fs.statSync(mapper("fs1")))).toEqual(before);
  });

  it("rename moves the node with the device", async () => {
    await ok(["rename", "fs1", "fs2"]);
    expect(fs.existsSync(mapper("fs1"))).toBe(false);
    expect(fs.statSync(mapper("fs2")).isBlockDevice()).toBe(true);
  });

  it("remove detaches: no node, loop device, FUSE mount or nbdfuse left", async () => {
    await ok(["remove", "fs2"]);
    expect(fs.existsSync(mapper("fs2"))).toBe(false);
    expect(attachLeftovers(runDir)).toEqual([]);
  });

  it("a daemon stop detaches every device cleanly", async () => {
    await ok(["create", "z1", "--table", `0 ${8 * 2048} zero`]);
    await ok(["create", "l1", "--table", `0 ${8 * 2048} linear ${backing} 0`]);
    expect(attachLeftovers(runDir).length).toBeGreaterThan(0);
    expect(await d.stop()).toBe(0);
    expect(attachLeftovers(runDir)).toEqual([]);
    expect(fs.existsSync(mapper("z1")) || fs.existsSync(mapper("l1"))).toBe(false);
  });

  it("restored devices are attached again at start; after a crash (SIGKILL) the leftovers are cleaned up and replaced", async () => {
    await d.restart();
    const loops = (): string[] => attachLeftovers(runDir).filter((l) => l.startsWith("loop "));
    expect(fs.statSync(mapper("z1")).isBlockDevice() && fs.statSync(mapper("l1")).isBlockDevice()).toBe(true);
    expect(loops()).toHaveLength(2);
    await d.kill();
    expect(loops()).toHaveLength(2); // the dead daemon's nbdfuse + loop devices are still there
    await d.restart();
    expect(loops()).toHaveLength(2); // replaced, not doubled
    await sh(`dd if=${mapper("l1")} of=/dev/null bs=64k count=16 iflag=direct status=none`);
    expect(await d.stop()).toBe(0);
    expect(attachLeftovers(runDir)).toEqual([]);
  });
});
