import zlib from "node:zlib";

/**
 * The on-disk log of Android dm-bow 1.2.0, shared by the `bow` target (which writes it) and `tsdm bow-restore`
 * (vold's restore, which reads it). Physical block 0 of the lower device holds the current log sector:
 *
 *   header (28 bytes, little-endian, packed)      entry (24 bytes, packed)
 *    0  u32 magic   "BOW\0" (or "WOB\0")           0  u64 source    512-byte sector overwritten
 *    4  u16 header_version 0x0100                  8  u64 dest      512-byte sector holding the old data
 *    6  u16 header_size 28                        16  u32 size      bytes, whole blocks, >= one block
 *    8  u32 block_size                            20  u32 checksum  §checksum; 0 = not recorded
 *   12  u32 count
 *   16  u32 sequence
 *   20  u64 sector0  (where the live block 0 is)
 *
 * Sectors are always 512 bytes, whatever the block size.
 */
export const MAGIC_BOW = 0x00574f42; // "BOW\0"
/** vold's marker for a restore in progress: resume without validating. The kernel never writes it. */
export const MAGIC_WOB = 0x00424f57; // "WOB\0"
export const HEADER_VERSION = 0x0100;
export const HEADER_SIZE = 28;
export const ENTRY_SIZE = 24;
export const MIN_BLOCK_SIZE = 512;
export const MAX_BLOCK_SIZE = 4096;
/**
 * Largest backup one log entry describes; bigger backups are logged in pieces. vold rejects an entry whose
 * size + block_size overflows u32 (and then rolls forward instead of back), and reads each entry whole into
 * memory when restoring: a fixed 16 MiB is far from that limit at every block size and keeps restores small.
 */
export const MAX_ENTRY_BYTES = 16 << 20;

export interface LogHeader {
  magic: number;
  headerVersion: number;
  headerSize: number;
  blockSize: number;
  count: number;
  sequence: number;
  /** 512-byte sector of the live copy of block 0 (SECTOR0_CURRENT). */
  sector0: number;
}

export interface LogEntry {
  /** 512-byte sector that was about to be overwritten. */
  source: number;
  /** 512-byte sector the old data was copied to. */
  dest: number;
  /** Bytes (a whole number of blocks). */
  size: number;
  /** Raw CRC-32 of the old data seeded with the source block number; 0 = not checked. */
  checksum: number;
}

/** Entries that fit in one log sector: 169 at 4096 bytes, 84 at 2048, 41 at 1024, 20 at 512. */
export const logCapacity = (blockSize: number): number => Math.floor((blockSize - HEADER_SIZE) / ENTRY_SIZE);

export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** A u64 field as a JS number; values past 2^53 cannot address any device, so they are reported as Infinity. */
function readU64(buf: Buffer, off: number): number {
  const v = buf.readBigUInt64LE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.POSITIVE_INFINITY : Number(v);
}

export function decodeHeader(buf: Buffer): LogHeader {
  return {
    magic: buf.readUInt32LE(0),
    headerVersion: buf.readUInt16LE(4),
    headerSize: buf.readUInt16LE(6),
    blockSize: buf.readUInt32LE(8),
    count: buf.readUInt32LE(12),
    sequence: buf.readUInt32LE(16),
    sector0: readU64(buf, 20),
  };
}

export function encodeHeader(h: LogHeader, into: Buffer): void {
  into.writeUInt32LE(h.magic >>> 0, 0);
  into.writeUInt16LE(h.headerVersion, 4);
  into.writeUInt16LE(h.headerSize, 6);
  into.writeUInt32LE(h.blockSize >>> 0, 8);
  into.writeUInt32LE(h.count >>> 0, 12);
  into.writeUInt32LE(h.sequence >>> 0, 16);
  into.writeBigUInt64LE(BigInt(h.sector0), 20);
}

export function decodeEntry(buf: Buffer, headerSize: number, index: number): LogEntry {
  const off = headerSize + index * ENTRY_SIZE;
  return {
    source: readU64(buf, off),
    dest: readU64(buf, off + 8),
    size: buf.readUInt32LE(off + 16),
    checksum: buf.readUInt32LE(off + 20),
  };
}

export function encodeEntry(e: LogEntry, into: Buffer, index: number): void {
  // Never write an entry a restore would reject (size is u32 on disk: larger values would also be cut).
  if (!Number.isSafeInteger(e.size) || e.size < MIN_BLOCK_SIZE || e.size % 512 !== 0 || e.size > MAX_ENTRY_BYTES) {
    throw new RangeError(`bow: log entry size ${e.size} is not whole sectors from ${MIN_BLOCK_SIZE} to ${MAX_ENTRY_BYTES} bytes`);
  }
  const off = HEADER_SIZE + index * ENTRY_SIZE;
  into.writeBigUInt64LE(BigInt(e.source), off);
  into.writeBigUInt64LE(BigInt(e.dest), off + 8);
  into.writeUInt32LE(e.size >>> 0, off + 16);
  into.writeUInt32LE(e.checksum >>> 0, off + 20);
}

/**
 * Linux crc32_le(seed, data): reflected CRC-32 (0xEDB88320) with no initial and no final inversion. zlib's
 * crc32 inverts on entry and exit, so inverting the seed and the result cancels both. With no inversion the
 * CRC chains: crc32Raw(crc32Raw(s, a), b) === crc32Raw(s, a ++ b).
 */
export function crc32Raw(seed: number, data: Uint8Array): number {
  return (zlib.crc32(data, (seed ^ 0xffffffff) >>> 0) ^ 0xffffffff) >>> 0;
}

/** The seed of a log entry's checksum: the source *block* number, truncated to u32. */
export const checksumSeed = (sourceSector: number, blockSize: number): number => Math.floor(sourceSector / (blockSize / 512)) >>> 0;
