import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import { makeFile, tempDir } from "../helpers/registry.js";
import { describeEntries, fill, readLog, replayLog } from "./helpers.js";

let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  tmp = tempDir();
});
afterEach(() => tmp.cleanup());

it("kill -9 of the process running the target: the log replays up to the last super update", async () => {
  const data = makeFile(tmp.dir, "data", 1 << 20, "pattern");
  const seed = fs.readFileSync(data);
  const log = makeFile(tmp.dir, "log", 1 << 20);
  const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "test/log-writes/fixtures/crash-child.ts"), data, log], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr.on("data", (b: Buffer) => (err += b.toString()));
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on("exit", (code, signal) => resolve(signal ?? code)));
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString();
        if (out.includes("UNCOUNTED 6\n")) resolve();
      });
      child.on("exit", () => reject(new Error(`child exited early: ${out} ${err}`)));
    });
  } finally {
    child.kill("SIGKILL");
  }
  expect(await exited).toBe("SIGKILL");

  // The super counts 4 entries: the two uncounted ones (write + flush) are on the log but not replayed.
  expect((await replayLog(["--log", log])).stdout).toBe("Log version=1, sectorsize=512, entries=4\n");
  expect(describeEntries(readLog(log))).toEqual(["w0+8", "flush", "fua64+8", "mark:durable"]);
  expect(describeEntries(readLog(log, 6)).slice(4)).toEqual(["w128+8", "flush"]);

  const replay = makeFile(tmp.dir, "replay", 1 << 20);
  fs.writeFileSync(replay, seed);
  const r = await replayLog(["--log", log, "--replay", replay]);
  expect(r.code, r.stderr).toBe(0);
  const expected = Buffer.from(seed);
  fill(8, 0xa1).copy(expected, 0);
  fill(8, 0xb2).copy(expected, 64 * 512);
  expect(fs.readFileSync(replay).equals(expected)).toBe(true);
  // The data device itself did get the third write: the log, not the device, defines the replayable state.
  expect(fs.readFileSync(data).subarray(128 * 512, 136 * 512).equals(fill(8, 0xc3))).toBe(true);
});
