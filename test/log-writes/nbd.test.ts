import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../daemon/core/log.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { NbdServer } from "../../daemon/nbd/server.js";
import { run } from "../helpers/daemon.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { S, describeEntries, readLog, replayLog } from "./helpers.js";

/** A log-writes device served by tsdm's own NBD server, driven by real NBD clients. */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let server: NbdServer;
let sock: string;
const cleanups: (() => Promise<unknown>)[] = [];
beforeEach(async () => {
  reg = makeRegistry();
  tmp = tempDir();
  server = new NbdServer({ registry: reg, log: silentLogger });
  sock = path.join(tmp.dir, "nbd.sock");
  await server.listenUnix(sock);
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  await server.close();
  for (const d of [...reg.list()].reverse()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

async function logWritesDevice(bytes: number, seed?: Buffer): Promise<{ data: string; log: string; uri: string }> {
  const data = makeFile(tmp.dir, "data", bytes);
  if (seed) fs.writeFileSync(data, seed);
  const log = makeFile(tmp.dir, "log", bytes * 3);
  const dev = reg.create({ name: "lw" });
  await dev.load([{ start: S(0), length: S(bytes / 512), type: "log-writes", params: `${data} ${log}` }], false);
  await dev.resume({ noflush: false });
  return { data, log, uri: `nbd+unix:///lw?socket=${sock}` };
}

describe("log-writes over NBD", () => {
  it("block status shows the data device's holes (reads come from it)", async () => {
    const { uri } = await logWritesDevice(1 << 20);
    expect((await run("qemu-io", ["-f", "raw", uri, "-c", "write -P 0x33 256k 64k"])).code).toBe(0);
    const map = await run("nbdinfo", ["--map", "--json", uri]);
    expect(JSON.parse(map.stdout).map((e: { offset: number; length: number; type: number }) => [e.offset, e.length, e.type])).toEqual([
      [0, 256 << 10, 3],
      [256 << 10, 64 << 10, 0],
      [320 << 10, (1 << 20) - (320 << 10), 3],
    ]);
  });

  it("qemu-io: FUA writes become FUA entries, trims discards, flushes batch the writes; replay is bit-identical", async () => {
    const seed = crypto.randomBytes(1 << 20);
    const { data, log, uri } = await logWritesDevice(1 << 20, seed);
    // -t writeback: qemu-io's default writethrough mode would make every write FUA.
    const r = await run("qemu-io", ["-f", "raw", "-t", "writeback", uri, "-c", "write -P 0x21 0 8k", "-c", "write -f -P 0x22 64k 4k", "-c", "flush", "-c", "discard 128k 64k", "-c", "write -z 256k 64k"]);
    expect(r.code, r.stderr).toBe(0);
    await reg.remove(reg.get({ name: "lw" }));
    const entries = describeEntries(readLog(log));
    expect(entries).toContain("fua128+8"); // NBD_CMD_FLAG_FUA → LOG_FUA_FLAG
    expect(entries).toContain("discard256+128");
    expect(entries).toContain("w512+128"); // write-zeroes is logged as a write of zeroes
    expect(entries.indexOf("w0+16")).toBeLessThan(entries.indexOf("flush")); // the 8k write waited for the flush
    expect(entries.at(-1)).toBe("mark:dm-log-writes-end");
    const replay = makeFile(tmp.dir, "replay", 1 << 20);
    fs.writeFileSync(replay, seed);
    expect((await replayLog(["--log", log, "--replay", replay])).code).toBe(0);
    expect(fs.readFileSync(replay).equals(fs.readFileSync(data))).toBe(true);
  });

  it("nbdcopy of an ext4 image, mark, then replay to the mark: identical image, e2fsck clean", async () => {
    const SIZE = 16 << 20;
    const src = path.join(tmp.dir, "src.img");
    fs.mkdirSync(path.join(tmp.dir, "tree"));
    fs.writeFileSync(path.join(tmp.dir, "tree", "f"), crypto.randomBytes(200_000));
    const mk = await run("mkfs.ext4", ["-q", "-F", "-d", path.join(tmp.dir, "tree"), src, "16M"]);
    expect(mk.code, mk.stderr).toBe(0);
    const { log, uri } = await logWritesDevice(SIZE);
    const cp = await run("nbdcopy", ["--flush", src, uri]);
    expect(cp.code, cp.stderr).toBe(0);
    await reg.get({ name: "lw" }).message(S(0), ["mark", "copied"]);
    await reg.remove(reg.get({ name: "lw" }));
    const replay = makeFile(tmp.dir, "replay", SIZE);
    const r = await replayLog(["--log", log, "--replay", replay, "--end-mark", "copied"]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readFileSync(replay).equals(fs.readFileSync(src))).toBe(true);
    const fsck = await run("e2fsck", ["-fn", replay]);
    expect(fsck.code, fsck.stdout).toBe(0);
  });
});
