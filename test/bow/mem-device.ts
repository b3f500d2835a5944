import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { BlockDevice } from "../../daemon/io/block-device.js";
import type { TargetContext } from "../../daemon/targets/target.js";

/**
 * A lower device in memory whose bios take effect only when `delay(bio)` lets them: the test decides when each
 * read sees the image and each write lands, so the timing of concurrent I/O is reproducible. Without a delay
 * (or when it returns undefined) a bio completes on the next microtask.
 */
export class MemBlockDevice implements BlockDevice {
  readonly label = "mem";
  readonly devno = { major: 0, minor: 0 };
  readonly kernelName = "mem";
  readonly logicalBlockSize = 512;
  readonly readOnly = false;

  constructor(
    readonly image: Buffer,
    private readonly delay?: (bio: Bio) => Promise<void> | undefined,
  ) {}

  get size(): Sector {
    return (this.image.length / 512) as Sector;
  }

  async submit(bio: Bio): Promise<void> {
    const d = this.delay?.(bio);
    if (d) await d;
    const pos = bio.sector * 512;
    const len = bio.count * 512;
    if (pos + len > this.image.length) throw new RangeError(`bio past the end: ${bio.sector}+${bio.count}`);
    switch (bio.op) {
      case "read":
        this.image.copy(bio.data!, 0, pos, pos + len);
        break;
      case "write":
        bio.data!.copy(this.image, pos);
        break;
      case "discard":
      case "write_zeroes":
        this.image.fill(0, pos, pos + len);
        break;
      case "flush":
        break;
    }
  }

  async close(): Promise<void> {}
}

/** A target context over one lower device, for constructing a target directly (no registry). */
export const contextFor = (dev: BlockDevice): TargetContext => ({
  deviceName: "b",
  readOnly: false,
  start: 0 as Sector,
  openDevice: async () => dev,
  raiseEvent: () => undefined,
  log: () => undefined,
});

/** Let every queued microtask and immediate run: with a MemBlockDevice, whatever can progress has. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 4; i++) await new Promise<void>((r) => setImmediate(r));
}
