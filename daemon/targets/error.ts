import type { Target, TargetType } from "./target.js";
import { DmError } from "../core/errors.js";

/** dm-error: every I/O fails with EIO. Arguments are ignored, as in the kernel. */
export const errorTarget: TargetType = {
  name: "error",
  version: [1, 6, 0],
  async construct(): Promise<Target> {
    return {
      map: () => Promise.reject(new DmError("EIO", "error target")),
      status: () => "",
      async destroy() {},
    };
  },
};
