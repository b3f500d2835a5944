import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { nativeAttach } from "../../daemon/attach/native-attach.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { makeFile } from "../helpers/registry.js";
import { attachLeftovers, bindingOfNode, devnoOf, forceCleanup, nbdfusePids, sh, stillBound, until, type LoopBinding } from "./helpers.js";

// tsdmd --attach fuse when things die around it: kill -9 of the daemon (with and without its nbdfuse
// processes, with a file system mounted on a node), and SIGTERM to tsdmd and nbdfuse together (systemctl
// stop with KillMode=control-group). After each, the next start must leave no /dev/mapper node pointing at
// the wrong device, no dead FUSE mount in the way, and no loop device behind.
const MiB = 1 << 20;

describe.runIf(process.getuid?.() === 0)("tsdmd --attach fuse: crashes and kills", () => {
  let d: TestDaemon | undefined;
  let loops: LoopBinding[] = [];

  const mapper = (n: string): string => path.join(d!.devDir, "mapper", n);
  const runDir = (): string => path.join(d!.stateDir, "attach");
  const ok = async (args: string[]): Promise<string> => {
    const r = await d!.tsdmsetup(args);
    if (r.code !== 0) throw new Error(`tsdmsetup ${args.join(" ")}: exit ${r.code}\n${r.stderr}`);
    return r.stdout;
  };
  /** major:minor that `info` reports for NAME. */
  const infoDevno = async (n: string): Promise<string> => {
    const m = /Major, minor:\s+(\d+), (\d+)/.exec(await ok(["info", n]));
    return `${m![1]}:${m![2]}`;
  };
  const nodeDevno = (n: string): string => {
    const x = devnoOf(fs.statSync(mapper(n)));
    return `${x.major}:${x.minor}`;
  };
  /** Write a random MiB through the node at `offset` and return it (direct I/O: it must reach the backing file). */
  const writeThrough = async (n: string, offsetMiB: number): Promise<Buffer> => {
    const data = crypto.randomBytes(MiB);
    const src = path.join(d!.dir, `pattern-${n}.bin`);
    fs.writeFileSync(src, data);
    await sh(`dd if=${src} of=${mapper(n)} bs=1M seek=${offsetMiB} oflag=direct conv=fsync status=none`);
    return data;
  };
  const fileHas = (file: string, offsetMiB: number, data: Buffer): boolean => {
    const fd = fs.openSync(file, "r");
    try {
      const got = Buffer.alloc(data.length);
      fs.readSync(fd, got, 0, data.length, offsetMiB * MiB);
      return got.equals(data);
    } finally {
      fs.closeSync(fd);
    }
  };
  const killAll = async (pids: number[]): Promise<void> => {
    for (const p of pids) process.kill(p, "SIGKILL");
    await d!.kill();
    await until(() => pids.every((p) => !fs.existsSync(`/proc/${p}`)), 10_000, "killed processes to exit");
  };

  afterEach(async () => {
    if (!d) return;
    if (d.proc.exitCode === null && d.proc.signalCode === null) await d.stop();
    await forceCleanup(d.dir, loops);
    d.cleanup();
    d = undefined;
    loops = [];
  });

  it("kill -9 of tsdmd and its nbdfuse: a device that cannot come back loses its node; the others attach again, each node on its own device", async () => {
    d = await startDaemon({ args: ["--attach", "fuse"] });
    const a = makeFile(d.dir, "a.img", 16 * MiB);
    const b = makeFile(d.dir, "b.img", 16 * MiB);
    await ok(["create", "m1", "--table", `0 ${16 * 2048} linear ${a} 0`]);
    await ok(["create", "m2", "--table", `0 ${16 * 2048} linear ${b} 0`]);
    loops.push(bindingOfNode(mapper("m1")), bindingOfNode(mapper("m2")));
    const fuse = nbdfusePids(runDir());
    expect(fuse).toHaveLength(2);

    await killAll(fuse); // what systemd's cgroup kill does to a crashed service
    fs.renameSync(a, `${a}.away`); // m1 comes back without a table, so it gets no kernel device
    await d.restart();

    expect(await ok(["info", "m1"])).toMatch(/Tables present:\s+None/);
    expect(fs.existsSync(mapper("m1"))).toBe(false); // not left pointing at a loop device another device may get
    expect(nodeDevno("m2")).toBe(await infoDevno("m2"));
    const data = await writeThrough("m2", 3);
    expect(fileHas(b, 3, data)).toBe(true);
    for (const l of loops) expect(stillBound(l)).toBe(false); // the dead daemon's loop devices are gone

    expect(await d.stop()).toBe(0);
    expect(attachLeftovers(runDir())).toEqual([]);
    expect(fs.readdirSync(path.join(d.devDir, "mapper"))).toEqual([]);
    expect(fs.readdirSync(path.join(d.stateDir, "attachments"))).toEqual([]); // nothing attached, nothing recorded
  });

  it("kill -9 of tsdmd with a file system mounted (nbdfuse then dies): after umount and restart the device attaches again and fsck is clean", async () => {
    d = await startDaemon({ args: ["--attach", "fuse"] });
    const img = makeFile(d.dir, "fs.img", 64 * MiB);
    const mnt = path.join(d.dir, "mnt");
    fs.mkdirSync(mnt);
    await ok(["create", "fs1", "--table", `0 ${64 * 2048} linear ${img} 0`]);
    loops.push(bindingOfNode(mapper("fs1")));
    await sh(`mkfs.ext4 -q -F ${mapper("fs1")} && mount ${mapper("fs1")} ${mnt} && head -c 1234567 /dev/urandom > ${mnt}/f && sync -f ${mnt} && sha256sum < ${mnt}/f > ${d.dir}/f.sum`);
    const fuse = nbdfusePids(runDir());
    await d.kill();
    await until(() => fuse.every((p) => !fs.existsSync(`/proc/${p}`)), 30_000, "nbdfuse to exit after losing its server");
    // The file system is cut off from its device; its owner unmounts it (it can be saved only by the journal).
    await sh(`umount ${mnt} || umount -l ${mnt}`);

    await d.restart();
    expect(nodeDevno("fs1")).toBe(await infoDevno("fs1"));
    expect(stillBound(loops[0]!)).toBe(false);
    await sh(`mount ${mapper("fs1")} ${mnt} && sha256sum < ${mnt}/f | cmp - ${d.dir}/f.sum && umount ${mnt}`); // mount replays the journal
    await sh(`e2fsck -fn ${mapper("fs1")}`);
    expect(await d.stop()).toBe(0);
    expect(attachLeftovers(runDir())).toEqual([]);
  });

  it("SIGTERM to tsdmd and nbdfuse at once (systemctl stop, KillMode=control-group) leaves no loop device behind", async () => {
    d = await startDaemon({ args: ["--attach", "fuse"] });
    const img = makeFile(d.dir, "t.img", 16 * MiB);
    await ok(["create", "t1", "--table", `0 ${16 * 2048} linear ${img} 0`]);
    await ok(["create", "t2", "--table", `0 ${8 * 2048} zero`]);
    loops.push(bindingOfNode(mapper("t1")), bindingOfNode(mapper("t2")));
    const fuse = nbdfusePids(runDir());
    expect(fuse).toHaveLength(2);
    for (const p of fuse) process.kill(p, "SIGTERM");
    expect(await d.stop()).toBe(0);
    for (const l of loops) expect(stillBound(l), `${l.kname} still bound`).toBe(false);
    expect(attachLeftovers(runDir())).toEqual([]);
    expect(fs.readdirSync(path.join(d.devDir, "mapper"))).toEqual([]);
  });

  it("stale loop nodes in the mapper directory are swept at stop and at start", async () => {
    d = await startDaemon({ args: ["--attach", "fuse"] });
    const dir = path.join(d.devDir, "mapper");
    fs.mkdirSync(dir, { recursive: true });
    const plant = (): void => nativeAttach.mknodBlock(path.join(dir, "ghost"), 7, 250, 0o600, 0);
    plant();
    fs.writeFileSync(path.join(dir, "notes.txt"), "not a node: never touched");
    expect(await d.stop()).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["notes.txt"]);
    plant();
    await d.restart();
    expect(fs.readdirSync(dir)).toEqual(["notes.txt"]);
  });
});
