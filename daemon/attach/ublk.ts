import type { Logger } from "../core/log.js";
import { DmError } from "../core/errors.js";
import { nativeAttach } from "./native-attach.js";
import type { Attacher, Attachment, AttachRequest } from "./types.js";

/** ublk (drivers/block/ublk_drv.c): the kernel hands block requests to the daemon over io_uring. */
export class UblkAttacher implements Attacher {
  readonly method = "ublk" as const;

  constructor(private readonly opts: { log: Logger }) {}

  static unavailableReason(): string | undefined {
    if (process.getuid?.() !== 0) return "ublk devices need root";
    const a = nativeAttach.ublkAvailable();
    return a.control ? "the ublk data plane is not implemented yet" : a.reason;
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    this.opts.log.debug("ublk attach requested", { device: req.device.name });
    throw new DmError("ENOSYS", "ublk attach is not implemented");
  }
}
