import { DmError } from "../core/errors.js";
import { parseSector, type Sector } from "../core/units.js";

/** Argument helpers shared by target constructors: each failure is EINVAL with the kernel's reason. */
export function expectArgCount(args: readonly string[], min: number, max: number, reason: string): void {
  if (args.length < min || args.length > max) throw new DmError("EINVAL", reason);
}

export function parseSectorArg(text: string | undefined, reason: string): Sector {
  const s = text === undefined ? undefined : parseSector(text);
  if (s === undefined) throw new DmError("EINVAL", reason);
  return s;
}

/** Unsigned decimal integer in [min, max], as the kernel's dm_read_arg() accepts it. */
export function parseUintArg(text: string | undefined, min: number, max: number, reason: string): number {
  if (text === undefined || !/^[0-9]+$/.test(text)) throw new DmError("EINVAL", reason);
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new DmError("EINVAL", reason);
  return n;
}

export const invalid = (reason: string): DmError => new DmError("EINVAL", reason);
