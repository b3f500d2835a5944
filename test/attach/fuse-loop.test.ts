import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeManager } from "../../daemon/attach/node-manager.js";
import { FuseLoopAttacher } from "../../daemon/attach/fuse-loop.js";
import { nativeAttach } from "../../daemon/attach/native-attach.js";
import { DmError } from "../../daemon/core/errors.js";
import { silentLogger } from "../../daemon/core/log.js";
import type { Sector } from "../../daemon/core/units.js";
import { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { NbdServer } from "../../daemon/nbd/server.js";
import { registerBuiltinTargets } from "../../daemon/targets/all.js";
import { run } from "../helpers/daemon.js";
import { tempDir } from "../helpers/registry.js";
import { attachLeftovers, devnoOf, sh } from "./helpers.js";

// The fallback attach path end to end, in process: DeviceRegistry → NbdServer (unix socket) → nbdfuse →
// loop device (direct I/O) → /dev/mapper/NAME, with real file systems on top. Root only (loop devices).
// This process serves the I/O of those mounts: it must never touch them with synchronous fs calls (that
// would block the event loop the NBD server needs and deadlock), so all access to them goes through children.
const MiB = 1 << 20;

describe.runIf(process.getuid?.() === 0)("fuse + loop attach", () => {
  let tmp: { dir: string; cleanup: () => void };
  let registry: DeviceRegistry;
  let server: NbdServer;
  let nodes: NodeManager;
  let runDir: string;
  let devDir: string;
  let backing: string;

  const create = async (name: string, table: { start: number; length: number; type: string; params: string }[], readOnly = false): Promise<MappedDevice> => {
    const dev = registry.create({ name, readOnly });
    await dev.serialize(async () => {
      await dev.load(table.map((l) => ({ ...l, start: l.start as Sector, length: l.length as Sector })), readOnly);
      await dev.resume({ noflush: false });
    });
    await nodes.settle(dev);
    return dev;
  };
  const mapper = (name: string): string => path.join(devDir, "mapper", name);
  const blocksOf = (p: string): number => fs.statSync(p).blocks;

  beforeAll(async () => {
    expect(FuseLoopAttacher.unavailableReason()).toBeUndefined();
    tmp = tempDir("tsdm-attach-");
    runDir = path.join(tmp.dir, "run");
    devDir = path.join(tmp.dir, "dev");
    backing = path.join(tmp.dir, "backing.img");
    fs.writeFileSync(backing, "");
    fs.truncateSync(backing, 400 * MiB); // sparse; XFS wants at least 300 MB
    registerBuiltinTargets();
    registry = new DeviceRegistry(silentLogger, { devDir });
    server = new NbdServer({ registry, log: silentLogger });
    const sock = path.join(tmp.dir, "nbd.sock");
    await server.listenUnix(sock);
    nodes = await NodeManager.start({ registry, mode: "fuse", runDir, log: silentLogger, deferredPollMs: 100, exportOf: (d) => ({ socket: sock, name: d.name }) });
  });

  afterAll(async () => {
    for (const m of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
      const mp = m.split(" ")[4];
      if (mp?.startsWith(tmp.dir) && !mp.startsWith(runDir)) await run("umount", ["-l", mp]);
    }
    await nodes?.stop();
    await server?.close();
    for (const d of registry?.list() ?? []) await registry.remove(d).catch(() => undefined);
    const left = attachLeftovers(runDir);
    tmp?.cleanup();
    expect(left).toEqual([]);
  });

  it("attaches a device with a live table as a loop device and makes /dev/mapper/NAME a block node", async () => {
    expect(nodes.method).toBe("fuse");
    const dev = await create("vol", [{ start: 0, length: 320 * 2048, type: "linear", params: `${backing} 8192` }]);
    const info = nodes.nodeFor(dev);
    expect(info?.method).toBe("fuse");
    // The node's own NBD sessions are all the opens there are, and none of them is a user's.
    expect(dev.openCount).toBe(4);
    expect(nodes.ownOpens(dev)).toBe(4);
    expect(registry.userOpenCount(dev)).toBe(0);
    expect(info?.path).toMatch(/^\/dev\/loop\d+$/);
    const st = fs.statSync(mapper("vol"));
    expect(st.isBlockDevice()).toBe(true);
    expect(devnoOf(st)).toEqual({ major: info!.major, minor: info!.minor });
    expect((await sh(`blockdev --getsize64 ${mapper("vol")}`)).trim()).toBe(String(320 * MiB));
    const kname = path.basename(info!.path);
    expect(fs.readFileSync(`/sys/block/${kname}/loop/dio`, "utf8").trim()).toBe("1");
    expect(Number(fs.readFileSync(`/sys/block/${kname}/queue/discard_max_bytes`, "utf8"))).toBeGreaterThan(0);
  });

  it("dd oflag=direct lands at the mapped offset of the backing file, and reads back", async () => {
    const data = crypto.randomBytes(MiB);
    const src = path.join(tmp.dir, "pattern.bin");
    fs.writeFileSync(src, data);
    await sh(`dd if=${src} of=${mapper("vol")} bs=64k seek=16 oflag=direct conv=fsync status=none`);
    // linear offset 8192 sectors = 4 MiB into the backing file; seek 16 × 64 KiB = 1 MiB into the device.
    const fd = fs.openSync(backing, "r");
    const got = Buffer.alloc(MiB);
    fs.readSync(fd, got, 0, MiB, 4 * MiB + MiB);
    fs.closeSync(fd);
    expect(got.equals(data)).toBe(true);
    const back = await sh(`dd if=${mapper("vol")} bs=64k skip=16 count=16 iflag=direct status=none | sha256sum`);
    expect(back.split(" ")[0]).toBe(crypto.createHash("sha256").update(data).digest("hex"));
  });

  it("ext4: mkfs, mount, write, fsync, fstrim punches holes in the backing file, umount, fsck clean, read back", async () => {
    const mnt = path.join(tmp.dir, "mnt-ext4");
    fs.mkdirSync(mnt);
    await sh(`mkfs.ext4 -q -F -E nodiscard ${mapper("vol")}`);
    await sh(`mount ${mapper("vol")} ${mnt}`);
    try {
      const keep = path.join(tmp.dir, "keep.bin");
      fs.writeFileSync(keep, crypto.randomBytes(3 * MiB + 12345));
      await sh(`cp ${keep} ${mnt}/keep.bin`);
      const big = path.join(mnt, "big.bin");
      await sh(`head -c ${24 * MiB} /dev/urandom > ${big} && sync ${big} && sync -f ${mnt}`);
      const before = blocksOf(backing);
      fs.rmSync(big);
      await sh(`sync -f ${mnt}`); // the freed extents must be committed before FITRIM can see them
      const trimmed = await sh(`fstrim -v ${mnt}`);
      expect(trimmed).toMatch(/trimmed/);
      const after = blocksOf(backing);
      // 24 MiB of data left the file system; the backing file must have lost (nearly) as much allocation.
      expect(before - after).toBeGreaterThan((20 * MiB) / 512);
      await sh(`sync -f ${mnt}`);
      await sh(`umount ${mnt}`);
      await sh(`e2fsck -fn ${mapper("vol")}`);
      await sh(`mount -o ro ${mapper("vol")} ${mnt}`);
      await sh(`cmp ${keep} ${mnt}/keep.bin`);
    } finally {
      await run("umount", [mnt]);
    }
  });

  it("xfs: mkfs, mount, write, fsync, umount, xfs_repair -n clean, read back", async () => {
    const mnt = path.join(tmp.dir, "mnt-xfs");
    fs.mkdirSync(mnt);
    await sh(`mkfs.xfs -q -f -K ${mapper("vol")}`);
    await sh(`mount ${mapper("vol")} ${mnt}`);
    const data = path.join(tmp.dir, "xfs-data.bin");
    fs.writeFileSync(data, crypto.randomBytes(2 * MiB + 777));
    try {
      await sh(`dd if=${data} of=${mnt}/f.bin bs=1M conv=fsync status=none`);
    } finally {
      await sh(`umount ${mnt}`);
    }
    await sh(`xfs_repair -n ${mapper("vol")}`);
    await sh(`mount -o ro ${mapper("vol")} ${mnt}`);
    try {
      await sh(`cmp ${data} ${mnt}/f.bin`);
    } finally {
      await sh(`umount ${mnt}`);
    }
  });

  it("suspend while mounted holds writes until resume, which completes them", async () => {
    const small = path.join(tmp.dir, "small.img");
    fs.writeFileSync(small, "");
    fs.truncateSync(small, 32 * MiB);
    const dev = await create("sus", [{ start: 0, length: 32 * 2048, type: "linear", params: `${small} 0` }]);
    const mnt = path.join(tmp.dir, "mnt-susp");
    fs.mkdirSync(mnt);
    await sh(`mkfs.ext4 -q -F ${mapper("sus")} && mount ${mapper("sus")} ${mnt}`);
    try {
      const marker = crypto.randomBytes(64 * 1024);
      const src = path.join(tmp.dir, "marker.bin");
      fs.writeFileSync(src, marker);
      await dev.serialize(() => dev.suspend({ noflush: false }));
      let done = false;
      const writer = run("sh", ["-c", `dd if=${src} of=${mnt}/held.bin bs=64k oflag=direct,sync status=none`]).then((r) => ((done = true), r));
      await new Promise((r) => setTimeout(r, 500));
      // Held: the writer cannot finish and its data is nowhere in the backing file yet.
      expect(done).toBe(false);
      expect(fs.readFileSync(small).includes(marker)).toBe(false);
      await dev.serialize(() => dev.resume({ noflush: false }));
      const r = await writer;
      expect(r.code).toBe(0);
      expect(fs.readFileSync(small).includes(marker)).toBe(true);
    } finally {
      await run("umount", [mnt]);
    }
    await registry.remove(dev);
  });

  it("remove refuses a mounted node (EBUSY) and one held open by a process, then succeeds once free", async () => {
    const dev = registry.get({ name: "vol" });
    const mnt = path.join(tmp.dir, "mnt-busy");
    fs.mkdirSync(mnt);
    await sh(`mount ${mapper("vol")} ${mnt}`);
    try {
      expect(await nodes.busyReason(dev)).toMatch(/mounted on/);
      const err = await registry.remove(dev).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DmError);
      expect((err as DmError).errno).toBe("EBUSY");
      // Still attached and working.
      expect(fs.statSync(mapper("vol")).isBlockDevice()).toBe(true);
      await sh(`echo alive > ${mnt}/still.txt && sync -f ${mnt}`);
    } finally {
      await sh(`umount ${mnt}`);
    }
    const holder = run("sh", ["-c", `exec 3<${mapper("vol")}; exec sleep 30`]);
    const holderPid = await waitForProcessHolding(mapper("vol"));
    try {
      const err = await registry.remove(dev).catch((e: unknown) => e);
      expect((err as DmError).errno).toBe("EBUSY");
      expect((err as DmError).message).toMatch(/open by process/);
    } finally {
      process.kill(holderPid, "SIGKILL");
      await holder;
    }
    expect(await nodes.busyReason(dev)).toBeUndefined();
    const loop = nodes.nodeFor(dev)!.path;
    await registry.remove(dev);
    expect(registry.find({ name: "vol" })).toBeUndefined();
    expect(fs.existsSync(mapper("vol"))).toBe(false);
    expect(fs.existsSync(`/sys/block/${path.basename(loop)}/loop/backing_file`)).toBe(false);
    expect(attachLeftovers(runDir)).toEqual([]);
  });

  it("a deferred remove of an open device completes once it is closed", async () => {
    const dev = await create("later", [{ start: 0, length: 16 * 2048, type: "zero", params: "" }]);
    // A zero target cannot hold a file system: hold the node open with a process instead.
    const holder = run("sh", ["-c", `exec 3<${mapper("later")}; exec sleep 30`]);
    const pid = await waitForProcessHolding(mapper("later"));
    expect(await registry.remove(dev, { deferred: true })).toEqual({ deferred: true });
    expect(registry.find({ name: "later" })).toBe(dev);
    process.kill(pid, "SIGKILL");
    await holder;
    for (let i = 0; i < 200 && registry.find({ name: "later" }); i++) await new Promise((r) => setTimeout(r, 50));
    expect(registry.find({ name: "later" })).toBeUndefined();
    await nodes.settle(dev);
    expect(fs.existsSync(mapper("later"))).toBe(false);
  });

  it("follows renames, attaches read-only devices read-only, and repairs deleted nodes", async () => {
    const dev = await create("ro1", [{ start: 0, length: 2048 * 8, type: "zero", params: "" }], true);
    const info = nodes.nodeFor(dev)!;
    expect(fs.readFileSync(`/sys/block/${path.basename(info.path)}/ro`, "utf8").trim()).toBe("1");
    registry.rename(dev, "ro2");
    await nodes.settle(dev);
    expect(fs.existsSync(mapper("ro1"))).toBe(false);
    expect(devnoOf(fs.statSync(mapper("ro2")))).toEqual({ major: info.major, minor: info.minor });
    fs.unlinkSync(mapper("ro2"));
    // A stale loop node of no device goes; a file that is not a node is never touched.
    nativeAttach.mknodBlock(mapper("ghost"), 7, 250, 0o600, 0);
    fs.writeFileSync(mapper("notes.txt"), "mine");
    await nodes.repair();
    expect(devnoOf(fs.statSync(mapper("ro2")))).toEqual({ major: info.major, minor: info.minor });
    expect(fs.existsSync(mapper("ghost"))).toBe(false);
    expect(fs.readFileSync(mapper("notes.txt"), "utf8")).toBe("mine");
    fs.unlinkSync(mapper("notes.txt"));
    await registry.remove(dev);
    expect(attachLeftovers(runDir)).toEqual([]);
  });

  it("stop detaches every device and leaves nothing behind", async () => {
    await create("s1", [{ start: 0, length: 2048 * 4, type: "zero", params: "" }]);
    await create("s2", [{ start: 0, length: 2048 * 4, type: "linear", params: `${backing} 0` }]);
    expect(attachLeftovers(runDir).length).toBeGreaterThan(0);
    await nodes.stop();
    expect(attachLeftovers(runDir)).toEqual([]);
    expect(fs.existsSync(mapper("s1")) || fs.existsSync(mapper("s2"))).toBe(false);
  });
});

/** pid of a process (not us) with `node` open, once one appears. */
async function waitForProcessHolding(node: string): Promise<number> {
  const want = devnoOf(fs.statSync(node));
  for (let i = 0; i < 200; i++) {
    for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
      let fds: string[] = [];
      try {
        fds = fs.readdirSync(`/proc/${pid}/fd`);
      } catch {
        continue;
      }
      for (const fd of fds) {
        try {
          const st = fs.statSync(`/proc/${pid}/fd/${fd}`);
          if (st.isBlockDevice() && devnoOf(st).major === want.major && devnoOf(st).minor === want.minor) return Number(pid);
        } catch {
          /* gone */
        }
      }
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`nobody opened ${node}`);
}
