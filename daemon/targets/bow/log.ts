import type { BlockDevice } from "../../io/block-device.js";
import { DmError } from "../../core/errors.js";
import type { Sector } from "../../core/units.js";
import { HEADER_SIZE, HEADER_VERSION, MAGIC_BOW, crc32Raw, encodeEntry, encodeHeader, logCapacity, type LogEntry, type LogHeader } from "./format.js";
import type { FlushCoalescer } from "./flusher.js";

/**
 * The live log sector (block 0 of the lower device) while bow is in state 1.
 *
 * Appends are group-committed: entries queued while block 0 is being written go out together in the next
 * write, and every append resolves only once block 0 holding it is durable (written, then flushed).
 * When the next entry does not fit, the full log sector is first copied to a reserved block Y (durable
 * before block 0 changes), and the log restarts with sequence+1 and entry 0 = {0, Y, block_size, crc}.
 *
 * Rollover blocks are reserved when entries are planned, never when they are appended, so an append cannot
 * run out of space: `reserve(k)` tells how many more blocks k further entries need, and the pool always holds
 * exactly rolloversFor(count, pending) blocks.
 */
export class BowLog {
  private readonly buf: Buffer;
  private readonly header: LogHeader;
  private readonly capacity: number;
  private pending = 0;
  private readonly pool: number[] = [];
  private queue: { entries: LogEntry[]; sector0?: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private writing = false;
  /** Set when a log write failed: the on-disk log is no longer known, every later append fails. */
  broken: Error | undefined;

  constructor(
    private readonly dev: BlockDevice,
    private readonly blockSize: number,
    private readonly flusher: FlushCoalescer,
    /** A reserved rollover block has been written and may now be backed up like any other. */
    private readonly onRolloverUsed: (block: number) => void,
    sector0: number,
  ) {
    this.buf = Buffer.alloc(blockSize);
    this.capacity = logCapacity(blockSize);
    this.header = { magic: MAGIC_BOW, headerVersion: HEADER_VERSION, headerSize: HEADER_SIZE, blockSize, count: 0, sequence: 0, sector0 };
  }

  get sequence(): number {
    return this.header.sequence;
  }
  get count(): number {
    return this.header.count;
  }
  get sector0(): number {
    return this.header.sector0;
  }

  /** Rollovers needed to append `k` entries after `pending` ones already promised. */
  private rolloversFor(pending: number): number {
    const room = this.capacity - this.header.count;
    if (pending <= room) return 0;
    // Each new log sector holds entry 0 (the previous sector) plus capacity-1 new entries.
    return 1 + Math.floor((pending - room - 1) / (this.capacity - 1));
  }

  /** Blocks that must be added to the pool before `k` more entries may be planned. */
  blocksNeededFor(k: number): number {
    return this.rolloversFor(this.pending + k) - this.pool.length;
  }

  /** Promise `k` entries, with the rollover blocks blocksNeededFor(k) asked for. */
  reserve(k: number, blocks: number[]): void {
    if (blocks.length !== this.blocksNeededFor(k)) throw new Error("bow: rollover reservation out of step");
    this.pending += k;
    this.pool.push(...blocks);
  }

  /** Withdraw `k` promised entries (their bio failed before logging); returns the rollover blocks now surplus. */
  cancel(k: number): number[] {
    this.pending -= k;
    const surplus = this.pool.length - this.rolloversFor(this.pending);
    return surplus > 0 ? this.pool.splice(this.pool.length - surplus) : [];
  }

  /** The initial log sector: entry 0 = the backup of the original block 0. Written by the caller. */
  initialSector(entry0: LogEntry): Buffer {
    this.header.count = 0;
    this.add(entry0);
    return this.snapshot();
  }

  /**
   * Append promised entries (and, when sector 0's live copy moves, its new sector); resolves when block 0
   * with them is durable.
   */
  append(entries: LogEntry[], sector0?: number): Promise<void> {
    if (this.broken) return Promise.reject(new DmError("EIO", `bow: log unusable after an earlier error: ${this.broken.message}`));
    return new Promise((resolve, reject) => {
      this.queue.push({ entries, sector0, resolve, reject });
      void this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0);
        const used: number[] = [];
        try {
          if (this.broken) throw this.broken;
          for (const req of batch) {
            for (const e of req.entries) {
              if (this.header.count === this.capacity) used.push(await this.rollover());
              this.add(e);
              this.pending--;
            }
            if (req.sector0 !== undefined) this.header.sector0 = req.sector0;
          }
          await this.writeBlock0(this.snapshot());
          await this.flusher.flush();
          for (const b of used) this.onRolloverUsed(b);
          for (const req of batch) req.resolve();
        } catch (err) {
          this.broken ??= err instanceof Error ? err : new Error(String(err));
          const e = new DmError("EIO", `bow: log write failed: ${this.broken.message}`);
          for (const req of batch) req.reject(e);
        }
      }
    } finally {
      this.writing = false;
    }
  }

  /**
   * Copy the full log sector to a reserved block and start the next sequence with it as entry 0. The
   * in-memory switch happens at once (so reservations made meanwhile see a consistent count and pool);
   * the copy is durable before the caller writes block 0.
   */
  private async rollover(): Promise<number> {
    const y = this.pool.shift();
    if (y === undefined) throw new Error("bow: log rollover without a reserved block");
    const copy = this.snapshot();
    const spb = this.blockSize / 512;
    this.header.count = 0;
    this.header.sequence++;
    this.add({ source: 0, dest: y * spb, size: this.blockSize, checksum: crc32Raw(0, copy) });
    await this.dev.submit({ op: "write", sector: (y * spb) as Sector, count: spb as Sector, data: copy, fua: false });
    await this.flusher.flush();
    return y;
  }

  private add(e: LogEntry): void {
    encodeEntry(e, this.buf, this.header.count);
    this.header.count++;
  }

  private snapshot(): Buffer {
    encodeHeader(this.header, this.buf);
    return Buffer.from(this.buf);
  }

  private writeBlock0(data: Buffer): Promise<void> {
    return this.dev.submit({ op: "write", sector: 0 as Sector, count: (this.blockSize / 512) as Sector, data, fua: false });
  }
}
