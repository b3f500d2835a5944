import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { pattern } from "./helpers.js";

/**
 * striped, flakey and delay end to end: a real tsdmd, tables loaded with tsdmsetup, I/O from real NBD clients
 * (qemu-img, qemu-io) over the daemon's NBD export, results checked on the backing files.
 */
let d: TestDaemon;
let f1: string;
let f2: string;
let f3: string;
const MiB = 1 << 20;
beforeAll(async () => {
  d = await startDaemon();
  [f1, f2, f3] = ["s1", "s2", "s3"].map((n) => {
    const p = path.join(d.dir, `${n}.img`);
    fs.writeFileSync(p, "");
    fs.truncateSync(p, 4 * MiB);
    return p;
  }) as [string, string, string];
});
afterAll(async () => {
  for (const name of ["st", "fl", "fe", "dl"]) await d.tsdmsetup(["remove", name]);
  await d.stop();
  d.cleanup();
});

async function ok(args: string[]): Promise<string> {
  const r = await d.tsdmsetup(args);
  expect(r.stderr, `tsdmsetup ${args.join(" ")}`).toBe("");
  expect(r.code).toBe(0);
  return r.stdout;
}

describe("striped, flakey, delay through tsdmd, tsdmsetup and NBD", () => {
  it("tsdmsetup targets lists them with the kernel's versions", async () => {
    const out = await ok(["targets"]);
    expect(out).toMatch(/^striped {10}v1\.6\.0$/m);
    expect(out).toMatch(/^flakey {11}v1\.5\.0$/m);
    expect(out).toMatch(/^delay {12}v1\.4\.0$/m);
  });

  it("striped: qemu-img writes the whole device, each chunk lands on its stripe, and reads compare equal", async () => {
    const sectors = 2 * 8 * 256;
    await ok(["create", "st", "--table", `0 ${sectors} striped 2 8 ${f1} 0 ${f2} 16`]);
    expect(await ok(["table", "st"])).toBe(`0 ${sectors} striped 2 8 ${f1} 0 ${f2} 16\n`);
    expect(await ok(["status", "st"])).toBe(`0 ${sectors} striped 2 ${f1} ${f2} 1 AA\n`);
    const src = path.join(d.dir, "src.img");
    const data = pattern(sectors * 512, 21);
    fs.writeFileSync(src, data);
    const conv = await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", src, d.nbdUri("st")]);
    expect(conv.stderr).toBe("");
    expect(conv.code).toBe(0);
    const [b1, b2] = [fs.readFileSync(f1), fs.readFileSync(f2)];
    for (let chunk = 0; chunk < sectors / 8; chunk++) {
      const [file, at] = chunk % 2 === 0 ? [b1, Math.floor(chunk / 2) * 8] : [b2, 16 + Math.floor(chunk / 2) * 8];
      expect(file.subarray(at * 512, (at + 8) * 512).equals(data.subarray(chunk * 8 * 512, (chunk + 1) * 8 * 512)), `chunk ${chunk}`).toBe(true);
    }
    const cmp = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, d.nbdUri("st")]);
    expect(cmp.stdout).toContain("Images are identical");
  });

  it("flakey: down with drop_writes acknowledges and drops; down with no features fails I/O with EIO", async () => {
    fs.writeFileSync(f3, Buffer.alloc(4 * MiB, 0x11));
    await ok(["create", "fl", "--table", `0 2048 flakey ${f3} 0 0 1 1 drop_writes`]);
    expect(await ok(["table", "fl"])).toBe(`0 2048 flakey ${f3} 0 0 1 1 drop_writes\n`);
    expect(await ok(["status", "fl"])).toBe("0 2048 flakey \n");
    const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x77 0 64k", "-c", "flush", d.nbdUri("fl")]);
    expect(w.stdout).toContain("wrote 65536/65536 bytes");
    expect(fs.readFileSync(f3).subarray(0, 65536).every((b) => b === 0x11)).toBe(true);

    await ok(["create", "fe", "--table", `0 2048 flakey ${f3} 1024 0 1`]);
    expect(await ok(["table", "fe"])).toBe(`0 2048 flakey ${f3} 1024 0 1 2 error_reads error_writes\n`);
    const r = await run("qemu-io", ["-f", "raw", "-c", "read 0 4k", d.nbdUri("fe")]);
    expect(r.stdout + r.stderr).toMatch(/read failed: Input\/output error/);
  });

  it("delay: a write from qemu-io is held (not on disk, not acknowledged) until suspend releases it", async () => {
    // Writes held for 10 minutes; flushes (qemu-io flushes on exit) not delayed.
    const table = `0 2048 delay ${f1} 0 0 ${f2} 4096 600000 ${f2} 0 0`;
    await ok(["create", "dl", "--table", table]);
    expect(await ok(["table", "dl"])).toBe(`${table}\n`);
    const region = () => fs.readFileSync(f2).subarray((4096 + 16) * 512, (4096 + 24) * 512);
    let exited = false;
    const writer = run("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 8k 4k", d.nbdUri("dl")]).finally(() => (exited = true));
    // Wait (no time limit but the test's) until the write is held by the target.
    while ((await ok(["status", "dl"])) !== "0 2048 delay 0 1 0\n") await new Promise((r) => setTimeout(r, 50));
    expect(region().every((b) => b === 0x5a)).toBe(false);
    expect(exited).toBe(false);
    await ok(["suspend", "dl"]);
    await ok(["resume", "dl"]);
    const w = await writer;
    expect(w.stdout).toContain("wrote 4096/4096 bytes");
    expect(region().every((b) => b === 0x5a)).toBe(true);
    expect(await ok(["status", "dl"])).toBe("0 2048 delay 0 0 0\n");
  });

  it("delay: a read through NBD takes at least the read delay", async () => {
    await ok(["create", "dr", "--table", `0 2048 delay ${f1} 0 400`]);
    const t0 = performance.now();
    const r = await run("qemu-io", ["-f", "raw", "-c", "read 0 4k", d.nbdUri("dr")]);
    expect(r.stdout).toContain("read 4096/4096 bytes");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(400);
    await ok(["remove", "dr"]);
  });

  it("a rejected table fails create with EINVAL and leaves no device behind", async () => {
    const r = await d.tsdmsetup(["create", "bad", "--table", `0 2048 striped 2 7 ${f1} 0 ${f2} 0`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/device-mapper: reload ioctl on bad .*failed: Invalid argument/);
    expect((await d.tsdmsetup(["info", "bad"])).code).toBe(1);
  });
});
