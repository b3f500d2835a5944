import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

let d: TestDaemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
});

const readAhead = async (name: string) => (await d.tsdmsetup(["info", "-c", "--noheadings", "-o", "read_ahead", name])).stdout.trim();

describe("--readahead", () => {
  it("sets read-ahead on create and resume; +N only raises it; auto and none; it survives a restart", async () => {
    expect((await d.tsdmsetup(["create", "ra", "--readahead", "1024", "--table", "0 8 zero"])).code).toBe(0);
    expect(await readAhead("ra")).toBe("1024");
    expect((await d.tsdmsetup(["info", "ra"])).stdout).toContain("Read Ahead:        1024\n");
    await d.tsdmsetup(["suspend", "ra"]);
    expect((await d.tsdmsetup(["resume", "ra", "--readahead", "+512"])).code).toBe(0);
    expect(await readAhead("ra")).toBe("1024");
    await d.tsdmsetup(["resume", "ra", "--readahead", "+2048"]);
    expect(await readAhead("ra")).toBe("2048");
    await d.tsdmsetup(["resume", "ra", "--readahead", "none"]);
    expect(await readAhead("ra")).toBe("0");
    await d.tsdmsetup(["resume", "ra", "--readahead", "auto"]);
    expect(await readAhead("ra")).toBe("256");
    await d.tsdmsetup(["resume", "ra", "--readahead", "4096"]);
    await d.kill();
    await d.restart();
    expect(await readAhead("ra")).toBe("4096");
    const bad = await d.tsdmsetup(["create", "rb", "--readahead", "-5", "--table", "0 8 zero"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe("Negative read ahead value (-5) is not understood.\nCouldn't process command line.\n");
  });
});
