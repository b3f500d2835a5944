import fs from "node:fs";
import {
  ENTRY_FIELDS_BYTES,
  LogFlag,
  decodeEntry,
  decodeSuper,
  isMalformedEntry,
  payloadBytes,
  type LogEntryHeader,
} from "../../daemon/targets/log-writes/format.js";

/** A failure while reading the log; the message is the C replay-log's wording. */
export class LogReadError extends Error {
  override readonly name = "LogReadError";
}

export interface ReadEntry {
  readonly index: number;
  readonly header: LogEntryHeader;
  /** Byte offset of the header block in the log. */
  readonly headerPos: number;
  /** Byte offset of the payload (= the position just after the header). */
  readonly dataPos: number;
  /** Payload length in bytes (0 for flush, mark and discard entries). */
  readonly dataBytes: number;
  /** Byte offset just after the entry (header + payload). */
  readonly endPos: number;
  /**
   * MARK entries: the data_len + 1 header bytes replay-log compares a mark name with (the text and the byte after
   * it; bytes past the header block read as NUL).
   */
  readonly markBytes?: Buffer;
}

/**
 * Sequential reader of a dm-log-writes log (file or block device): the super block, then `nr_entries` entries
 * from byte sectorsize, each checked as the xfstests replay-log checks it.
 */
export class LogReader {
  /** Index of the next entry to read. */
  curEntry = 0;
  /** Byte offset of the next entry's header. */
  curPos: number;
  private readonly headerBuf: Buffer;

  private constructor(
    private readonly fd: number,
    readonly sectorSize: number,
    readonly nrEntries: number,
  ) {
    this.curPos = sectorSize;
    this.headerBuf = Buffer.alloc(sectorSize);
  }

  /** `entries` overrides the super block's nr_entries (to inspect entries a crash left uncounted). */
  static open(path: string, opts: { entries?: number } = {}): LogReader {
    let fd: number;
    try {
      fd = fs.openSync(path, "r");
    } catch (err) {
      throw new LogReadError(`Couldn't open log ${path}: ${(err as Error).message}`);
    }
    try {
      const buf = Buffer.alloc(ENTRY_FIELDS_BYTES);
      if (fs.readSync(fd, buf, 0, buf.length, 0) < buf.length) throw new LogReadError("Error reading super");
      const sup = decodeSuper(buf);
      return new LogReader(fd, sup.sectorSize, opts.entries ?? sup.nrEntries);
    } catch (err) {
      fs.closeSync(fd);
      throw err instanceof LogReadError ? err : new LogReadError((err as Error).message);
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** The next entry's header (advancing past its payload), or undefined after the last of nr_entries. */
  next(): ReadEntry | undefined {
    if (this.curEntry >= this.nrEntries) return undefined;
    const n = fs.readSync(this.fd, this.headerBuf, 0, this.sectorSize, this.curPos);
    if (n !== this.sectorSize) throw new LogReadError(`Error reading entry ${this.curEntry}: short read at byte ${this.curPos}`);
    let header: LogEntryHeader;
    try {
      header = decodeEntry(this.headerBuf);
    } catch (err) {
      throw new LogReadError(`Malformed entry @${this.curPos / this.sectorSize}: ${(err as Error).message}`);
    }
    if (isMalformedEntry(this.headerBuf, header)) throw new LogReadError(`Malformed entry @${this.curPos / this.sectorSize}`);
    const dataBytes = payloadBytes(header, this.sectorSize);
    const e: ReadEntry = {
      index: this.curEntry,
      header,
      headerPos: this.curPos,
      dataPos: this.curPos + this.sectorSize,
      dataBytes,
      endPos: this.curPos + this.sectorSize + dataBytes,
      markBytes: header.flags & LogFlag.MARK ? this.markBytes(header.dataLen) : undefined,
    };
    this.curEntry++;
    this.curPos = e.endPos;
    return e;
  }

  private markBytes(dataLen: number): Buffer {
    const n = Math.min(dataLen + 1, this.sectorSize + 1 - ENTRY_FIELDS_BYTES);
    const b = Buffer.alloc(n);
    this.headerBuf.copy(b, 0, ENTRY_FIELDS_BYTES, ENTRY_FIELDS_BYTES + n);
    return b;
  }

  /** Position at entry `n` (0-based); fails with "Invalid entry number" when n >= nr_entries, as replay-log does. */
  seekEntry(n: number, onSkip?: (e: ReadEntry) => void): void {
    if (n >= this.nrEntries) throw new LogReadError("Invalid entry number");
    this.curEntry = 0;
    this.curPos = this.sectorSize;
    for (let i = 0; i < n; i++) onSkip?.(this.next()!);
  }

  /** Read `len` bytes of payload at byte `pos` into `buf` (which must be at least `len` long). */
  readData(pos: number, buf: Buffer, len: number): void {
    let done = 0;
    while (done < len) {
      const n = fs.readSync(this.fd, buf, done, len - done, pos + done);
      if (n === 0) throw new LogReadError(`Error reading data: log ends at byte ${pos + done}`);
      done += n;
    }
  }
}

/** Does `e` stop a run with these stop flags (and, when MARK is among them, this mark name)? */
export function shouldStop(e: ReadEntry, stopFlags: number, mark: Buffer | undefined): boolean {
  const flags = e.header.flags;
  if (!(flags & stopFlags)) return false;
  if (!(stopFlags & LogFlag.MARK)) return true;
  return (flags & LogFlag.MARK) !== 0 && mark !== undefined && e.markBytes !== undefined && strncmpEqual(mark, e.markBytes);
}

/**
 * strncmp(name, text, text.length) === 0 for a C string `name` (no NUL inside): the xfstests match, which compares
 * data_len + 1 bytes so that a text followed by its NUL matches exactly that name, a text with an embedded NUL
 * matches up to it, and a text not NUL-terminated matches every name that starts with it plus the next byte.
 */
export function strncmpEqual(name: Buffer, text: Buffer): boolean {
  for (let i = 0; i < text.length; i++) {
    const a = name[i] ?? 0;
    if (a !== text[i]) return false;
    if (a === 0) return true;
  }
  return true;
}
