import { DmError, fromSystemError } from "../core/errors.js";
import type { Sector } from "../core/units.js";
import type { BlockDevice } from "../io/block-device.js";

/**
 * Kernel-faithful argument scanning for target constructors. The kernel parses numbers with sscanf("%u%c"),
 * sscanf("%llu%c") and kstrtouint(), each with its own quirks that show in which tables load and what `table`
 * prints back (e.g. flakey's up interval "4294967296" is accepted as 0). These helpers reproduce them exactly.
 */

const U32 = 2n ** 32n;
const U64 = 2n ** 64n;

/** The kernel's vsscanf for one unsigned conversion followed by "%c": leading blanks, digits, then nothing. */
function scanUnsigned(text: string | undefined, modulus: bigint): bigint | undefined {
  if (text === undefined) return undefined;
  const m = /^[ \t\n\v\f\r]*([0-9]+)$/.exec(text);
  if (!m) return undefined;
  // simple_strntoull accumulates with wrap-around; the %u store truncates to 32 bits.
  return BigInt(m[1]!) % U64 % modulus;
}

/** sscanf(text, "%u%c", &v, &dummy) == 1: decimal digits only; values wrap modulo 2^32 as in the kernel. */
export function scanU32(text: string | undefined): number | undefined {
  const v = scanUnsigned(text, U32);
  return v === undefined ? undefined : Number(v);
}

/**
 * sscanf(text, "%llu%c", &v, &dummy) == 1 for a sector. Values wrap modulo 2^64, as in the kernel. Beyond 2^53
 * the number is only approximate, which cannot matter: such a sector lies past the end of any device and
 * fails the caller's size check.
 */
export function scanSector(text: string | undefined): Sector | undefined {
  const v = scanUnsigned(text, U64);
  return v === undefined ? undefined : (Number(v) as Sector);
}

/** kstrtouint(text, 10): optional '+', decimal digits, optional trailing newline; overflow is an error. */
export function kstrtouint(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const m = /^\+?([0-9]+)\n?$/.exec(text);
  if (!m) return undefined;
  const v = BigInt(m[1]!);
  return v < U32 ? Number(v) : undefined;
}

/** struct dm_arg: the range a numeric argument must fall in and the error text when it does not. */
export interface DmArg {
  readonly min: number;
  readonly max: number;
  readonly error: string;
}

/** struct dm_arg_set with dm_shift_arg / dm_read_arg / dm_read_arg_group. */
export class ArgSet {
  private pos = 0;
  constructor(private readonly argv: readonly string[]) {}

  get remaining(): number {
    return this.argv.length - this.pos;
  }

  /** dm_shift_arg: the next argument, or undefined when none are left. */
  shift(): string | undefined {
    return this.pos < this.argv.length ? this.argv[this.pos++] : undefined;
  }

  /** dm_read_arg: next argument as "%u" within [min, max], else EINVAL with the arg's error text. */
  read(arg: DmArg): number {
    return this.validateNext(arg, false);
  }

  /** dm_read_arg_group: a count that must also not exceed the number of arguments left after it. */
  readGroup(arg: DmArg): number {
    return this.validateNext(arg, true);
  }

  private validateNext(arg: DmArg, grouped: boolean): number {
    const v = scanU32(this.shift());
    if (v === undefined || v < arg.min || v > arg.max || (grouped && this.remaining < v)) throw new DmError("EINVAL", arg.error);
    return v;
  }
}

export const UINT_MAX = 0xffffffff;

/**
 * The table core's device_area_is_invalid() for [start, start+len) of `dev` (run for every device a target
 * iterates): the area must lie inside the device and be aligned to its logical block size.
 */
export function checkDeviceArea(dev: BlockDevice, start: number, len: number): void {
  if (start + len > dev.size) {
    throw new DmError("EINVAL", `${dev.kernelName} too small for target: start=${start}, len=${len}, dev_size=${dev.size}`);
  }
  const lbsSectors = dev.logicalBlockSize / 512;
  if (lbsSectors > 1) {
    if (start % lbsSectors !== 0) {
      throw new DmError("EINVAL", `start=${start} not aligned to h/w logical block size ${dev.logicalBlockSize} of ${dev.kernelName}`);
    }
    if (len % lbsSectors !== 0) {
      throw new DmError("EINVAL", `len=${len} not aligned to h/w logical block size ${dev.logicalBlockSize} of ${dev.kernelName}`);
    }
  }
}

/**
 * dm_get_device with the target's reason text: the errno of the lookup is kept (ENOENT for a missing path, as
 * the kernel returns it), the reason names what failed.
 */
export async function openTargetDevice(
  ctx: { readOnly: boolean; openDevice(spec: string, mode: "r" | "rw"): Promise<BlockDevice> },
  spec: string,
  reason: string,
): Promise<BlockDevice> {
  try {
    return await ctx.openDevice(spec, ctx.readOnly ? "r" : "rw");
  } catch (err) {
    const e = fromSystemError(err, spec);
    throw new DmError(e.errno, `${reason} (${e.message})`);
  }
}
