import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../daemon/core/log.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { baseAllocation, MetaContextRegistry } from "../../daemon/nbd/meta-context.js";
import { NbdServer } from "../../daemon/nbd/server.js";
import { eraWrittenSince } from "../../daemon/targets/era/nbd-context.js";
import { EraTarget } from "../../daemon/targets/era/target.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { createEra, eraOf, expectEraCheckClean, expectRefCountsClean, invalidateSince, run, S } from "./helpers.js";

/** An era device served by tsdm's NBD server, written by qemu-io, mapped by nbdinfo through the era context. */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let server: NbdServer;
let sock: string;
beforeEach(async () => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-era-nbd-");
  server = new NbdServer({ registry: reg, log: silentLogger, metaContexts: new MetaContextRegistry([baseAllocation, eraWrittenSince]) });
  sock = path.join(tmp.dir, "nbd.sock");
  await server.listenUnix(sock);
});
afterEach(async () => {
  await server.close();
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

/** nbdinfo --map output: "offset length flags description" per line. */
async function map(uri: string, context: string): Promise<Array<[number, number, number]>> {
  const r = await run("nbdinfo", [`--map=${context}`, uri]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout
    .trim()
    .split("\n")
    .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number) as [number, number, number]);
}

describe("era over NBD", () => {
  it("base:allocation shows the origin's holes (reads come from it)", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    await createEra(reg, "e", meta, origin, (1 << 20) / 512, 128);
    const uri = `nbd+unix:///e?socket=${sock}`;
    expect((await run("qemu-io", ["-f", "raw", uri, "-c", "write -P 7 512k 64k"])).code).toBe(0);
    expect(await map(uri, "base:allocation")).toEqual([
      [0, 512 << 10, 3],
      [512 << 10, 64 << 10, 0],
      [576 << 10, (1 << 20) - (576 << 10), 3],
    ]);
  });

  it("writes from qemu-io are recorded; tsdm-era:written-since:N maps exactly the blocks written since era N", async () => {
    const K = 64 * 1024; // 128-sector era blocks
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 64 * K);
    const dev = await createEra(reg, "e", meta, origin, (64 * K) / 512, 128);
    const uri = `nbd+unix:///e?socket=${sock}`;
    const io = (...cmds: string[]) => run("qemu-io", ["-f", "raw", "-t", "writeback", uri, ...cmds.flatMap((c) => ["-c", c])]);
    expect((await io(`write -P 1 ${2 * K} 4k`, `write -P 2 ${5 * K - 512} 1k`)).code).toBe(0); // blocks 2, 4, 5 in era 1
    await dev.message(S(0), ["checkpoint"]);
    expect(eraOf(dev)).toBe(2);
    expect((await io(`discard ${10 * K} ${2 * K}`, `write -z ${20 * K} 4k`)).code).toBe(0); // blocks 10, 11, 20 in era 2
    expect((await run("nbdinfo", ["--list", "--content", uri])).code).toBe(0);
    const lists = await run("nbdinfo", ["--json", uri]);
    expect(lists.stdout).toContain("tsdm-era:written-since:2");

    expect(await map(uri, "tsdm-era:written-since:2")).toEqual([
      [0, 10 * K, 0],
      [10 * K, 2 * K, 1],
      [12 * K, 8 * K, 0],
      [20 * K, K, 1],
      [21 * K, 43 * K, 0],
    ]);
    expect(await map(uri, "tsdm-era:written-since:1")).toEqual([
      [0, 2 * K, 0],
      [2 * K, K, 1],
      [3 * K, K, 0],
      [4 * K, 2 * K, 1],
      [6 * K, 4 * K, 0],
      [10 * K, 2 * K, 1],
      [12 * K, 8 * K, 0],
      [20 * K, K, 1],
      [21 * K, 43 * K, 0],
    ]);
    expect(await map(uri, "tsdm-era:written-since:3")).toEqual([[0, 64 * K, 0]]);
    // The same answer from the target's own API (what any other server can use).
    const target = dev.live!.targets()[0]!.target as EraTarget;
    const extents: Array<[number, number]> = [];
    for await (const e of target.changedBlocksSince(2)) extents.push([e.startSector * 512, e.lengthSectors * 512]);
    expect(extents).toEqual([
      [10 * K, 2 * K],
      [20 * K, K],
    ]);
    // The same answer from the tools once the era is archived.
    await dev.suspend({ noflush: false });
    expect(await invalidateSince(meta, 2)).toEqual([10, 11, 20]);
    expect(await invalidateSince(meta, 1)).toEqual([2, 4, 5, 10, 11, 20]);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
    await dev.resume({ noflush: false });
  });
});
