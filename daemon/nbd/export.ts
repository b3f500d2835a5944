import type { MappedDevice } from "../device/mapped-device.js";
import { SECTOR_SIZE } from "../core/units.js";
import { MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK, TF } from "./protocol.js";

/**
 * What a device looks like as an NBD export: one export per device, named after it. Only devices with a live
 * table are exported: a created-but-never-resumed device has no size or targets yet, and answering GO with
 * size 0 would make qemu/nbdkit clients open an empty disk instead of reporting "no such export".
 */

/** Why `dev` cannot be exported now, or undefined when it can. */
export function notExportable(dev: MappedDevice): string | undefined {
  if (dev.live === undefined) return `device ${dev.name} has no live table (load a table and resume it first)`;
  return undefined;
}

export function exportSizeBytes(dev: MappedDevice): number {
  return dev.size * SECTOR_SIZE;
}

/**
 * Transmission flags. CAN_MULTI_CONN is safe: every connection submits to the same MappedDevice, nothing is
 * cached per connection, and FLUSH reaches the backing descriptors shared by all of them. SEND_FAST_ZERO is
 * advertised so that clients ask instead of assuming; such requests are answered ENOTSUP (connection.ts).
 * SEND_DF only makes sense once structured replies were negotiated.
 */
export function transmissionFlags(dev: MappedDevice, structured: boolean): number {
  let f = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO | TF.CAN_MULTI_CONN | TF.SEND_CACHE;
  if (dev.readOnly) f |= TF.READ_ONLY;
  if (structured) f |= TF.SEND_DF;
  return f;
}

export interface BlockSizes {
  min: number;
  preferred: number;
  max: number;
}

/**
 * NBD_INFO_BLOCK_SIZE: bios are whole sectors (or the device's logical blocks), at most MAX_PAYLOAD; the
 * preferred size is the table's io_opt when the protocol can say it (a power of two, within the payload).
 */
export function blockSizes(dev: MappedDevice): BlockSizes {
  const min = Math.max(MIN_BLOCK, dev.logicalBlockSize);
  const opt = dev.optimalIoBytes;
  const preferred = opt > 0 && (opt & (opt - 1)) === 0 && opt <= MAX_PAYLOAD ? opt : PREFERRED_BLOCK;
  return { min, preferred: Math.max(min, preferred), max: MAX_PAYLOAD };
}

export function exportDescription(dev: MappedDevice): string {
  const types = dev.live?.targetTypes.join(",") ?? "";
  return `tsdm device ${dev.name}${types ? ` (${types})` : ""}`;
}
