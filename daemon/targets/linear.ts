import type { Target, TargetContext, TargetType } from "./target.js";
import type { Bio } from "../io/bio.js";
import { remapBio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import { expectArgCount, invalid, parseSectorArg } from "./args.js";
import type { Sector } from "../core/units.js";
import { dataRun, type AllocationRun } from "../io/allocation.js";

/** dm-linear: `linear <dev> <offset>` maps the target onto <dev> starting at sector <offset>. */
export const linearTarget: TargetType = {
  name: "linear",
  version: [1, 4, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    expectArgCount(args, 2, 2, "Invalid argument count");
    const offset = parseSectorArg(args[1], "Invalid device sector");
    const dev = await ctx.openDevice(args[0]!, ctx.readOnly ? "r" : "rw");
    if (offset + length > dev.size) throw invalid(`Device ${args[0]} too small for target: start=${offset}, len=${length}, dev_size=${dev.size}`);
    return new LinearTarget(dev, offset);
  },
};

class LinearTarget implements Target {
  constructor(
    private readonly dev: BlockDevice,
    private readonly offset: Sector,
  ) {}

  get logicalBlockSize(): number {
    return this.dev.logicalBlockSize;
  }

  map(bio: Bio): Promise<void> {
    if (bio.op === "flush") return this.dev.submit(bio);
    return this.dev.submit(remapBio(bio, (bio.sector + this.offset) as Sector));
  }

  allocation(sector: Sector, count: Sector): AllocationRun[] | Promise<AllocationRun[]> {
    return this.dev.allocation ? this.dev.allocation((sector + this.offset) as Sector, count) : [dataRun(count)];
  }

  status(type: "info" | "table"): string {
    return type === "info" ? "" : `${this.dev.label} ${this.offset}`;
  }

  devices(): readonly BlockDevice[] {
    return [this.dev];
  }

  async destroy(): Promise<void> {}
}
