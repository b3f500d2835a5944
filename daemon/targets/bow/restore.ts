import {
  ENTRY_SIZE,
  HEADER_SIZE,
  MAGIC_BOW,
  MAGIC_WOB,
  checksumSeed,
  crc32Raw,
  decodeEntry,
  decodeHeader,
  type LogEntry,
  type LogHeader,
} from "./format.js";
import { Relocations } from "./relocations.js";
import type { RawDevice } from "./raw-device.js";

/**
 * vold's cp_restoreCheckpoint, on the raw lower device (no dm-bow above it):
 *
 * 1. Validation pass (skipped when block 0 says "WOB", i.e. an earlier restore was interrupted): walk the log
 *    sectors from the newest sequence down to 0, entries newest first, checking every header and every
 *    checksum, and "apply" each entry to a relocation overlay instead of the disk, so block 0 reads as the
 *    previous log sector once its entry 0 has been applied. Any failure: roll forward (copy the live block 0
 *    over block 0, which keeps the post-checkpoint state) and stop.
 * 2. Restore pass: the same walk for real. Before each entry's data is written, block 0 is rewritten as this
 *    log sector truncated to entries 0..i and marked WOB, and synced, so a crash at any point resumes at entry
 *    i, which is idempotent. Entry 0 of a sequence > 0 puts the previous log sector back at block 0 (marked
 *    WOB); entry 0 of sequence 0 puts back the original block 0, and the magic is gone.
 *
 * Checks beyond vold's: a block_size that is not a power of two from 512 to 64 KiB is refused with nothing
 * written (it would also size the roll-forward copy); entries whose source lies outside the device fail
 * validation (roll forward) instead of failing half-way through the restore.
 */
export type RestoreResult =
  | { kind: "no-magic"; magic: number }
  | { kind: "restored"; entries: number; bytes: number; resumed: boolean; sequence: number }
  | { kind: "limit"; entries: number }
  | { kind: "rolled-forward"; reason: string; sector0: number }
  | { kind: "checked"; valid: true; entries: number; bytes: number; sequence: number; blockSize: number }
  | { kind: "checked"; valid: false; reason: string; sector0: number }
  | { kind: "checked-resume"; sequence: number; count: number; blockSize: number };

export interface RestoreOptions {
  /**
   * Stop with kind "limit" after this many entries (vold's restore_limit; 0 or absent = no limit). A limit
   * reached at the very last entry is a finished restore (kind "restored"): nothing is left to resume.
   */
  limit?: number;
  /** Validate and report only; nothing is written. */
  dryRun?: boolean;
  /** Called after every restored entry. `total` is exact after validation, an upper bound when resuming. */
  onProgress?: (done: number, total: number) => void;
  /** Called once the pass is known: "validating", "restoring", "rolling-forward". */
  onPhase?: (phase: "validating" | "restoring" | "rolling-forward", header: LogHeader) => void;
}

/** A failure of the walk (validation failure, or a read error while restoring). */
export class RestoreError extends Error {
  override readonly name = "RestoreError";
}

const MAX_BLOCK_SIZE = 64 * 1024;

export async function restoreCheckpoint(dev: RawDevice, opts: RestoreOptions = {}): Promise<RestoreResult> {
  let validating = true;
  let resumed = false;
  let total = 0;
  let bytes = 0;
  for (;;) {
    const reloc = new Relocations();
    const orig = decodeHeader(await readOrThrow(dev, 0, HEADER_SIZE, "Cannot read sector"));
    if (orig.magic === MAGIC_WOB) {
      validating = false;
      resumed = true;
    } else if (orig.magic !== MAGIC_BOW) {
      return { kind: "no-magic", magic: orig.magic };
    }
    if (orig.blockSize < HEADER_SIZE) throw new RestoreError(`block_size ${orig.blockSize} in the log header is too small`);
    // Not in vold: a block size no kernel writes would also size the roll-forward copy (a corrupt 2 GiB would
    // overwrite the device's first 2 GiB), so refuse it outright and touch nothing.
    const bs = orig.blockSize;
    if (bs > MAX_BLOCK_SIZE || bs < 512 || (bs & (bs - 1)) !== 0) throw new RestoreError(`implausible block_size ${bs} in the log header`);
    if (!validating && opts.dryRun) {
      return { kind: "checked-resume", sequence: orig.sequence, count: orig.count, blockSize: orig.blockSize };
    }
    opts.onPhase?.(validating ? "validating" : "restoring", orig);
    if (!validating && resumed) total = Math.max(1, orig.count) + orig.sequence * Math.floor((orig.blockSize - HEADER_SIZE) / ENTRY_SIZE);
    const walk = new Walk(dev, orig, validating, reloc, opts, total);
    try {
      await walk.run();
    } catch (err) {
      if (err instanceof LimitReached) return { kind: "limit", entries: walk.restored };
      const reason = err instanceof Error ? err.message : String(err);
      if (!validating) throw new RestoreError(`restore failed (block 0 stays marked WOB; run again to resume): ${reason}`, { cause: err });
      if (opts.dryRun) return { kind: "checked", valid: false, reason, sector0: orig.sector0 };
      opts.onPhase?.("rolling-forward", orig);
      await rollForward(dev, orig);
      return { kind: "rolled-forward", reason, sector0: orig.sector0 };
    }
    if (!validating) return { kind: "restored", entries: walk.restored, bytes: walk.bytes, resumed, sequence: orig.sequence };
    total = walk.entries;
    bytes = walk.bytes;
    if (opts.dryRun) return { kind: "checked", valid: true, entries: total, bytes, sequence: orig.sequence, blockSize: orig.blockSize };
    validating = false;
  }
}

/** Validation failed: keep the post-checkpoint state by putting the live block 0 back. */
async function rollForward(dev: RawDevice, orig: LogHeader): Promise<void> {
  const live = await readOrThrow(dev, orig.sector0 * 512, orig.blockSize, "Cannot read the live copy of block 0");
  await dev.write(0, live);
  await dev.sync();
}

class LimitReached extends Error {}

class Walk {
  restored = 0;
  entries = 0;
  bytes = 0;

  constructor(
    private readonly dev: RawDevice,
    private readonly orig: LogHeader,
    private readonly validating: boolean,
    private readonly reloc: Relocations,
    private readonly opts: RestoreOptions,
    private total: number,
  ) {}

  async run(): Promise<void> {
    const bs = this.orig.blockSize;
    for (let seq = this.orig.sequence; seq >= 0; seq--) {
      const ls = await this.relocatedRead(0, bs, "Failed to read log sector");
      const h = decodeHeader(ls);
      const magicOk = h.magic === MAGIC_BOW || (h.magic === MAGIC_WOB && !this.validating);
      if (!magicOk) throw new RestoreError(`log sector ${seq}: bad magic 0x${h.magic.toString(16)}`);
      if (h.blockSize !== bs) throw new RestoreError(`log sector ${seq}: block size ${h.blockSize} differs from ${bs}`);
      if (h.sequence !== seq) throw new RestoreError(`Expecting log sector ${seq} but got ${h.sequence}`);
      if (h.headerSize < HEADER_SIZE || h.headerSize > bs) throw new RestoreError(`log sector ${seq}: bad header_size ${h.headerSize}`);
      if (h.count < 1 || h.count > Math.floor((bs - h.headerSize) / ENTRY_SIZE)) throw new RestoreError(`log sector ${seq}: bad count ${h.count}`);
      for (let i = h.count - 1; i >= 0; i--) {
        const e = decodeEntry(ls, h.headerSize, i);
        if (e.size < bs || bs + e.size > 0xffffffff) throw new RestoreError(`log sector ${seq} entry ${i}: log entry is invalid (size ${e.size})`);
        if (!Number.isSafeInteger(e.source) || e.source * 512 + e.size > this.dev.size) {
          throw new RestoreError(`log sector ${seq} entry ${i}: source sector ${e.source} is outside the device`);
        }
        const buf = await this.relocatedRead(e.dest, e.size, `log sector ${seq} entry ${i}: Failed to read sector ${e.dest}`);
        if (e.checksum !== 0) {
          let crc = checksumSeed(e.source, bs);
          for (let off = 0; off < buf.length; off += bs) crc = crc32Raw(crc, buf.subarray(off, Math.min(buf.length, off + bs)));
          if (crc !== e.checksum) {
            throw new RestoreError(`log sector ${seq} entry ${i}: Checksums don't match (0x${crc.toString(16)} != 0x${e.checksum.toString(16)})`);
          }
        }
        this.entries++;
        this.bytes += e.size;
        if (this.validating) this.reloc.relocate(e.source, e.dest, Math.ceil(e.size / 512));
        else await this.restoreEntry(ls, seq, i, e, buf);
      }
    }
  }

  /** vold's restoreSector: save progress (WOB, count = i+1), then write the old data back. */
  private async restoreEntry(ls: Buffer, seq: number, i: number, e: LogEntry, buf: Buffer): Promise<void> {
    await this.dev.sync();
    ls.writeUInt32LE(i + 1, 12);
    ls.writeUInt32LE(MAGIC_WOB, 0);
    await this.dev.write(0, ls);
    await this.dev.sync();
    // The previous log sector goes back to block 0 marked WOB: a crash from here on resumes without validating.
    if (i === 0 && seq !== 0 && buf.readUInt32LE(0) === MAGIC_BOW) buf.writeUInt32LE(MAGIC_WOB, 0);
    await this.dev.write(e.source * 512, buf);
    if (i === 0) await this.dev.sync();
    this.restored++;
    this.total = Math.max(this.total, this.restored);
    this.opts.onProgress?.(this.restored, this.total);
    // Entry 0 of sequence 0 put the original block 0 back: the restore is complete, whatever the limit says.
    const finished = seq === 0 && i === 0;
    if (this.opts.limit && this.restored >= this.opts.limit && !finished) {
      // Unlike vold (which redoes entry i on the next run), record that entry i is done, so that repeated
      // limited runs make progress. Entry 0 needs nothing: block 0 already holds the previous sector.
      if (i > 0) {
        await this.dev.sync();
        ls.writeUInt32LE(i, 12);
        await this.dev.write(0, ls);
        await this.dev.sync();
      }
      throw new LimitReached();
    }
  }

  /** Validating: each block through the relocation overlay; restoring: a plain read. */
  private async relocatedRead(sector: number, size: number, what: string): Promise<Buffer> {
    if (!this.validating) return readOrThrow(this.dev, sector * 512, size, what);
    const out = Buffer.alloc(size);
    const bs = this.orig.blockSize;
    for (let off = 0; off < size; off += bs) {
      const s = sector + (off / 512);
      const n = Math.min(bs, size - off);
      (await readOrThrow(this.dev, this.reloc.phys(s) * 512, n, what)).copy(out, off);
    }
    return out;
  }
}

async function readOrThrow(dev: RawDevice, pos: number, length: number, what: string): Promise<Buffer> {
  try {
    return await dev.read(pos, length);
  } catch (err) {
    throw new RestoreError(`${what}: ${(err as Error).message}`);
  }
}
