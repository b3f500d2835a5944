import type { Bio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import type { Sector } from "../core/units.js";
import type { AllocationRun } from "../io/allocation.js";

/**
 * The target interface, shaped like the kernel's struct target_type. A target type constructs a target from
 * its table arguments (ctr); the target maps bios (map), reports status (status info / table), answers
 * messages, and takes part in suspend/resume. One file per target type lives next to this one; a target's
 * whole story (arguments, I/O, on-disk format, status) stays in its own file or folder.
 */
export interface TargetType {
  readonly name: string;
  readonly version: readonly [major: number, minor: number, patch: number];
  /**
   * ctr: validate `args` and open underlying devices through `ctx`. Bad arguments throw
   * DmError("EINVAL", reason); nothing is written to any device by a failed construct.
   */
  construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target>;
}

export interface SuspendOptions {
  /** dmsetup --noflush: do not flush; in-flight I/O may be requeued rather than completed. */
  readonly noflush: boolean;
}

/** Why a table is being destroyed. */
export interface DestroyOptions {
  /**
   * The daemon is stopping and will construct this table again (restoring) on its next start: write what must be
   * durable, but nothing that records the end of the table's life (log-writes' end mark). Absent or false: a
   * real dtr (remove, table replacement, failed load).
   */
  readonly shutdown?: boolean;
}

export interface Target {
  /** map + end_io: serve `bio`, whose sector is relative to the start of this target. */
  map(bio: Bio): Promise<void>;
  /** STATUSTYPE_INFO ("info", `dmsetup status`) or STATUSTYPE_TABLE ("table", `dmsetup table`): params only. */
  status(type: "info" | "table", opts?: { noflush?: boolean }): string;
  /** dmsetup message: the words after the sector. Returns the reply text, if any. Unknown → EINVAL. */
  message?(argv: readonly string[]): Promise<string | void>;
  /** Before I/O is held: e.g. stop background work. */
  presuspend?(opts: SuspendOptions): Promise<void>;
  /** After in-flight I/O has drained: e.g. commit metadata. */
  postsuspend?(opts: SuspendOptions): Promise<void>;
  /** Before the table goes live (may fail the resume). */
  preresume?(): Promise<void>;
  /** After the table is live. */
  resume?(): Promise<void>;
  /** dtr: final writes and release of resources. Underlying devices opened via the context are closed after. */
  destroy(opts?: DestroyOptions): Promise<void>;
  /**
   * Allocation of [sector, sector+count) relative to the target, for NBD block status: runs covering a prefix
   * of the range. Absent: everything is reported as data (always correct, never sparse).
   */
  allocation?(sector: Sector, count: Sector): AllocationRun[] | Promise<AllocationRun[]>;
  /** iterate_devices: the underlying devices, for deps. Defaults to everything opened through the context. */
  devices?(): readonly BlockDevice[];
  /** io_hints: the logical block size this target needs (default: the largest of its devices', or 512). */
  readonly logicalBlockSize?: number;
  /**
   * io_hints: the I/O size that avoids a penalty (the kernel's io_opt), in bytes: era's block, a striped
   * row. Absent: no preference. Exported as NBD's preferred block size where it is a power of two.
   */
  readonly optimalIoBytes?: number;
  /** Number of sectors the target can take in one bio; larger bios are split at this boundary (max_io_len). */
  readonly maxIoSectors?: number;
}

/** What the device-mapper core offers a target while it is constructed and running. */
export interface TargetContext {
  /** The mapped device's name (for messages and logs). */
  readonly deviceName: string;
  /** True when the table is loaded read-only (dmsetup -r). */
  readonly readOnly: boolean;
  /** Start of the target in the table. */
  readonly start: Sector;
  /**
   * True when the daemon is bringing the table back after a restart (clean or kill -9), rather than a user
   * loading it. A target with on-disk state continues from it (e.g. log-writes appends to its existing log)
   * where a fresh load would start anew, as the kernel's constructor does.
   */
  readonly restoring?: boolean;
  /**
   * dm_get_device: open a file, block device or tsdm device named by path, major:minor, tsdm name or
   * /dev/mapper/NAME. Closed automatically when the table is destroyed.
   */
  openDevice(spec: string, mode: "r" | "rw"): Promise<BlockDevice>;
  /** dm_table_event: bump the device's event number and wake `dmsetup wait`. */
  raiseEvent(): void;
  /** Structured log line tagged with the device and target. */
  log(level: "info" | "warn" | "error", message: string, fields?: Record<string, unknown>): void;
}
