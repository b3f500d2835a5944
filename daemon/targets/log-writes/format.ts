/**
 * The dm-log-writes on-disk log, format version 1 (Linux drivers/md/dm-log-writes.c; also written by QEMU's
 * blklogwrites). Shared by the target (writer) and `tsdm replay-log` (reader).
 *
 * Layout, all integers little-endian, "sectorsize" = the log's unit (the data device's logical block size
 * for the kernel, `log-sector-size` for QEMU):
 *
 *   byte 0          super block, one sectorsize block:
 *                     0 magic u64 = 0x6a736677736872 ("rhswfsj\0"), 8 version u64 = 1, 16 nr_entries u64,
 *                     24 sectorsize u32, 28 u32 padding (written as 0, ignored on read), rest zero
 *   byte sectorsize entry 0 header block:
 *                     0 sector u64 (sectorsize units), 8 nr_sectors u64, 16 flags u64, 24 data_len u64,
 *                     32 mark text (data_len bytes, MARK only), rest zero
 *                   entry 0 payload: nr_sectors * sectorsize bytes, absent for DISCARD
 *   next block      entry 1 header ...
 *
 * There is no index, checksum or terminator: readers walk nr_entries entries from byte sectorsize.
 */

export const WRITE_LOG_MAGIC = 0x6a736677736872n;
export const WRITE_LOG_VERSION = 1;
/** Bytes of a header that carry fields; mark text starts here. */
export const ENTRY_FIELDS_BYTES = 32;

/** Entry flags (struct log_write_entry.flags). */
export const LogFlag = {
  FLUSH: 1 << 0,
  FUA: 1 << 1,
  DISCARD: 1 << 2,
  MARK: 1 << 3,
  METADATA: 1 << 4,
} as const;
export type LogFlagName = keyof typeof LogFlag;
const FLAG_NAMES = Object.entries(LogFlag) as [LogFlagName, number][];
const KNOWN_FLAGS = FLAG_NAMES.reduce((m, [, v]) => m | v, 0);

/** The mark the kernel appends when the target is removed cleanly. */
export const END_MARK = "dm-log-writes-end";
/**
 * tsdm: the first entry a device logs when it continues an existing log after a daemon restart. Writes between the
 * last logged entry before it and the restart may be missing (after a kill -9: those not yet flushed).
 */
export const RESTART_MARK = "tsdm-restart";

/** A sector count in log units (sectorsize bytes each), distinct from 512-byte dm sectors. */
export type LogBlocks = number & { readonly __unit: "log-block" };
export const logBlocks = (n: number): LogBlocks => n as LogBlocks;

export interface LogSuper {
  readonly nrEntries: number;
  readonly sectorSize: number;
}

export interface LogEntryHeader {
  /** Start on the data device, in sectorsize units. */
  readonly sector: LogBlocks;
  /** Length in sectorsize units (0 for flush and mark entries). */
  readonly nrSectors: LogBlocks;
  readonly flags: number;
  /** MARK: the text's byte length (no NUL). Otherwise 0 (old DAX-era kernels: inline byte count). */
  readonly dataLen: number;
  /** MARK entries: the text bytes (data_len of them). */
  readonly mark?: Buffer;
}

/** Failure to read a log as a v1 dm-log-writes log; `reason` is replay-log's wording. */
export class LogFormatError extends Error {
  override readonly name = "LogFormatError";
}

/**
 * A sectorsize a reader can walk: at least one entry header (QEMU writes powers of two from 32 up; the C replay-log
 * takes any value and below 32 would read headers overlapping each other), under QEMU's 16 MiB bound, which also
 * bounds the header buffer. Like replay-log, powers of two are not required. The target's own limits are stricter.
 */
export function isValidSectorSize(n: number): boolean {
  return Number.isInteger(n) && n >= ENTRY_FIELDS_BYTES && n < 16 << 20;
}

/** Longest mark text the kernel keeps for a sectorsize (kstrndup(text, sectorsize - 32 - 1)). */
export const maxMarkLength = (sectorSize: number): number => sectorSize - ENTRY_FIELDS_BYTES - 1;

export function encodeSuper(s: LogSuper): Buffer {
  const b = Buffer.alloc(s.sectorSize);
  b.writeBigUInt64LE(WRITE_LOG_MAGIC, 0);
  b.writeBigUInt64LE(BigInt(WRITE_LOG_VERSION), 8);
  b.writeBigUInt64LE(BigInt(s.nrEntries), 16);
  b.writeUInt32LE(s.sectorSize, 24);
  return b;
}

/** Decode and check a super block (magic, version, a usable sectorsize); throws LogFormatError. */
export function decodeSuper(b: Buffer): LogSuper {
  if (b.length < ENTRY_FIELDS_BYTES) throw new LogFormatError("Error reading super");
  if (b.readBigUInt64LE(0) !== WRITE_LOG_MAGIC) throw new LogFormatError("Magic doesn't match");
  const version = b.readBigUInt64LE(8);
  if (version !== BigInt(WRITE_LOG_VERSION)) throw new LogFormatError(`Version mismatch, wanted ${WRITE_LOG_VERSION}, have ${version}`);
  const sectorSize = b.readUInt32LE(24);
  if (!isValidSectorSize(sectorSize)) throw new LogFormatError(`Invalid sectorsize ${sectorSize}`);
  return { nrEntries: toSafe(b.readBigUInt64LE(16), "nr_entries"), sectorSize };
}

export function encodeEntry(e: LogEntryHeader, sectorSize: number): Buffer {
  return encodeEntryInto(Buffer.alloc(sectorSize), e, sectorSize);
}

/** The header block of `e` in the first `sectorSize` bytes of `b` (the rest of `b` is left alone). */
export function encodeEntryInto(b: Buffer, e: LogEntryHeader, sectorSize: number): Buffer {
  b.fill(0, 0, sectorSize);
  b.writeBigUInt64LE(BigInt(e.sector), 0);
  b.writeBigUInt64LE(BigInt(e.nrSectors), 8);
  b.writeBigUInt64LE(BigInt(e.flags), 16);
  b.writeBigUInt64LE(BigInt(e.dataLen), 24);
  if (e.mark) {
    if (e.mark.length > maxMarkLength(sectorSize)) throw new RangeError(`mark of ${e.mark.length} bytes does not fit a ${sectorSize}-byte header`);
    e.mark.copy(b, ENTRY_FIELDS_BYTES);
  }
  return b;
}

/** A mark entry header for `text` (already limited to maxMarkLength bytes by the caller). */
export function markEntry(text: Buffer): LogEntryHeader {
  return { sector: logBlocks(0), nrSectors: logBlocks(0), flags: LogFlag.MARK, dataLen: text.length, mark: text };
}

/** Decode the fields of a header block (no validation; see validateEntry). */
export function decodeEntry(b: Buffer): LogEntryHeader {
  const flags = toSafe(b.readBigUInt64LE(16), "flags");
  const dataLen = toSafe(b.readBigUInt64LE(24), "data_len");
  const header = {
    sector: logBlocks(toSafe(b.readBigUInt64LE(0), "sector")),
    nrSectors: logBlocks(toSafe(b.readBigUInt64LE(8), "nr_sectors")),
    flags,
    dataLen,
  };
  if (flags & LogFlag.MARK) {
    const len = Math.min(dataLen, b.length - ENTRY_FIELDS_BYTES);
    return { ...header, mark: Buffer.from(b.subarray(ENTRY_FIELDS_BYTES, ENTRY_FIELDS_BYTES + len)) };
  }
  return header;
}

/**
 * The xfstests replay-log checks: an all-zero entry (flags 0, nr_sectors 0) is malformed, and unless the entry is
 * exactly a MARK the byte where mark text would start must be 0. Catches an nr_entries that overstates the log.
 */
export function isMalformedEntry(headerBlock: Buffer, e: LogEntryHeader): boolean {
  if (e.flags === 0 && e.nrSectors === 0) return true;
  // A 32-byte header (QEMU's smallest log-sector-size) has no byte there: nothing to check.
  return e.flags !== LogFlag.MARK && (headerBlock[ENTRY_FIELDS_BYTES] ?? 0) !== 0;
}

/** Payload bytes that follow a header in the log. */
export function payloadBytes(e: LogEntryHeader, sectorSize: number): number {
  return e.flags & LogFlag.DISCARD ? 0 : e.nrSectors * sectorSize;
}

/** Flag names joined by "|", as replay-log prints them (NONE, UNKNOWN.0x… for unknown bits). */
export function flagNames(flags: number): string {
  if (flags === 0) return "NONE";
  const names = FLAG_NAMES.filter(([, v]) => flags & v).map(([n]) => n as string);
  const unknown = flags & ~KNOWN_FLAGS;
  if (unknown) names.push(`UNKNOWN.0x${unknown.toString(16)}`);
  return names.join("|");
}

function toSafe(v: bigint, field: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new LogFormatError(`${field} ${v} is out of range`);
  return Number(v);
}
