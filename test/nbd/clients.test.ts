import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Sector } from "../../daemon/core/units.js";
import { makeFile } from "../helpers/registry.js";
import { RawClient } from "./raw-client.js";
import { run, runOk, startNbd, type NbdFixture } from "./fixture.js";

// Real NBD clients (libnbd's nbdinfo/nbdcopy, qemu-img, qemu-io) against the in-process server.
describe("NBD server with real clients", () => {
  let fx: NbdFixture;

  beforeAll(async () => {
    fx = await startNbd();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it("the preferred block size is the table's io_opt where NBD can say it: era's block, a striped row", async () => {
    const mk = async (name: string, table: string): Promise<number> => {
      const dev = fx.reg.create({ name });
      const [start, length, type, ...params] = table.split(" ");
      await dev.load([{ start: Number(start) as Sector, length: Number(length) as Sector, type: type!, params: params.join(" ") }], false);
      await dev.resume({ noflush: false });
      return JSON.parse(await runOk("nbdinfo", ["--json", fx.uri(name)])).exports[0]["block_size_preferred"] as number;
    };
    const data = makeFile(fx.dir, "io-opt.img", 8 << 20, "zero");
    const meta = (n: string): string => makeFile(fx.dir, `${n}.meta`, 4 << 20, "zero");
    expect(await mk("opt-era-64k", `0 16384 era ${meta("a")} ${data} 128`)).toBe(65536);
    expect(await mk("opt-era-12k", `0 16384 era ${meta("b")} ${data} 24`)).toBe(4096); // not a power of two
    expect(await mk("opt-striped", `0 16384 striped 2 64 ${data} 0 ${data} 8192`)).toBe(65536);
    expect(await mk("opt-linear", `0 16384 linear ${data} 0`)).toBe(4096);
  });

  it("lists only devices with a live table, with size, flags and block sizes", async () => {
    await fx.linear("list-a", 4 << 20);
    fx.reg.create({ name: "list-empty" }); // no table: not an export
    const list = await runOk("nbdinfo", ["--list", "--json", `nbd+unix://?socket=${fx.sock}`]);
    const exports = JSON.parse(list).exports as { "export-name": string }[];
    const names = exports.map((e) => e["export-name"]);
    expect(names).toContain("list-a");
    expect(names).not.toContain("list-empty");

    const info = JSON.parse(await runOk("nbdinfo", ["--json", fx.uri("list-a")])).exports[0];
    expect(info["export-size"]).toBe(4 << 20);
    expect(info["block_size_minimum"]).toBe(512);
    expect(info["block_size_preferred"]).toBe(4096);
    expect(info["block_size_maximum"]).toBe(32 << 20);
    expect(info["contexts"]).toEqual(["base:allocation"]);
    expect(info["is_read_only"]).toBe(false);

    for (const cap of ["flush", "trim", "zero", "fua", "multi-conn", "cache", "fast-zero"]) {
      expect((await run("nbdinfo", ["--can", cap, fx.uri("list-a")])).code, cap).toBe(0);
    }
    // GO on the table-less device fails (libnbd shows ERR_UNKNOWN as ENOENT), rather than opening an empty disk.
    const refused = await run("nbdinfo", [fx.uri("list-empty")]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/server replied with error to opt_go/);
  });

  it("qemu-io writes and reads back patterns, and the data is in the backing file", async () => {
    const { file } = await fx.linear("qio", 4 << 20);
    await runOk("qemu-io", ["-f", "raw", fx.uri("qio"), "-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k", "-c", "write -f -P 0xcd 1M 128k", "-c", "flush"]);
    const back = fs.readFileSync(file);
    expect(back.subarray(0, 64 << 10).every((b) => b === 0xab)).toBe(true);
    expect(back.subarray(1 << 20, (1 << 20) + (128 << 10)).every((b) => b === 0xcd)).toBe(true);
    expect(back.subarray(64 << 10, 1 << 20).every((b) => b === 0)).toBe(true);
  });

  it("nbdcopy copies out and in bit-exactly", async () => {
    const { file } = await fx.linear("copy", 8 << 20, { fill: "pattern" });
    const out = path.join(fx.dir, "copy-out.img");
    await runOk("nbdcopy", [fx.uri("copy"), out]);
    expect(fs.readFileSync(out).equals(fs.readFileSync(file))).toBe(true);

    const src = path.join(fx.dir, "copy-src.img");
    fs.writeFileSync(src, crypto.randomBytes(8 << 20));
    await runOk("nbdcopy", ["--flush", src, fx.uri("copy")]);
    expect(fs.readFileSync(file).equals(fs.readFileSync(src))).toBe(true);
  });

  it("qemu-img info, convert and compare", async () => {
    await fx.linear("qimg", 4 << 20);
    const info = JSON.parse(await runOk("qemu-img", ["info", "--output=json", fx.uri("qimg")]));
    expect(info["virtual-size"]).toBe(4 << 20);

    const src = path.join(fx.dir, "qimg-src.img");
    fs.writeFileSync(src, crypto.randomBytes(4 << 20));
    await runOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", src, fx.uri("qimg")]);
    await runOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, fx.uri("qimg")]);
    const b = fs.readFileSync(src);
    b[12345] ^= 0xff;
    fs.writeFileSync(src, b);
    const differ = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, fx.uri("qimg")]);
    expect(differ.code).toBe(1);
    expect(differ.stdout).toMatch(/Content mismatch at offset 12288/);
  });

  it("nbdinfo --map reports base:allocation: a file's holes and data under linear, zero targets as holes", async () => {
    const { file } = await fx.linear("map", 2 << 20);
    await runOk("qemu-io", ["-f", "raw", fx.uri("map"), "-c", "write -P 0x5a 1M 64k"]);
    const map = JSON.parse(await runOk("nbdinfo", ["--map", "--json", fx.uri("map")]));
    expect(map).toEqual([
      { offset: 0, length: 1 << 20, type: 3, description: "hole,zero" },
      { offset: 1 << 20, length: 64 << 10, type: 0, description: "data" },
      { offset: (1 << 20) + (64 << 10), length: (1 << 20) - (64 << 10), type: 3, description: "hole,zero" },
    ]);
    // A table mixing a zero target, the file (offset 1 MiB in) and an error target: each reports its own.
    const dev = fx.reg.create({ name: "mixed" });
    const S = (n: number) => n as Sector;
    await dev.load(
      [
        { start: S(0), length: S(256), type: "zero", params: "" },
        { start: S(256), length: S(1024), type: "linear", params: `${file} 2048` },
        { start: S(1280), length: S(256), type: "error", params: "" },
      ],
      false,
    );
    await dev.resume({ noflush: false });
    const mixed = JSON.parse(await runOk("nbdinfo", ["--map", "--json", fx.uri("mixed")]));
    expect(mixed.map((e: { offset: number; length: number; type: number }) => [e.offset, e.length, e.type])).toEqual([
      [0, 128 << 10, 3],
      [128 << 10, 64 << 10, 0],
      [192 << 10, (512 << 10) - (64 << 10), 3],
      [640 << 10, 128 << 10, 0],
    ]);
    // qemu-img skips the holes: a copy of the device is as sparse as the device is.
    const out = path.join(fx.dir, "map-copy.img");
    await runOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", fx.uri("map"), out]);
    expect(fs.readFileSync(out).equals(fs.readFileSync(file))).toBe(true);
    expect(fs.statSync(out).blocks * 512).toBeLessThanOrEqual(256 << 10);
  });

  it("discard punches a hole in the backing file; write-zeroes zeroes", async () => {
    const { file } = await fx.linear("trim", 4 << 20, { fill: "pattern" });
    const before = fs.statSync(file).blocks;
    await runOk("qemu-io", ["-f", "raw", fx.uri("trim"), "-c", "discard 0 1M", "-c", "write -z 2M 512k", "-c", "read -P 0 2M 512k"]);
    const after = fs.statSync(file).blocks;
    expect(after).toBeLessThanOrEqual(before - (1 << 20) / 512);
    const back = fs.readFileSync(file);
    expect(back.subarray(0, 1 << 20).every((x) => x === 0)).toBe(true);
    expect(back.subarray(2 << 20, (2 << 20) + (512 << 10)).every((x) => x === 0)).toBe(true);
    expect(back.subarray(1 << 20, 2 << 20).some((x) => x !== 0)).toBe(true); // untouched
  });

  it("a read-only device is advertised read-only and refuses writes with EPERM", async () => {
    const { file } = await fx.linear("ro", 1 << 20, { fill: "pattern", readOnly: true });
    expect((await run("nbdinfo", ["--is", "read-only", fx.uri("ro")])).code).toBe(0);
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    const { flags } = await c.go("ro");
    expect(flags & 2).toBe(2);
    c.request(1, { cookie: 7n, offset: 0, payload: Buffer.alloc(4096, 1) });
    expect((await c.simpleReply()).error).toBe(1);
    c.request(4, { cookie: 8n, offset: 0, length: 4096 });
    expect((await c.simpleReply()).error).toBe(1);
    c.request(0, { cookie: 9n, offset: 0, length: 4096 });
    const r = await c.simpleReply(4096);
    expect(r.error).toBe(0);
    expect(r.data.equals(fs.readFileSync(file).subarray(0, 4096))).toBe(true);
    c.destroy();
    // A real client's write fails too.
    const w = await run("qemu-io", ["-f", "raw", fx.uri("ro"), "-c", "write -P 1 0 4k"]);
    expect(`${w.stdout}${w.stderr}`).toMatch(/read-only|not permitted|permission denied/i);
  });

  it("holds the device open while attached; a removed device's clients are disconnected", async () => {
    const { dev } = await fx.linear("gone", 1 << 20);
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    await c.go("gone");
    expect(dev.openCount).toBe(1);
    // dmsetup remove refuses an open device, as the kernel does.
    await expect(fx.reg.remove(dev)).rejects.toMatchObject({ errno: "EBUSY" });
    await fx.reg.discard(dev);
    await c.closed();
    expect(fx.server.clientCount).toBe(0);
  });

  it("a rename keeps attached clients working; the export takes the new name", async () => {
    const { dev } = await fx.linear("old-name", 1 << 20, { fill: "pattern" });
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    await c.go("old-name");
    fx.reg.rename(dev, "new-name");
    c.request(0, { cookie: 1n, offset: 512, length: 512 });
    expect((await c.simpleReply(512)).error).toBe(0);
    c.request(2);
    await c.closed();
    expect((await run("nbdinfo", [fx.uri("new-name")])).code).toBe(0);
    expect((await run("nbdinfo", [fx.uri("old-name")])).code).not.toBe(0);
    expect(dev.openCount).toBe(0);
  });
});
