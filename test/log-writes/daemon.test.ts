import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { run, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { describeEntries, readLog } from "./helpers.js";

/** The whole product: tsdmd + tsdmsetup (dmsetup syntax) + an NBD client + `tsdm replay-log`, as separate processes. */
let d: TestDaemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
});

it("tsdmsetup create/status/table/message/remove, qemu-io over NBD, tsdm replay-log to the mark", async () => {
  const seed = crypto.randomBytes(1 << 20);
  const data = path.join(d.dir, "data.img");
  const log = path.join(d.dir, "log.img");
  fs.writeFileSync(data, seed);
  fs.writeFileSync(log, Buffer.alloc(4 << 20));
  const ok = async (args: string[]) => {
    const r = await d.tsdmsetup(args);
    expect(r.code, `tsdmsetup ${args.join(" ")}: ${r.stderr}`).toBe(0);
    return r.stdout;
  };
  await ok(["create", "lw", "--table", `0 2048 log-writes ${data} ${log}`]);
  expect(await ok(["table", "lw"])).toBe(`0 2048 log-writes ${data} ${log}\n`);
  expect(await ok(["status", "lw"])).toBe("0 2048 log-writes 0 0\n");

  const io = await run("qemu-io", ["-f", "raw", "-t", "writeback", d.nbdUri("lw"), "-c", "write -P 0x61 0 4k", "-c", "write -f -P 0x62 8k 4k", "-c", "flush"]);
  expect(io.code, io.stderr).toBe(0);
  await ok(["message", "lw", "0", "mark", "after-flush"]);
  const afterMark = fs.readFileSync(data);
  const io2 = await run("qemu-io", ["-f", "raw", "-t", "writeback", d.nbdUri("lw"), "-c", "write -P 0x63 16k 4k"]);
  expect(io2.code, io2.stderr).toBe(0);

  const bad = await d.tsdmsetup(["message", "lw", "0", "mark"]);
  expect(bad.code).not.toBe(0);
  expect(bad.stderr).toMatch(/Invalid argument/);
  expect((await d.tsdmsetup(["message", "lw", "0", "flush", "now"])).code).not.toBe(0);
  expect(await ok(["status", "lw"])).toMatch(/^0 2048 log-writes \d+ \d+\n$/);
  await ok(["remove", "lw"]);

  const entries = describeEntries(readLog(log));
  expect(entries).toContain("mark:after-flush");
  expect(entries).toContain("fua16+8");
  expect(entries.at(-1)).toBe("mark:dm-log-writes-end");

  const found = await d.tsdm(["replay-log", "--log", log, "--find", "--end-mark", "after-flush"]);
  expect(found.code, found.stderr).toBe(0);
  const replay = path.join(d.dir, "replay.img");
  fs.writeFileSync(replay, seed);
  const r = await d.tsdm(["replay-log", "--log", log, "--replay", replay, "--end-mark", "after-flush"]);
  expect(r.code, r.stderr).toBe(0);
  expect(fs.readFileSync(replay).equals(afterMark)).toBe(true);
});
