import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { NbdClient } from "../helpers/nbd-client.js";
import { describeEntries, readLog, superNrEntries } from "./helpers.js";

let d: TestDaemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
});

function files(name: string): { data: string; log: string } {
  const data = path.join(d.dir, `${name}.data`);
  const log = path.join(d.dir, `${name}.log`);
  fs.writeFileSync(data, "");
  fs.truncateSync(data, 4 << 20);
  fs.writeFileSync(log, "");
  fs.truncateSync(log, 32 << 20);
  return { data, log };
}

async function replayTo(log: string, mark: string): Promise<Buffer> {
  const img = path.join(d.dir, `replay-${mark}.img`);
  fs.writeFileSync(img, "");
  fs.truncateSync(img, 4 << 20);
  const r = await d.tsdm(["replay-log", "--log", log, "--replay", img, "--end-mark", mark]);
  expect(r.code, r.stderr).toBe(0);
  return fs.readFileSync(img);
}

const entriesOf = async (name: string): Promise<number> => Number((await d.tsdmsetup(["status", name])).stdout.trim().split(" ")[3]);

describe("log-writes across a daemon restart", () => {
  it("continues the log after kill -9 instead of starting over; a tsdm-restart mark shows where writes may be missing", async () => {
    const { data, log } = files("k");
    expect((await d.tsdmsetup(["create", "lwk", "--table", `0 8192 log-writes ${data} ${log}`])).code).toBe(0);

    let c = await NbdClient.connect(d.nbdSocket, "lwk");
    await c.write(0, Buffer.alloc(4096, 0x11), true);
    await c.write(8192, Buffer.alloc(4096, 0x22));
    await c.flush();
    await c.write(16384, Buffer.alloc(4096, 0x44)); // reaches the data device, never logged: unflushed at the crash
    await c.disconnect();
    expect((await d.tsdmsetup(["message", "lwk", "0", "mark", "before-crash"])).code).toBe(0);
    const entriesBefore = await entriesOf("lwk");
    expect(entriesBefore).toBe(4);

    await d.kill();
    await d.restart();
    c = await NbdClient.connect(d.nbdSocket, "lwk");
    await c.write(0, Buffer.alloc(4096, 0x33), true);
    await c.disconnect();
    expect((await d.tsdmsetup(["message", "lwk", "0", "mark", "after-restart"])).code).toBe(0);
    expect((await d.tsdmsetup(["remove", "lwk"])).code).toBe(0);

    // The restored device continues after the entries its super counted, with the restart mark first.
    expect(describeEntries(readLog(log))).toEqual(["fua0+8", "w16+8", "flush", "mark:before-crash", "mark:tsdm-restart", "fua0+8", "mark:after-restart", "mark:dm-log-writes-end"]);
    for (const [mark, first, third] of [
      ["before-crash", 0x11, 0x22],
      ["after-restart", 0x33, 0x22],
    ] as const) {
      const got = await replayTo(log, mark);
      expect(got[0]).toBe(first);
      expect(got[8192]).toBe(third);
      expect(got[16384]).toBe(0); // the lost write: not in the log, before or after the restart mark
    }
    expect(fs.readFileSync(data)[16384]).toBe(0x44);
  });

  it("killed before any super update: the restarted device starts the log anew, with the tsdm-restart mark first", async () => {
    const { data, log } = files("n");
    expect((await d.tsdmsetup(["create", "lwn", "--table", `0 8192 log-writes ${data} ${log}`])).code).toBe(0);
    const c = await NbdClient.connect(d.nbdSocket, "lwn");
    await c.write(0, Buffer.alloc(4096, 0x99)); // plain write + flush: logged, but no super yet
    await c.flush();
    await c.disconnect();
    expect(superNrEntries(log)).toBe(-1);
    await d.kill();
    await d.restart();
    expect((await d.tsdmsetup(["remove", "lwn"])).code).toBe(0);
    expect(describeEntries(readLog(log))).toEqual(["mark:tsdm-restart", "mark:dm-log-writes-end"]);
  });

  it("a clean stop logs the unflushed writes and updates the super without an end mark; remove writes the only end mark", async () => {
    const { log, data } = files("s");
    expect((await d.tsdmsetup(["create", "lws", "--table", `0 8192 log-writes ${data} ${log}`])).code).toBe(0);
    let c = await NbdClient.connect(d.nbdSocket, "lws");
    await c.write(0, Buffer.alloc(4096, 0x55), true);
    await c.write(8192, Buffer.alloc(4096, 0x66)); // unflushed at the stop
    await c.disconnect();

    await d.stop();
    // What the stop left: every write, counted by the super, and no end mark (the device lives on).
    expect(describeEntries(readLog(log))).toEqual(["fua0+8", "w16+8"]);
    expect(superNrEntries(log)).toBe(2);

    await d.restart();
    c = await NbdClient.connect(d.nbdSocket, "lws");
    await c.write(0, Buffer.alloc(4096, 0x77), true);
    await c.disconnect();
    expect((await d.tsdmsetup(["remove", "lws"])).code).toBe(0);

    const entries = describeEntries(readLog(log));
    expect(entries).toEqual(["fua0+8", "w16+8", "mark:tsdm-restart", "fua0+8", "mark:dm-log-writes-end"]);
    const end = await d.tsdm(["replay-log", "--log", log, "--find", "--end-mark", "dm-log-writes-end"]);
    expect(end.code, end.stderr).toBe(0);
    expect(end.stdout.split("@")[0]).toBe(String(entries.length - 1));
    const atRestart = await replayTo(log, "tsdm-restart");
    expect([atRestart[0], atRestart[8192]]).toEqual([0x55, 0x66]);
  });

  it("a restored inactive table continues the log where it ends at its resume, after what the live table logged meanwhile", async () => {
    const { data, log } = files("i");
    const table = `0 8192 log-writes ${data} ${log}`;
    expect((await d.tsdmsetup(["create", "lwi", "--table", table])).code).toBe(0);
    let c = await NbdClient.connect(d.nbdSocket, "lwi");
    await c.write(0, Buffer.alloc(4096, 0x10), true);
    await c.disconnect();
    expect((await d.tsdmsetup(["load", "lwi", "--table", table])).code).toBe(0); // inactive, on the same log

    await d.kill();
    await d.restart();
    // The live table goes on logging after the restart; the inactive one waits for its resume.
    c = await NbdClient.connect(d.nbdSocket, "lwi");
    await c.write(4096, Buffer.alloc(4096, 0x20), true);
    await c.disconnect();
    expect((await d.tsdmsetup(["message", "lwi", "0", "mark", "live-after-restart"])).code).toBe(0);
    expect((await d.tsdmsetup(["resume", "lwi"])).code).toBe(0); // swap: the old table ends its log, the new one continues it
    c = await NbdClient.connect(d.nbdSocket, "lwi");
    await c.write(8192, Buffer.alloc(4096, 0x30), true);
    await c.disconnect();
    expect((await d.tsdmsetup(["remove", "lwi"])).code).toBe(0);

    expect(describeEntries(readLog(log))).toEqual([
      "fua0+8",
      "mark:tsdm-restart", // the live table, restored
      "fua8+8",
      "mark:live-after-restart",
      "mark:dm-log-writes-end", // its end, at the swap
      "mark:tsdm-restart", // the inactive table, restored, from its resume on
      "fua16+8",
      "mark:dm-log-writes-end",
    ]);
  });
});
