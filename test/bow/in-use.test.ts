import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { afterAll, beforeAll, expect, it } from "vitest";
import { BIN, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { CMD, NbdClient } from "../helpers/nbd-client.js";
import { firstDifference, pattern } from "./helpers.js";

// A real tsdmd holding a bow device on an image file, and the real `tsdm bow-restore` as another process.
let d: TestDaemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
});

const ok = async (args: string[]): Promise<string> => {
  const r = await d.tsdmsetup(args);
  expect(r.code, `tsdmsetup ${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r.stdout;
};

it("bow-restore refuses an image a live bow device uses, and restores it once the device is gone", async () => {
  const img = path.join(d.dir, "bow.img");
  const orig = pattern(8192, 1);
  fs.writeFileSync(img, orig);
  await ok(["create", "b", "--table", `0 8192 bow ${img}`]);
  const nbd = await NbdClient.connect(d.nbdSocket, "b");
  await nbd.request(CMD.TRIM, 1 << 20, 1 << 20);
  await ok(["message", "b", "0", "state", "1"]);
  await nbd.write(64 * 512, pattern(8, 2));
  const live = fs.readFileSync(img);

  for (const args of [[img], ["--check", img]]) {
    const r = await d.tsdm(["bow-restore", ...args]);
    expect(r.code, r.stdout).toBe(1);
    expect(r.stderr).toBe(`tsdm bow-restore: cannot open ${img}: locked by another process (a bow device in tsdmd, or another bow-restore); remove the bow device first\n`);
  }
  expect(fs.readFileSync(img).equals(live)).toBe(true);
  expect((await nbd.read(64 * 512, 4096)).equals(pattern(8, 2))).toBe(true);
  await nbd.disconnect();

  // dmsetup's caller sees only the errno; the target's reason is in the daemon log (docs/bow.md).
  const bad = await d.tsdmsetup(["message", "b", "0", "state", "0"]);
  expect(bad.stderr).toBe("device-mapper: message ioctl on b  failed: Invalid argument\nCommand failed.\n");
  expect(d.log()).toMatch(/"level":"error","msg":"bow: Invalid state change from 1 to 0"/);

  await ok(["remove", "b"]);
  const r = await d.tsdm(["bow-restore", img]);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/restored the checkpoint/);
  const inUse = Array.from({ length: 8192 }, (_, s) => s).filter((s) => s < 2048 || s >= 4096);
  expect(firstDifference(fs.readFileSync(img), orig, 512, inUse)).toBe(-1);
});

it("a bow device cannot be created on an image while a restore runs on it", async () => {
  const img = path.join(d.dir, "restoring.img");
  fs.writeFileSync(img, pattern(8192, 3));
  await ok(["create", "c", "--table", `0 8192 bow ${img}`]);
  const nbd = await NbdClient.connect(d.nbdSocket, "c");
  await nbd.request(CMD.TRIM, 1 << 20, 1 << 20);
  await ok(["message", "c", "0", "state", "1"]);
  await nbd.write(64 * 512, pattern(8, 4));
  await nbd.disconnect();
  await ok(["remove", "c"]);

  // The restore stops at its first write (hidden --step-gate) until its stdin says go.
  const child = spawn(process.execPath, [BIN.tsdm, "bow-restore", "--step-gate", img], { stdio: ["pipe", "pipe", "inherit"] });
  const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
  await new Promise<void>((res) => child.stdout.on("data", (b: Buffer) => b.toString().includes("step 1") && res()));
  const busy = await d.tsdmsetup(["create", "c", "--table", `0 8192 bow ${img}`]);
  expect(busy.code).not.toBe(0);
  expect(busy.stderr).toMatch(/failed: Device or resource busy/);
  expect(fs.readFileSync(path.join(d.stateDir, "audit.log"), "utf8")).toMatch(/"details":"bow: [^"]*restoring\.img is locked by another process/);
  child.stdin.end(); // EOF: every later step goes ahead
  expect(await exited).toBe(0);
  await ok(["create", "c", "--table", `0 8192 bow ${img}`]);
  await ok(["remove", "c"]);
});
