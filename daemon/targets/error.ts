import type { Target, TargetContext, TargetType } from "./target.js";
import type { BlockDevice } from "../io/block-device.js";
import { parseSectorArg } from "./args.js";
import { DmError } from "../core/errors.js";

/**
 * dm-error: every I/O fails with EIO. Version 1.7.0 as in Linux 6.10+: exactly two arguments are taken as
 * `<dev> <offset>`, like linear's, and the device is opened (it shows in deps; the kernel uses it for zoned
 * limits); any other arguments are ignored, as before.
 */
export const errorTarget: TargetType = {
  name: "error",
  version: [1, 7, 0],
  async construct(ctx: TargetContext, args: readonly string[]): Promise<Target> {
    let devs: readonly BlockDevice[] = [];
    if (args.length === 2) {
      devs = [await ctx.openDevice(args[0]!, ctx.readOnly ? "r" : "rw")];
      parseSectorArg(args[1], "Invalid device sector");
    }
    return {
      map: () => Promise.reject(new DmError("EIO", "error target")),
      status: () => "",
      devices: () => devs,
      async destroy() {},
    };
  },
};
