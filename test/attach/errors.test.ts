import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { devnoOf, forceCleanup } from "./helpers.js";

// Attach failures must be visible the way dmsetup's are: create/resume fail when the device node cannot be
// made, info says what is wrong (on stderr: the info block stays byte-exact), and the daemon's own NBD
// sessions behind the nodes never eat into --nbd-max-connections.
describe.runIf(process.getuid?.() === 0)("tsdmd --attach fuse: attach failures are visible", () => {
  let d: TestDaemon;
  const mapper = (n: string): string => path.join(d.devDir, "mapper", n);
  const runDir = (): string => path.join(d.stateDir, "attach");
  const ok = async (args: string[]): Promise<string> => {
    const r = await d.tsdmsetup(args);
    if (r.code !== 0) throw new Error(`tsdmsetup ${args.join(" ")}: exit ${r.code}\n${r.stderr}`);
    return r.stdout;
  };
  /** Something in the way of the FUSE mount point of device minor `m`: its attach fails. */
  const obstruct = (m: number): string => {
    const p = path.join(runDir(), `dm-${m}`);
    fs.mkdirSync(runDir(), { recursive: true });
    fs.writeFileSync(p, "in the way");
    return p;
  };

  beforeAll(async () => {
    d = await startDaemon({ args: ["--attach", "fuse", "--nbd-max-connections", "6"] });
  });

  afterAll(async () => {
    if (!d) return;
    if (d.proc.exitCode === null) await d.stop();
    await forceCleanup(d.dir, []);
    d.cleanup();
  });

  it("the nodes' own NBD sessions do not count against --nbd-max-connections; clients still do", async () => {
    // nbdfuse opens 4 sessions per device: with 6 allowed, the second device could not attach before.
    await ok(["create", "m1", "--table", `0 ${8 * 2048} zero`]);
    await ok(["create", "m2", "--table", `0 ${8 * 2048} zero`]);
    expect(fs.statSync(mapper("m1")).isBlockDevice() && fs.statSync(mapper("m2")).isBlockDevice()).toBe(true);
    const clients: net.Socket[] = [];
    try {
      for (let i = 0; i < 6; i++) {
        const c = await greeted(d.nbdSocket);
        expect(c, `client ${i + 1} of 6`).not.toBe("closed");
        clients.push(c as net.Socket);
      }
      expect(await greeted(d.nbdSocket)).toBe("closed"); // the 7th client is refused
    } finally {
      for (const c of clients) c.destroy();
    }
    await ok(["remove", "m1"]);
    await ok(["remove", "m2"]);
  });

  it("create fails when the device node cannot be made, says why, and leaves no device", async () => {
    const plant = obstruct(9);
    const r = await d.tsdmsetup(["create", "bad", "-j", "253", "-m", "9", "--table", `0 ${8 * 2048} zero`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${mapper("bad")}: mknod for bad failed: cannot attach a kernel block device via fuse`);
    expect(r.stderr).toContain(plant);
    expect(await ok(["ls"])).not.toMatch(/bad/);
    expect(fs.existsSync(mapper("bad"))).toBe(false);
    fs.rmSync(plant);
  });

  it("resume fails the same way; info reports it on stderr only; once the cause is gone mknodes attaches it", async () => {
    await ok(["create", "late", "-j", "253", "-m", "10", "--notable"]);
    const plant = obstruct(10);
    await ok(["load", "late", "--table", `0 ${8 * 2048} zero`]);
    // The shape of the block of a device that has had a table (one that never had one has no Read Ahead line).
    const healthy = await ok(["info", "late"]);
    const r = await d.tsdmsetup(["resume", "late"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("mknod for late failed");
    const info = await d.tsdmsetup(["info", "late"]);
    expect(info.code).toBe(0);
    expect(info.stdout.split("\n").map((l) => l.split(":")[0])).toEqual(healthy.split("\n").map((l) => l.split(":")[0]));
    expect(info.stdout).toMatch(/Tables present:\s+LIVE\n/);
    expect(info.stderr).toContain("late: kernel block device not attached:");
    expect(info.stderr).toContain(plant);

    fs.rmSync(plant);
    await ok(["mknodes"]);
    expect(devnoOf(fs.statSync(mapper("late"))).major).toBe(7);
    const after = await d.tsdmsetup(["info", "late"]);
    expect(after.stderr).toBe("");
    await ok(["remove", "late"]);
  });
});

/** Connect to an NBD socket: the socket once the server's greeting arrives, or "closed" if it hangs up first. */
function greeted(socket: string): Promise<net.Socket | "closed"> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once("data", (b: Buffer) => resolve(b.subarray(0, 8).toString() === "NBDMAGIC" ? c : "closed"));
    c.once("close", () => resolve("closed"));
    c.once("error", () => undefined);
  });
}
