import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { NbdClient } from "../helpers/nbd-client.js";

let d: TestDaemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
});

describe("log-writes across a daemon restart", () => {
  it("continues the log after kill -9 instead of starting over: marks from both runs replay", async () => {
    const data = path.join(d.dir, "data.img");
    const log = path.join(d.dir, "log.img");
    fs.writeFileSync(data, "");
    fs.truncateSync(data, 4 << 20);
    fs.writeFileSync(log, "");
    fs.truncateSync(log, 32 << 20);
    expect((await d.tsdmsetup(["create", "lw", "--table", `0 8192 log-writes ${data} ${log}`])).code).toBe(0);

    let c = await NbdClient.connect(d.nbdSocket, "lw");
    await c.write(0, Buffer.alloc(4096, 0x11), true);
    await c.write(8192, Buffer.alloc(4096, 0x22));
    await c.flush();
    await c.disconnect();
    expect((await d.tsdmsetup(["message", "lw", "0", "mark", "before-crash"])).code).toBe(0);
    const [entriesBefore] = (await d.tsdmsetup(["status", "lw"])).stdout.trim().split(" ").slice(3);

    await d.kill();
    await d.restart();
    // The restored device counts the entries it found (up to the last super update).
    const [entriesAfter] = (await d.tsdmsetup(["status", "lw"])).stdout.trim().split(" ").slice(3);
    expect(entriesAfter).toBe(entriesBefore);

    c = await NbdClient.connect(d.nbdSocket, "lw");
    await c.write(0, Buffer.alloc(4096, 0x33), true);
    await c.disconnect();
    expect((await d.tsdmsetup(["message", "lw", "0", "mark", "after-restart"])).code).toBe(0);
    expect((await d.tsdmsetup(["remove", "lw"])).code).toBe(0);

    for (const [mark, first, third] of [
      ["before-crash", 0x11, 0x22],
      ["after-restart", 0x33, 0x22],
    ] as const) {
      const img = path.join(d.dir, `replay-${mark}.img`);
      fs.writeFileSync(img, "");
      fs.truncateSync(img, 4 << 20);
      const r = await d.tsdm(["replay-log", "--log", log, "--replay", img, "--end-mark", mark]);
      expect(r.code, r.stderr).toBe(0);
      const got = fs.readFileSync(img);
      expect(got[0]).toBe(first);
      expect(got[8192]).toBe(third);
    }
    const find = await d.tsdm(["replay-log", "--log", log, "--find", "--end-mark", "dm-log-writes-end"]);
    expect(find.code, find.stderr).toBe(0);
  });
});
