import type { Bio } from "./bio.js";
import type { Sector } from "../core/units.js";
import type { AllocationRun } from "./allocation.js";

/**
 * An opened underlying device (the kernel's struct dm_dev): a regular file, a block device, or another tsdm
 * device. Targets submit bios to it; sectors are relative to its start.
 */
export interface BlockDevice {
  /** How the table shows this device: "major:minor" for block and tsdm devices, the path for files. */
  readonly label: string;
  /** For deps: device number (0:0 for a regular file) and a kernel-style name. */
  readonly devno: { major: number; minor: number };
  readonly kernelName: string;
  /** Set when this is another tsdm device (stacking). */
  readonly dmName?: string;
  /** Size in sectors at open time. */
  readonly size: Sector;
  /** Logical block size in bytes (512 or 4096): the smallest unit the device can address. */
  readonly logicalBlockSize: number;
  readonly readOnly: boolean;
  submit(bio: Bio): Promise<void>;
  /**
   * Allocation of [sector, sector+count): runs covering a prefix of it (at least one sector). Absent when the
   * device cannot tell (a block device): callers then take it all as data.
   */
  allocation?(sector: Sector, count: Sector): AllocationRun[] | Promise<AllocationRun[]>;
  /** Drop this holder's reference; the last close releases the file descriptor. */
  close(): Promise<void>;
}
