/**
 * dm-log-writes: log every write to a second device, in the kernel's byte format and ordering, for
 * crash-consistency testing with `tsdm replay-log` (or the kernel tree's replay-log).
 *
 * Table:
 *   <start> <len> log-writes <dev_path> <log_dev_path> [<#opt_params> log_sector_size <bytes>]
 *
 * - <dev_path>: the data device; bios pass through to it 1:1 (as in the kernel, at their device-absolute sector).
 * - <log_dev_path>: where the log goes (super block at byte 0, entries after it).
 * - Log unit ("sectorsize" in the super block): the data device's logical block size, as the kernel does.
 *   tsdm extension, after QEMU blklogwrites' `log-sector-size`: the optional parameter group
 *   `2 log_sector_size <bytes>` (a power of two, 512..65536) logs in that unit instead; the target's logical
 *   block size becomes max(data device's, bytes) so every request is a whole number of log units.
 *   Example: `0 2097152 log-writes /dev/vdb /dev/vdc 2 log_sector_size 4096`.
 * - Like the kernel, the same device may be given as both (the log then lands on the data).
 * - Like the kernel, other arguments after the two devices are ignored (`log-writes d l 4096` is `log-writes d l`);
 *   only a group starting `<n> log_sector_size` is parsed, and it must be valid.
 *
 * Status: `<logged entries> <last allocated log sector (512 B units)>[ logging_disabled]`.
 * Table:  `<dev label> <log dev label>` (plus ` 2 log_sector_size <bytes>` when that option was given).
 * Message: `mark <text>` (the text is cut to sectorsize - 33 bytes).
 *
 * Daemon restarts: a shutdown logs the unflushed writes and rewrites the super, without the end mark; the restored
 * device continues after the entries the super counts (or starts anew when there is no valid super), its first
 * entry the mark `tsdm-restart`.
 */
import type { Target, TargetContext, TargetType } from "../target.js";
import type { BlockDevice } from "../../io/block-device.js";
import { DmError } from "../../core/errors.js";
import type { Sector } from "../../core/units.js";
import { invalid, parseUintArg } from "../args.js";
import { LogWritesTarget } from "./target.js";

export const MAX_LOG_SECTOR_SIZE = 65536;

export const logWritesTarget: TargetType = {
  name: "log-writes",
  version: [1, 1, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    if (args.length < 2) throw invalid("Invalid argument count");
    const logSectorSize = parseOptions(args.slice(2));
    const mode = ctx.readOnly ? "r" : "rw";
    const dev = await open(ctx, args[0]!, mode, "Device lookup failed");
    const logDev = await open(ctx, args[1]!, mode, "Log device lookup failed");
    // The kernel accepts the same device as data and log device (dm_get_device takes a second reference), and so
    // does tsdm (dmsetup oracle): the log then overwrites the data, as it would there.
    if (ctx.start + length > dev.size) {
      throw invalid(`Device ${args[0]} too small for target: start=${ctx.start}, len=${length}, dev_size=${dev.size}`);
    }
    const sectorSize = logSectorSize ?? dev.logicalBlockSize;
    if (logDev.logicalBlockSize > sectorSize) {
      throw invalid(`Log device logical block size ${logDev.logicalBlockSize} is larger than the log sector size ${sectorSize}`);
    }
    if (ctx.start % (Math.max(sectorSize, dev.logicalBlockSize) / 512) !== 0) {
      throw invalid(`Target start ${ctx.start} is not aligned to the ${sectorSize}-byte log sector size`);
    }
    // After a daemon restart the target continues the log it had (see `restored`).
    return new LogWritesTarget({ dev, logDev, sectorSize, explicitSectorSize: logSectorSize !== undefined, start: ctx.start, ctx, readOnly: ctx.readOnly, restored: ctx.restoring });
  },
};

/**
 * `<#opt_params> log_sector_size <bytes>`. The kernel ignores every argument after the two devices, so tsdm does
 * too, except a group whose first parameter is `log_sector_size`: that one is tsdm's own and must be well formed
 * (a bad count, value or parameter in it is EINVAL, not silently a 512-byte log).
 */
function parseOptions(rest: readonly string[]): number | undefined {
  if (rest.length < 2 || !/^[0-9]+$/.test(rest[0]!) || rest[1]!.toLowerCase() !== "log_sector_size") return undefined;
  const count = parseUintArg(rest[0], 0, rest.length - 1, "Invalid number of optional parameters");
  let size: number | undefined;
  for (let i = 1; i <= count; i++) {
    const key = rest[i]!.toLowerCase();
    if (key !== "log_sector_size") throw invalid(`Unrecognised optional parameter: ${rest[i]}`);
    if (i === count) throw invalid("log_sector_size needs a value");
    size = parseUintArg(rest[++i], 512, MAX_LOG_SECTOR_SIZE, "Invalid log_sector_size");
    if ((size & (size - 1)) !== 0) throw invalid("Invalid log_sector_size: not a power of two");
  }
  return size;
}

async function open(ctx: TargetContext, spec: string, mode: "r" | "rw", what: string): Promise<BlockDevice> {
  try {
    return await ctx.openDevice(spec, mode);
  } catch (err) {
    if (err instanceof DmError) throw new DmError(err.errno, `${what}: ${err.message}`);
    throw err;
  }
}
