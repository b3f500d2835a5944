import type { Target, TargetType } from "./target.js";
import type { Bio } from "../io/bio.js";
import { invalid } from "./args.js";
import { holeRun } from "../io/allocation.js";
import type { Sector } from "../core/units.js";

/** dm-zero: reads return zeroes, writes are discarded. Takes no arguments. */
export const zeroTarget: TargetType = {
  name: "zero",
  version: [1, 2, 0],
  async construct(_ctx, args): Promise<Target> {
    if (args.length !== 0) throw invalid("No arguments required");
    return {
      async map(bio: Bio): Promise<void> {
        if (bio.op === "read") bio.data!.fill(0);
      },
      // Nothing is stored: a hole that reads as zeroes (clients skip it instead of copying zeroes).
      allocation: (_sector: Sector, count: Sector) => [holeRun(count)],
      status: () => "",
      async destroy() {},
    };
  },
};
