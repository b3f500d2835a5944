import { describe, expect, it } from "vitest";
import { runHarness } from "./harness.js";

describe("crash safety under load (kill -9 of the daemon)", () => {
  it("keeps every promise across 4 kills: linear data, era marks, log-writes replay, bow rollback", async () => {
    const res = await runHarness({ iterations: 4, seed: 20261121, log: (s) => console.log(s) });
    expect(res.failures).toEqual([]);
    // The workload really ran on every device before each kill.
    for (const n of Object.values(res.acknowledged)) expect(n).toBeGreaterThan(0);
  }, 300_000);
});
