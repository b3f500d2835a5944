import { spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, expect, it } from "vitest";
import { silentLogger } from "../../daemon/core/log.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { NbdServer } from "../../daemon/nbd/server.js";
import { run } from "../helpers/daemon.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { S, describeEntries, readLog, replayLog, until } from "./helpers.js";

/**
 * A real kernel filesystem on a log-writes device: tsdm's NBD export → nbdfuse → loop device → ext4 (mkfs,
 * mount, writes with fsync, umount), marks in between, then replay to each mark and a crash-consistency walk
 * with e2fsck over every flush the kernel sent. (The loop driver turns FUA into flushes, so no FUA entries here.)
 */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let server: NbdServer;
const undo: (() => Promise<unknown>)[] = [];
beforeEach(async () => {
  reg = makeRegistry();
  tmp = tempDir();
  server = new NbdServer({ registry: reg, log: silentLogger });
  await server.listenUnix(path.join(tmp.dir, "nbd.sock"));
});
afterEach(async () => {
  for (const u of undo.splice(0).reverse()) await u().catch(() => undefined);
  await server.close();
  for (const d of [...reg.list()].reverse()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  expect(r.code, `${cmd} ${args.join(" ")}: ${r.stdout}${r.stderr}`).toBe(0);
  return r.stdout;
}

it("ext4 through NBD + nbdfuse + loop: replay to each mark is a clean filesystem holding the fsynced data", async () => {
  const SIZE = 64 << 20;
  const data = makeFile(tmp.dir, "data", SIZE);
  const log = makeFile(tmp.dir, "log", 2 * SIZE);
  const dev = reg.create({ name: "lw" });
  await dev.load([{ start: S(0), length: S(SIZE / 512), type: "log-writes", params: `${data} ${log}` }], false);
  await dev.resume({ noflush: false });

  const fuseDir = path.join(tmp.dir, "fuse");
  const mnt = path.join(tmp.dir, "mnt");
  fs.mkdirSync(fuseDir);
  fs.mkdirSync(mnt);
  const fuse: ChildProcess = spawn("nbdfuse", [path.join(fuseDir, "nbd"), `nbd+unix:///lw?socket=${path.join(tmp.dir, "nbd.sock")}`], { stdio: "ignore" });
  const fuseExit = new Promise((resolve) => fuse.once("exit", resolve));
  undo.push(async () => {
    await run("fusermount3", ["-u", fuseDir]);
    fuse.kill("SIGKILL");
    await fuseExit;
  });
  await until(() => fs.existsSync(path.join(fuseDir, "nbd")));
  const loop = (await must("losetup", ["-f", "--show", path.join(fuseDir, "nbd")])).trim();
  undo.push(() => run("losetup", ["-d", loop]));

  await must("mkfs.ext4", ["-q", "-F", loop]);
  await dev.message(S(0), ["mark", "mkfs"]);
  await must("mount", [loop, mnt]);
  undo.push(() => run("umount", [mnt]));
  const payload = crypto.randomBytes(512 << 10);
  fs.writeFileSync(path.join(tmp.dir, "payload"), payload);
  await must("dd", [`if=${path.join(tmp.dir, "payload")}`, `of=${path.join(mnt, "file")}`, "bs=64k", "conv=fsync", "status=none"]);
  await dev.message(S(0), ["mark", "fsynced"]);
  fs.mkdirSync(path.join(mnt, "dir"));
  fs.writeFileSync(path.join(mnt, "dir", "small"), "hello\n");
  await must("umount", [mnt]);
  undo.pop();
  await dev.message(S(0), ["mark", "unmounted"]);
  for (const u of undo.splice(0).reverse()) await u();
  await reg.remove(dev);

  const entries = describeEntries(readLog(log));
  expect(entries.filter((e) => e === "flush").length).toBeGreaterThan(2);
  expect(entries.filter((e) => e.startsWith("mark:"))).toEqual(["mark:mkfs", "mark:fsynced", "mark:unmounted", "mark:dm-log-writes-end"]);

  // Each mark: replay onto a zeroed image; e2fsck (journal recovery on a copy where the fs was mounted).
  for (const mark of ["mkfs", "fsynced", "unmounted"]) {
    const img = makeFile(tmp.dir, `at-${mark}`, SIZE);
    const r = await replayLog(["--log", log, "--replay", img, "--end-mark", mark]);
    expect(r.code, r.stderr).toBe(0);
    const fsck = await run("e2fsck", ["-fy", img]);
    expect(fsck.code, `${mark}: ${fsck.stdout}`).toBeLessThanOrEqual(1); // 0 clean, 1 journal replayed/fixed
    expect((await run("e2fsck", ["-fn", img])).code, `${mark} after recovery`).toBe(0);
    if (mark !== "mkfs") {
      const out = path.join(tmp.dir, `file-at-${mark}`);
      await must("debugfs", ["-R", `dump /file ${out}`, img]);
      expect(fs.readFileSync(out).equals(payload), `${mark}: the fsynced file`).toBe(true);
    }
  }
  const full = makeFile(tmp.dir, "full", SIZE);
  expect((await replayLog(["--log", log, "--replay", full])).code).toBe(0);
  expect(fs.readFileSync(full).equals(fs.readFileSync(data))).toBe(true);

  // Crash at any flush after mkfs: ext4's journal must make every one of them recoverable. As the README shows:
  // the whole log onto a zeroed image, checking a snapshot at each flush and mark from the mkfs mark on. Checked
  // from the start, the walk fails at once: the first flushes come before mkfs has written a filesystem.
  const check = "e2fsck -fy {} >/dev/null 2>&1; test $? -le 1 && e2fsck -fn {} >/dev/null 2>&1";
  const early = await replayLog(["--walk", "--log", log, "--replay", makeFile(tmp.dir, "walk-all", SIZE), "--fsck", check]);
  expect(early.code).toBe(1);
  expect(early.stdout).toMatch(/^first failing entry: \d+@\d+ \(FLUSH\)$/m);
  const walk = await replayLog(["--walk", "--check-from-mark", "mkfs", "--log", log, "--replay", makeFile(tmp.dir, "walk", SIZE), "--fsck", check]);
  expect(walk.code, walk.stdout + walk.stderr).toBe(0);
  expect(walk.stdout).toMatch(/^entry \d+@\d+ MARK "mkfs": ok$/m);
  expect(walk.stdout).toMatch(/MARK "fsynced": ok/);
  expect(Number(/walk: (\d+) check points passed/.exec(walk.stdout)?.[1])).toBeGreaterThan(3);
});
