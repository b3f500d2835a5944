/**
 * Units. Device-mapper speaks 512-byte sectors everywhere (tables, bios, status); NBD and files speak bytes.
 * The two are distinct types so that one cannot be passed where the other is meant.
 */
export type Sector = number & { readonly __unit: "sector" };
export type ByteCount = number & { readonly __unit: "byte" };

export const SECTOR_SHIFT = 9;

/**
 * The largest device tsdm serves: 2^53 bytes (8 PiB), so that every byte offset is an exact JavaScript number
 * on the NBD and file paths. The kernel allows up to 2^63 bytes; a table beyond this is refused at load.
 */
export const MAX_DEVICE_SECTORS = 2 ** 44;
export const SECTOR_SIZE = 512;

export const sector = (n: number): Sector => n as Sector;
export const bytes = (n: number): ByteCount => n as ByteCount;

export const sectorsToBytes = (s: Sector): ByteCount => (s * SECTOR_SIZE) as ByteCount;

/** Exact conversion; throws on a byte count that is not a whole number of sectors. */
export function bytesToSectors(b: ByteCount): Sector {
  if (b % SECTOR_SIZE !== 0) throw new RangeError(`${b} bytes is not a whole number of sectors`);
  return (b / SECTOR_SIZE) as Sector;
}

/** Parse a decimal sector count the way the kernel's sscanf("%llu") + checks would accept it. */
export function parseSector(text: string): Sector | undefined {
  if (!/^[0-9]+$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) ? (n as Sector) : undefined;
}
