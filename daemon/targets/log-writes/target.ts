import type { DestroyOptions, Target, TargetContext } from "../target.js";
import type { Bio } from "../../io/bio.js";
import type { BlockDevice } from "../../io/block-device.js";
import { dataRun, type AllocationRun } from "../../io/allocation.js";
import { sharedPool } from "../../io/buffer-pool.js";
import { DmError } from "../../core/errors.js";
import { SECTOR_SIZE, type Sector } from "../../core/units.js";
import { END_MARK, LogFlag, LogFormatError, RESTART_MARK, decodeEntry, decodeSuper, encodeEntry, encodeEntryInto, encodeSuper, isMalformedEntry, logBlocks, markEntry, maxMarkLength, payloadBytes, type LogEntryHeader } from "./format.js";

/**
 * dm-log-writes runtime semantics (kernel drivers/md/dm-log-writes.c, target 1.1.0):
 *
 * - Every write-like bio gets a pending block at submit time (data copied then). On completion a plain write or
 *   discard joins the "unflushed" list (completion order); a FUA write goes straight to the logging queue; an
 *   empty flush takes the unflushed list *at submit time* and, on completion, queues that batch followed by
 *   itself. So W1,W2,W3,C3,C2,Wflush,C1,Cflush logs W3,W2,flush and W1 waits for the next flush.
 * - Marks (message `mark <text>`) are queued at once; removal queues the remaining unflushed writes and the mark
 *   `dm-log-writes-end`. A daemon shutdown queues the unflushed writes and rewrites the super, without the end
 *   mark (the device comes back on the next start and continues the log, beginning with the mark `tsdm-restart`).
 * - One logger drains the queue FIFO: it allocates the entry's place (header block + payload), writes it, and
 *   after a FUA or MARK entry rewrites the super block with the number of entries so far.
 * - When an entry would reach the end of the log device, or a log write fails, logging stops for good
 *   ("logging_disabled"); I/O then passes through unlogged.
 *
 * Consequences kept from the kernel: a FUA write is logged ahead of earlier, still unflushed writes, so if it
 * overwrites one of them a full replay ends with the older data; unflushed payloads are held in memory until
 * the next flush (or removal).
 *
 * Durability (stronger than the kernel, which issues plain log writes): before a super block update the log
 * device is flushed, and the super itself is written FUA, so nr_entries never counts an entry that is not on
 * stable storage, and every FUA entry and mark is durable once its super is.
 */

/** Log entry writes in flight at once (the logger's queue depth on the log device). */
const MAX_INFLIGHT_WRITES = 16;
/** Entries with at most this much payload are written with their header in one request. */
const COALESCE_BYTES = 64 << 10;
/** Consecutive queued entries (contiguous in the log) go out as one write of up to this many bytes. */
const BATCH_BYTES = 1 << 20;
/**
 * Write-zeroes is logged as zero writes of at most this many bytes, one entry each, as the kernel's block layer
 * turns it into zero-page bios of up to 256 pages (dm-log-writes does not take REQ_OP_WRITE_ZEROES). A multiple
 * of every log sector size the target allows.
 */
const ZERO_CHUNK_BYTES = 1 << 20;
/**
 * Memory bounds (the kernel has none: it holds every unflushed write's pages until a flush comes, and queues
 * entries as fast as bios complete). Payload copies the target holds (writes in flight to the data device,
 * held for a flush, or queued for the log device) are bounded by MAX_PENDING_BYTES: beyond it new writes wait
 * before they are submitted, so a log device that falls behind slows writers down. Beyond MAX_HELD_BYTES of
 * completed, unflushed writes, they are logged early, in completion order, as the next flush would have
 * logged them: still before that flush's entry, only possibly ahead of a later FUA write or mark. (Held is
 * part of pending and smaller than it, so waiting writers always get room: the logger drains the rest.)
 */
const MAX_HELD_BYTES = 256 << 20;
const MAX_PENDING_BYTES = 512 << 20;
/** The payload of every write-zeroes entry (views of it): never written to. */
const ZEROES = Buffer.alloc(ZERO_CHUNK_BYTES);

/** A write-like request on its way to the log. */
interface PendingBlock {
  readonly header: LogEntryHeader;
  /** The payload (copied at submit time); absent for flush, discard and mark entries. */
  readonly data?: Buffer;
  /**
   * A write's copy: a pooled buffer holding a header's room and then `data`, so that the entry goes to the log
   * as one contiguous write with no further copy, and the buffer goes back to the pool after.
   */
  readonly frame?: Buffer;
  /** Bytes of `data` this block owns (0 for the shared zero buffer), counted in pendingBytes. */
  readonly charge?: number;
}

export interface LogWritesConfig {
  readonly dev: BlockDevice;
  readonly logDev: BlockDevice;
  /** Log unit in bytes: the data device's logical block size, or the table's log_sector_size option. */
  readonly sectorSize: number;
  /** The table gave log_sector_size (shown again in the table line). */
  readonly explicitSectorSize: boolean;
  /** The target's start in the table: like the kernel, bios keep their device-absolute sector on the data device. */
  readonly start: Sector;
  readonly ctx: TargetContext;
  /** A read-only table never writes to the log (not even the end mark). */
  readonly readOnly: boolean;
  /** Memory bounds (default MAX_HELD_BYTES / MAX_PENDING_BYTES; held must be below pending); tests set small ones. */
  readonly memory?: { readonly heldBytes: number; readonly pendingBytes: number };
  /**
   * Brought back by a daemon restart: the first resume continues the log on the log device (up to its last super
   * update) instead of starting over on top of it, which would destroy the record of the writes before the
   * crash, and logs RESTART_MARK before any I/O (a log without a valid super yet is started anew). Where the log
   * ends is read at that resume, not here: a restored inactive table resumes after the live one has gone on
   * logging to the same device and ended its log. After a kill -9, writes that reached the
   * data device but were not logged yet (unflushed ones) are missing from the log; the mark shows where.
   */
  readonly restored?: boolean;
}

export class LogWritesTarget implements Target {
  private readonly dev: BlockDevice;
  private readonly logDev: BlockDevice;
  private readonly sectorSize: number;
  private readonly explicitSectorSize: boolean;
  /** 512-byte sectors per log unit. */
  private readonly unitSectors: number;
  private readonly start: Sector;
  private readonly ctx: TargetContext;
  /** Size of the log device in 512-byte sectors (the kernel's end_sector). */
  private readonly logEnd: number;
  private readonly readOnly: boolean;
  private readonly maxHeldBytes: number;
  private readonly maxPendingBytes: number;

  private loggingEnabled = true;
  /** Where the next entry goes, in 512-byte sectors of the log device (starts after the super block). */
  private nextSector: number;
  private loggedEntries = 0;
  /** Completed plain writes and discards not yet covered by a completed flush, in completion order. */
  private unflushed: PendingBlock[] = [];
  /** Payload bytes in `unflushed`. */
  private heldBytes = 0;
  private warnedHeld = false;
  /** Blocks ready to be written to the log, in order. */
  private readonly queue = new Fifo<PendingBlock>();
  /** Payload copies held by this target (see MAX_PENDING_BYTES), and writers waiting for room. */
  private pendingBytes = 0;
  private roomWaiters: (() => void)[] = [];
  private logger: Promise<void> | undefined;
  /** Entry writes submitted to the log device and not yet complete. */
  private readonly inflightWrites = new Set<Promise<void>>();
  private readonly idleWaiters: (() => void)[] = [];
  private destroyed = false;
  /** See LogWritesConfig.restored. */
  private restartMarkDue: boolean;

  constructor(cfg: LogWritesConfig) {
    this.dev = cfg.dev;
    this.logDev = cfg.logDev;
    this.sectorSize = cfg.sectorSize;
    this.explicitSectorSize = cfg.explicitSectorSize;
    this.unitSectors = cfg.sectorSize / SECTOR_SIZE;
    this.start = cfg.start;
    this.ctx = cfg.ctx;
    this.logEnd = cfg.logDev.size;
    this.readOnly = cfg.readOnly;
    this.maxHeldBytes = cfg.memory?.heldBytes ?? MAX_HELD_BYTES;
    this.maxPendingBytes = cfg.memory?.pendingBytes ?? MAX_PENDING_BYTES;
    if (this.maxHeldBytes >= this.maxPendingBytes) throw new RangeError("log-writes: held bytes must stay below pending bytes");
    this.nextSector = this.unitSectors;
    this.restartMarkDue = (cfg.restored ?? false) && !cfg.readOnly;
  }

  get logicalBlockSize(): number {
    return Math.max(this.dev.logicalBlockSize, this.sectorSize);
  }

  devices(): readonly BlockDevice[] {
    return [this.dev, this.logDev];
  }

  /** Reads come from the data device, so its holes are the device's (block status). */
  allocation(sector: Sector, count: Sector): AllocationRun[] | Promise<AllocationRun[]> {
    return this.dev.allocation ? this.dev.allocation((sector + this.start) as Sector, count) : [dataRun(count)];
  }

  // ---- I/O ----

  async map(bio: Bio): Promise<void> {
    const sector = (bio.sector + this.start) as Sector;
    const down: Bio = { ...bio, sector: bio.op === "flush" ? bio.sector : sector };
    if (!this.loggingEnabled || bio.op === "read") return this.dev.submit(down);
    if (bio.op === "flush") {
      // An empty PREFLUSH owns every write that completed before it was submitted.
      const batch = this.takeUnflushed();
      const block = this.block(0, 0, LogFlag.FLUSH);
      try {
        await this.dev.submit(down);
      } finally {
        batch.push(block);
        this.enqueue(batch);
      }
      return;
    }
    if (bio.count === 0) return this.dev.submit(down);
    if (sector % this.unitSectors !== 0 || bio.count % this.unitSectors !== 0) {
      throw new DmError("EINVAL", `log-writes: I/O at sector ${sector} length ${bio.count} is not aligned to the ${this.sectorSize}-byte log sector size`);
    }
    if (bio.op === "write") {
      while (this.pendingBytes >= this.maxPendingBytes) await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
      this.pendingBytes += bio.data!.length;
    }
    const fua = bio.fua ? LogFlag.FUA : 0;
    const blocks: PendingBlock[] =
      bio.op === "write_zeroes"
        ? this.zeroBlocks(sector, bio.count, fua)
        : bio.op === "discard"
          ? [this.block(sector, bio.count, fua | LogFlag.DISCARD)]
          : [this.copiedWrite(sector, bio.count, fua, bio.data!)];
    try {
      await this.dev.submit(down);
    } catch (err) {
      // A data device without discard: the kernel completes the discard at once and logs it all the same.
      const unsupportedDiscard = bio.op === "discard" && isNotSupported(err);
      for (const b of blocks) this.completed(b); // failed writes are logged too: the kernel's end_io does not look at the status
      if (!unsupportedDiscard) throw err;
      return;
    }
    for (const b of blocks) this.completed(b);
  }

  /** The entry header of an I/O at `sector` (512-byte units) of `count` sectors, in log units. */
  private header(sector: number, count: number, flags: number): LogEntryHeader {
    return { sector: logBlocks(sector / this.unitSectors), nrSectors: logBlocks(count / this.unitSectors), flags, dataLen: 0 };
  }

  private block(sector: number, count: number, flags: number, data?: Buffer): PendingBlock {
    return { header: this.header(sector, count, flags), data };
  }

  /** A write, its payload copied at submit time as the kernel does, behind room for its header. */
  private copiedWrite(sector: number, count: number, flags: number, data: Buffer): PendingBlock {
    const frame = sharedPool.get(this.sectorSize + data.length);
    data.copy(frame, this.sectorSize);
    return { header: this.header(sector, count, flags), data: frame.subarray(this.sectorSize, this.sectorSize + data.length), frame, charge: data.length };
  }

  /** The zero writes the kernel would see for a write-zeroes: ZERO_CHUNK_BYTES each, in ascending order, sharing ZEROES. */
  private zeroBlocks(sector: number, count: number, flags: number): PendingBlock[] {
    const chunk = ZERO_CHUNK_BYTES / SECTOR_SIZE;
    const blocks: PendingBlock[] = [];
    for (let done = 0; done < count; done += chunk) {
      const n = Math.min(chunk, count - done);
      blocks.push(this.block(sector + done, n, flags, ZEROES.subarray(0, n * SECTOR_SIZE)));
    }
    return blocks;
  }

  /** end_io for a write or discard. */
  private completed(block: PendingBlock): void {
    if (block.header.flags & LogFlag.FUA) return this.enqueue([block]);
    this.unflushed.push(block);
    this.heldBytes += block.charge ?? 0;
    if (this.heldBytes > this.maxHeldBytes) {
      if (!this.warnedHeld) {
        this.warnedHeld = true;
        this.ctx.log("warn", `more than ${this.maxHeldBytes} bytes of writes without a flush: logging them before the flush comes`);
      }
      this.enqueue(this.takeUnflushed());
    }
  }

  private takeUnflushed(): PendingBlock[] {
    const batch = this.unflushed;
    this.unflushed = [];
    this.heldBytes = 0;
    return batch;
  }

  // ---- status / messages ----

  status(type: "info" | "table"): string {
    if (type === "table") return `${this.dev.label} ${this.logDev.label}${this.explicitSectorSize ? ` 2 log_sector_size ${this.sectorSize}` : ""}`;
    return `${this.loggedEntries} ${this.nextSector - 1}${this.loggingEnabled ? "" : " logging_disabled"}`;
  }

  async message(argv: readonly string[]): Promise<void> {
    if (argv.length !== 2) throw new DmError("EINVAL", `Invalid log-writes message arguments, expect 2 arguments, got ${argv.length}`);
    if (argv[0]!.toLowerCase() !== "mark") throw new DmError("EINVAL", `Unrecognised log writes target message received: ${argv[0]}`);
    this.mark(argv[1]!);
  }

  /** Queue a mark; like the kernel, longer text is cut to sectorsize - 33 bytes and the write is asynchronous. */
  private mark(text: string): void {
    let bytes = Buffer.from(text, "utf8");
    const nul = bytes.indexOf(0);
    if (nul >= 0) bytes = bytes.subarray(0, nul);
    this.enqueue([{ header: markEntry(Buffer.from(bytes.subarray(0, maxMarkLength(this.sectorSize)))) }]);
  }

  // ---- the logger ----

  /** Append to the logging queue (a loop, not push(...blocks): a flush batch can hold very many writes). */
  private enqueue(blocks: readonly PendingBlock[]): void {
    for (const b of blocks) this.queue.push(b);
    if (!this.logger && this.queue.length > 0) {
      this.logger = this.drain().finally(() => {
        this.logger = undefined;
        if (this.queue.length > 0) this.enqueue([]);
        else for (const w of this.idleWaiters.splice(0)) w();
      });
    }
  }

  private async drain(): Promise<void> {
    for (let batch = this.takeBatch(); batch.length > 0; batch = this.takeBatch()) await this.logBatch(batch);
    await this.settleWrites();
  }

  /**
   * The next entries to place together: consecutive in the queue, so contiguous in the log, up to BATCH_BYTES,
   * and ending at the first FUA or MARK entry (whose super update must follow it).
   */
  private takeBatch(): PendingBlock[] {
    const batch: PendingBlock[] = [];
    let bytes = 0;
    for (let next = this.queue.peek(); next; next = this.queue.peek()) {
      const size = this.sectorSize + (next.data?.length ?? 0);
      if (batch.length > 0 && bytes + size > BATCH_BYTES) break;
      batch.push(this.queue.shift()!);
      bytes += size;
      this.pendingBytes -= next.charge ?? 0; // from here the log write owns the payload (bounded: MAX_INFLIGHT_WRITES)
      if (next.header.flags & (LogFlag.FUA | LogFlag.MARK)) break;
    }
    if (this.pendingBytes < this.maxPendingBytes) for (const w of this.roomWaiters.splice(0)) w();
    return batch;
  }

  /**
   * Place a batch of entries. Their places are allocated in order and written as one request where they are
   * small (pipelined: up to MAX_INFLIGHT_WRITES requests in flight, landing in any order); after a FUA or MARK
   * entry every earlier write is waited for, then the super block is updated.
   */
  private async logBatch(batch: readonly PendingBlock[]): Promise<void> {
    if (!this.loggingEnabled) return; // dropped, as the kernel frees blocks once logging is off
    const start = this.nextSector;
    const parts: Buffer[] = [];
    let fitted = 0;
    for (const block of batch) {
      const next = this.nextSector + this.unitSectors + (block.header.flags & LogFlag.DISCARD ? 0 : block.header.nrSectors * this.unitSectors);
      this.nextSector = next; // advanced even for the entry that does not fit, as the kernel's status shows
      if (next >= this.logEnd) break;
      this.loggedEntries++;
      fitted++;
      if (block.frame) {
        parts.push(encodeEntryInto(block.frame, block.header, this.sectorSize).subarray(0, this.sectorSize + block.data!.length));
        continue;
      }
      parts.push(encodeEntry(block.header, this.sectorSize));
      if (block.data && block.data.length > 0) parts.push(block.data);
    }
    if (parts.length > 0) {
      const write = this.writeParts(start, parts)
        .catch((err: unknown) => this.disable(`Error writing to the log device: ${errorText(err)}`))
        .finally(() => {
          for (const b of batch) if (b.frame) sharedPool.put(b.frame);
        });
      this.inflightWrites.add(write);
      void write.finally(() => this.inflightWrites.delete(write));
      if (this.inflightWrites.size >= MAX_INFLIGHT_WRITES) await Promise.race(this.inflightWrites);
    }
    if (fitted < batch.length) {
      // An entry did not fit: the ones before it stay logged, it and everything after are dropped.
      this.disable("Ran out of space on the logdev");
      return;
    }
    if (batch[batch.length - 1]!.header.flags & (LogFlag.FUA | LogFlag.MARK)) {
      await this.settleWrites();
      if (!this.loggingEnabled) return; // never count entries past a failed write
      const count = this.loggedEntries;
      await this.writeSuper(count).catch((err: unknown) => this.disable(`Error writing the log super block: ${errorText(err)}`));
    }
  }

  /** Write consecutive log pieces starting at `sector`: small ones gathered into one request, large payloads as they are. */
  private async writeParts(sector: number, parts: readonly Buffer[]): Promise<void> {
    const writes: Promise<void>[] = [];
    let run: Buffer[] = [];
    let runStart = sector;
    let pos = sector;
    const flushRun = (): void => {
      if (run.length === 0) return;
      writes.push(this.logWrite(runStart, run.length === 1 ? run[0]! : Buffer.concat(run)));
      run = [];
    };
    for (const p of parts) {
      if (p.length > COALESCE_BYTES) {
        flushRun();
        writes.push(this.logWrite(pos, p)); // large payloads are not copied again
      } else {
        if (run.length === 0) runStart = pos;
        run.push(p);
      }
      pos += p.length / SECTOR_SIZE;
    }
    flushRun();
    await Promise.all(writes);
  }

  private async settleWrites(): Promise<void> {
    while (this.inflightWrites.size > 0) await Promise.all(this.inflightWrites);
  }

  private async writeSuper(nrEntries: number): Promise<void> {
    await this.logDev.submit({ op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false });
    const buf = encodeSuper({ nrEntries, sectorSize: this.sectorSize });
    await this.logDev.submit({ op: "write", sector: 0 as Sector, count: (buf.length / SECTOR_SIZE) as Sector, data: buf, fua: true });
  }

  private logWrite(sector: number, data: Buffer): Promise<void> {
    return this.logDev.submit({ op: "write", sector: sector as Sector, count: (data.length / SECTOR_SIZE) as Sector, data, fua: false });
  }

  private disable(reason: string): void {
    if (!this.loggingEnabled) return;
    this.loggingEnabled = false;
    this.ctx.log("error", reason, { loggedEntries: this.loggedEntries });
  }

  private idle(): Promise<void> {
    if (!this.logger && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * After in-flight I/O has drained, let the logger write out what is queued: a suspended device's log holds
   * every entry that was ready, so status and a copy of the log taken while suspended agree (the kernel does
   * not wait here, but nothing on disk depends on its timing).
   */
  async postsuspend(): Promise<void> {
    await this.idle();
  }

  /** Before held and new I/O flow: queued ahead of every bio of this table. */
  async resume(): Promise<void> {
    if (!this.restartMarkDue) return;
    this.restartMarkDue = false;
    const at = await findLogEnd(this.logDev, this.sectorSize);
    if (at) {
      // Nothing of this table is logged yet: its bios are held until this resume returns.
      this.loggedEntries = at.entries;
      this.nextSector = at.nextSector;
      this.ctx.log("info", "continuing the existing log", { entries: at.entries, nextSector: at.nextSector });
    }
    this.mark(RESTART_MARK);
  }

  // ---- teardown ----

  /**
   * dtr: queue the unflushed writes, then the end mark (which writes the super). The kernel splices them at the
   * head of the logging queue; when the logger still has a backlog that would put them before FUA entries and
   * marks that completed earlier, so tsdm appends them at the tail, keeping the log in completion order.
   * On a daemon shutdown the table lives on (restored on the next start), so instead of the end mark the super
   * is rewritten to count every entry, and the restored table continues right after them.
   */
  async destroy(opts?: DestroyOptions): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.enqueue(this.takeUnflushed());
    if (this.readOnly) return this.idle();
    if (!opts?.shutdown) {
      this.mark(END_MARK);
      return this.idle();
    }
    await this.idle();
    // Nothing logged by anyone: leave sector 0 alone, as the kernel does until the first FUA or mark.
    if (!this.loggingEnabled || this.loggedEntries === 0) return;
    await this.writeSuper(this.loggedEntries).catch((err: unknown) => this.disable(`Error writing the log super block: ${errorText(err)}`));
  }
}

/** A FIFO with O(1) shift (Array.prototype.shift is O(n), and a flush batch can hold very many writes). */
class Fifo<T> {
  private items: T[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(item: T): void {
    this.items.push(item);
  }
  peek(): T | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head]!;
    this.items[this.head++] = undefined as T; // drop the reference (payloads can be large)
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

function isNotSupported(err: unknown): boolean {
  if (err instanceof DmError) return err.errno === "EOPNOTSUPP";
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "EOPNOTSUPP" || code === "ENOTSUP" || code === "ENOTTY";
}

/**
 * Where an existing log on `logDev` ends: the number of entries its super block counts and the sector after the
 * last of them. Undefined when there is no valid log in this sector size (nothing to continue).
 */
async function findLogEnd(logDev: BlockDevice, sectorSize: number): Promise<{ entries: number; nextSector: number } | undefined> {
  const unit = sectorSize / SECTOR_SIZE;
  const read = async (sector: number): Promise<Buffer> => {
    const data = Buffer.alloc(sectorSize);
    await logDev.submit({ op: "read", sector: sector as Sector, count: unit as Sector, data, fua: false });
    return data;
  };
  let sup;
  try {
    sup = decodeSuper(await read(0));
  } catch (err) {
    if (err instanceof LogFormatError) return undefined;
    throw err;
  }
  if (sup.sectorSize !== sectorSize) return undefined;
  let pos = unit;
  for (let i = 0; i < sup.nrEntries; i++) {
    if (pos + unit > logDev.size) return undefined;
    const block = await read(pos);
    const e = decodeEntry(block);
    if (isMalformedEntry(block, e)) return undefined;
    pos += unit + payloadBytes(e, sectorSize) / SECTOR_SIZE;
  }
  return { entries: sup.nrEntries, nextSector: pos };
}
