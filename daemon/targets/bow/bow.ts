import type { Bio } from "../../io/bio.js";
import type { BlockDevice } from "../../io/block-device.js";
import { DmError } from "../../core/errors.js";
import type { Sector } from "../../core/units.js";
import type { Target, TargetContext, TargetType } from "../target.js";
import { invalid } from "../args.js";
import { MAGIC_BOW, MAGIC_WOB, MAX_BLOCK_SIZE, MAX_ENTRY_BYTES, MIN_BLOCK_SIZE, checksumSeed, crc32Raw, isPowerOfTwo, type LogEntry } from "./format.js";
import { RangeMap, type RangeType } from "./range-map.js";
import { RangeLocks, type Interval, type LockHolder } from "./range-locks.js";
import { FlushCoalescer } from "./flusher.js";
import { BowLog } from "./log.js";
import { StateGate } from "./gate.js";
import { restoreCheckpoint, type RestoreResult } from "./restore.js";
import { BlockDeviceRaw } from "./block-device-raw.js";
import { ImageLock } from "./image-lock.js";
import { FileDevice } from "../../io/file-device.js";

/**
 * Android dm-bow 1.2.0 ("backup on write"): `bow <dev> [1 block_size:N]`.
 *
 * State 0 (trim): discards are recorded as free space and not passed down; writes "un-trim" what they touch.
 * State 1 (checkpoint): block 0 of <dev> holds the log; I/O to block 0 goes to its live copy elsewhere; before
 *   data that existed at the checkpoint is overwritten it is copied to free space and logged. Order on disk:
 *   backup data, then the log entry, then the new data, each made durable (flush) before the next.
 * State 2 (committed): block 0 gets its live contents back; from then on everything passes through.
 *
 * The kernel controls this through sysfs (`bow/state`, `bow/free`); tsdm through messages:
 *   message <dev> 0 state [0|1|2]   read or change the state (0→1→2 only; first character counts, like sysfs)
 *   message <dev> 0 free            bytes in free (trimmed, unused) ranges, exact
 *   message <dev> 0 ranges          the range map, in the kernel's table-status text
 * Status (info): `<state> <free_bytes> <block_size>`. Table: the table line.
 *
 * Unlike the kernel, bios need not be aligned to block_size: the map works in blocks, a bio touching part of
 * a block backs up the whole block, a discard frees only the blocks it covers completely, and I/O to any part
 * of block 0 is redirected sector by sector.
 */
export const bowTarget: TargetType = {
  name: "bow",
  version: [1, 2, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    if (args.length < 1) throw invalid("Invalid argument count");
    let blockSize: number | undefined;
    const features = args.slice(1);
    if (features.length > 0) {
      const n = features[0]!;
      if (!/^[0-9]+$/.test(n) || Number(n) > 1 || features.length !== Number(n) + 1) throw invalid("Invalid feature arguments");
      if (Number(n) === 1) {
        const m = /^block_size:([0-9]+)$/.exec(features[1]!);
        if (!m) throw invalid("Invalid feature arguments");
        const bs = Number(m[1]);
        if (!isPowerOfTwo(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE) throw invalid("Invalid block_size");
        blockSize = bs;
      }
    }
    if (ctx.readOnly) throw invalid("bow needs a writable device");
    const dev = await ctx.openDevice(args[0]!, "rw");
    blockSize ??= Math.max(MIN_BLOCK_SIZE, dev.logicalBlockSize);
    if (blockSize < dev.logicalBlockSize) throw invalid(`Invalid block_size: ${blockSize} is below the device's logical block size ${dev.logicalBlockSize}`);
    if (blockSize > MAX_BLOCK_SIZE) throw invalid(`Invalid block_size: device logical block size ${blockSize} is above ${MAX_BLOCK_SIZE}`);
    const spb = blockSize / 512;
    if (length % spb !== 0) throw invalid(`Target length ${length} is not a multiple of the block size (${spb} sectors)`);
    if (length > dev.size) throw invalid(`Device ${args[0]} too small for target: len=${length}, dev_size=${dev.size}`);
    // Before the log check: a restore started meanwhile must not run beside the one checkForLog may do.
    const lock = dev instanceof FileDevice && !dev.isBlockDevice ? ImageLock.shared(dev.path) : undefined;
    try {
      await checkForLog(ctx, dev, args[0]!, blockSize);
      return new BowTarget(ctx, dev, args.slice(), blockSize, length, lock);
    } catch (err) {
      lock?.release();
      throw err;
    }
  },
};

/**
 * A log still on the device means the last checkpoint was neither committed nor rolled back. When the daemon
 * brings a table back after a restart (kill -9 or clean), that restart is this device's reboot: like fs_mgr at
 * every boot, roll the checkpoint back (vold's restore) before serving I/O, since the range map that state 1
 * needs is gone and state-0 writes would overwrite the log. A table a user loads gets a warning only, as the
 * kernel does not look at all (Android restores before creating the device).
 */
async function checkForLog(ctx: TargetContext, dev: BlockDevice, name: string, blockSize: number): Promise<void> {
  const head = Buffer.alloc(blockSize);
  await dev.submit({ op: "read", sector: 0 as Sector, count: (blockSize / 512) as Sector, data: head, fua: false });
  const magic = head.readUInt32LE(0);
  if (magic !== MAGIC_BOW && magic !== MAGIC_WOB) return;
  const what = magic === MAGIC_BOW ? "an uncommitted checkpoint log (BOW)" : "an interrupted restore (WOB)";
  if (!ctx.restoring) {
    ctx.log("warn", `${name} carries ${what}: run 'tsdm bow-restore' on it before using it, or the checkpoint is lost`);
    return;
  }
  ctx.log("warn", `${name} carries ${what} after a restart: rolling the checkpoint back, as a reboot would`);
  let result: RestoreResult;
  try {
    result = await restoreCheckpoint(new BlockDeviceRaw(dev));
  } catch (err) {
    throw new DmError("EIO", `bow: rolling back the checkpoint on ${name} failed (run 'tsdm bow-restore' on it): ${(err as Error).message}`);
  }
  ctx.log("info", `checkpoint on ${name}: ${result.kind}`, { ...result });
}

export type BowState = 0 | 1 | 2;

/** One backup to do: `n` blocks from `src` to `dest`. */
interface Backup {
  src: number;
  dest: number;
  n: number;
  /** The source was the live copy of block 0: logged with checksum 0, and `dest` becomes the live copy. */
  sector0Current: boolean;
}

/** Everything a state-1 write changed in the map before its I/O, so a failure can put it back. */
interface Plan {
  holder: LockHolder;
  backups: Backup[];
  /** Previous types of the ranges the plan changed, in the order changed (undo runs backwards). */
  undo: { start: number; end: number; type: RangeType }[];
  rollovers: { block: number; holder: LockHolder }[];
}

const COPY_CHUNK = 1 << 20;

export class BowTarget implements Target {
  private state: BowState = 0;
  private readonly spb: number;
  private readonly blocks: number;
  readonly ranges: RangeMap;
  private readonly locks = new RangeLocks();
  private readonly flusher: FlushCoalescer;
  private readonly gate = new StateGate();
  private log: BowLog | undefined;
  /** Block holding the live contents of block 0 in state 1. */
  private sector0Block = 0;
  private readonly rolloverHolders = new Map<number, LockHolder>();

  constructor(
    private readonly ctx: TargetContext,
    private readonly dev: BlockDevice,
    private readonly args: string[],
    readonly blockSize: number,
    length: Sector,
    /** Keeps `tsdm bow-restore` off the image file while this target exists. */
    private readonly lock?: ImageLock,
  ) {
    this.spb = blockSize / 512;
    this.blocks = length / this.spb;
    this.ranges = new RangeMap(this.blocks);
    this.flusher = new FlushCoalescer(() => this.dev.submit({ op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false }));
  }

  get logicalBlockSize(): number {
    return this.blockSize; // io_hints: dm-bow raises the logical block size to block_size
  }

  get currentState(): BowState {
    return this.state;
  }

  get freeBytes(): number {
    return this.ranges.freeBlocks * this.blockSize;
  }

  devices(): readonly BlockDevice[] {
    return [this.dev];
  }

  // ---- I/O ----

  map(bio: Bio): Promise<void> {
    if (bio.op === "flush" || bio.count === 0) return this.dev.submit(bio); // F6: zero-length bios pass straight through
    if (this.state === 2) return this.dev.submit(bio);
    if (this.state === 1 && bio.op !== "read") return this.rewrite(bio) ?? this.gate.run(() => this.mapGated(bio));
    return this.gate.run(() => this.mapGated(bio));
  }

  /**
   * State 1, the common case once an update is under way: a write to blocks already changed (backed up before,
   * or free when the checkpoint was taken) needs no backup and no log entry. It goes straight down once nothing
   * holds or waits for its blocks (a backup of their old contents may still be reading them). It need not hold
   * them itself: a changed block is never a backup's source or destination, and block 0 and its live copy,
   * which move, always take the full path. Undefined: not this case, take the full path.
   */
  private rewrite(bio: Bio): Promise<void> | undefined {
    const a = Math.floor(bio.sector / this.spb);
    const b = Math.ceil((bio.sector + bio.count) / this.spb);
    if (a === 0 || (this.sector0Block >= a && this.sector0Block < b) || this.log?.broken) return undefined;
    if (this.ranges.anyOtherThan(a, b, "Changed") || !this.locks.isIdle(a, b) || !this.gate.tryEnter()) return undefined;
    return this.dev.submit(bio).then(this.leaveGate, this.leaveGateFailed);
  }

  private readonly leaveGate = (): void => this.gate.leave();
  private readonly leaveGateFailed = (err: unknown): never => {
    this.gate.leave();
    throw err;
  };

  private mapGated(bio: Bio): Promise<void> {
    const state = this.state;
    if (state === 2) return this.dev.submit(bio);
    if (state === 0) return this.mapTrimState(bio);
    if (bio.op === "read") return this.readCheckpoint(bio);
    return this.writeCheckpoint(bio);
  }

  /** State 0: record discards, un-trim what writes touch. Sector 0 is not special. */
  private mapTrimState(bio: Bio): Promise<void> {
    const first = Math.floor(bio.sector / this.spb);
    const last = Math.ceil((bio.sector + bio.count) / this.spb); // exclusive
    if (bio.op === "discard") {
      // Only whole blocks become free: the rest of a partly discarded block still holds data.
      const a = Math.ceil(bio.sector / this.spb);
      const b = Math.floor((bio.sector + bio.count) / this.spb);
      for (const p of a < b ? this.ranges.pieces(a, b) : []) if (p.type === "Unchanged") this.ranges.assign(p.start, p.end, "Free");
      return Promise.resolve(); // not passed down
    }
    if (bio.op !== "read" && this.ranges.anyOtherThan(first, last, "Unchanged")) {
      for (const p of this.ranges.pieces(first, last)) if (p.type === "Free") this.ranges.assign(p.start, p.end, "Unchanged");
    }
    return this.dev.submit(bio);
  }

  /** State 1 read: the part inside block 0 comes from its live copy; the rest passes through. */
  private async readCheckpoint(bio: Bio): Promise<void> {
    if (bio.sector >= this.spb) return this.dev.submit(bio);
    const redirected = Math.min(bio.count, this.spb - bio.sector);
    const holder = await this.locks.acquire([{ start: 0, end: 1 }], (h) => h);
    try {
      const parts = [this.dev.submit(this.slice(bio, bio.sector, redirected, this.sector0Block * this.spb + bio.sector))];
      if (redirected < bio.count) parts.push(this.dev.submit(this.slice(bio, bio.sector + redirected, bio.count - redirected)));
      await Promise.all(parts);
    } finally {
      this.locks.release(holder);
    }
  }

  /** State 1 write, write_zeroes or discard: back up what still holds checkpoint data, then write. */
  private async writeCheckpoint(bio: Bio): Promise<void> {
    if (this.log?.broken) throw new DmError("EIO", `bow: log unusable after an earlier error: ${this.log.broken.message}`);
    const a = Math.floor(bio.sector / this.spb);
    const b = Math.ceil((bio.sector + bio.count) / this.spb);
    let plan: Plan | undefined;
    while (!plan) {
      // The live copy of block 0 moves when it is overwritten; moving it must exclude I/O to block 0 too.
      const withBlock0 = a === 0 || (this.sector0Block >= a && this.sector0Block < b);
      const want: Interval[] = [{ start: a, end: b }];
      if (a !== 0 && withBlock0) want.push({ start: 0, end: 1 });
      plan = await this.locks.acquire(want, (holder) => {
        if (a !== 0 && !withBlock0 && this.sector0Block >= a && this.sector0Block < b) {
          this.locks.release(holder); // it moved into our range while we waited: retry holding block 0
          return undefined;
        }
        return this.plan(holder, Math.max(a, 1), b);
      });
    }
    const holder = plan.holder;
    try {
      let entries: LogEntry[];
      try {
        // Wait for every copy even when one fails: undo() frees their destinations, which must not be
        // handed out as backup space while a sibling copy can still land there.
        const copies = await Promise.allSettled(plan.backups.map((bk) => this.copy(bk)));
        const failed = copies.find((c) => c.status === "rejected");
        if (failed) throw failed.reason;
        entries = copies.map((c) => (c as PromiseFulfilledResult<LogEntry>).value);
        if (entries.length > 0) await this.flusher.flush();
      } catch (err) {
        this.undo(plan);
        throw err;
      }
      if (entries.length > 0) {
        const moved = plan.backups.find((bk) => bk.sector0Current);
        await this.log!.append(entries, moved ? moved.dest * this.spb : undefined);
        if (moved) this.sector0Block = moved.dest;
      }
      // The new data. Block 0's share goes to its live copy, without backup (the original is logged).
      const parts: Promise<void>[] = [];
      let sector: number = bio.sector;
      if (sector < this.spb) {
        const n = Math.min(bio.count, this.spb - sector);
        parts.push(this.dev.submit(this.slice(bio, sector, n, this.sector0Block * this.spb + sector)));
        sector += n;
      }
      if (sector < bio.sector + bio.count) parts.push(this.dev.submit(this.slice(bio, sector, bio.sector + bio.count - sector)));
      await Promise.all(parts);
    } finally {
      this.locks.release(holder);
    }
  }

  /**
   * Decide, synchronously and while holding [a, b), what must be backed up and where; update the map. Throws
   * ENOSPC (with the map as it was) when free space does not cover the backups plus any log rollovers.
   */
  private plan(holder: LockHolder, a: number, b: number): Plan {
    const plan: Plan = { holder, backups: [], undo: [], rollovers: [] };
    const set = (start: number, end: number, type: RangeType, was: RangeType): void => {
      plan.undo.push({ start, end, type: was });
      this.ranges.assign(start, end, type);
    };
    try {
      // Free blocks inside the bio first: they need no backup, and must not become backup space for it.
      for (const p of a < b ? this.ranges.pieces(a, b) : []) if (p.type === "Free") set(p.start, p.end, "Changed", "Free");
      // Now nothing in [a, b) is free, so the space taken below lies outside the bio.
      for (const p of a < b ? this.ranges.pieces(a, b) : []) {
        switch (p.type) {
          case "Changed":
            break;
          case "Unchanged":
          case "Backup":
          case "Sector0_current": {
            const s0c = p.type === "Sector0_current";
            for (let src = p.start; src < p.end; ) {
              const f = this.ranges.peekFree(Math.min(p.end - src, MAX_ENTRY_BYTES / this.blockSize)); // one entry each
              if (!f) throw new DmError("ENOSPC", "bow: no free space left for a backup");
              const n = f.end - f.start;
              set(f.start, f.end, s0c ? "Sector0_current" : "Backup", "Free");
              this.locks.extend(holder, { start: f.start, end: f.end });
              set(src, src + n, "Changed", p.type);
              plan.backups.push({ src, dest: f.start, n, sector0Current: s0c });
              src += n;
            }
            break;
          }
          default:
            throw new DmError("EIO", `bow: write to a ${p.type} range at block ${p.start}`);
        }
      }
      // Log rollovers these entries will cause get their blocks now, so appending them cannot fail for space.
      const k = plan.backups.length;
      const need = k > 0 ? this.log!.blocksNeededFor(k) : 0;
      for (let i = 0; i < need; i++) {
        const f = this.ranges.peekFree(1);
        if (!f) throw new DmError("ENOSPC", "bow: no free space left for the log");
        this.ranges.assign(f.start, f.end, "Backup");
        plan.rollovers.push({ block: f.start, holder: this.locks.take([{ start: f.start, end: f.end }]) });
      }
      if (k > 0) this.log!.reserve(k, plan.rollovers.map((r) => r.block));
      for (const r of plan.rollovers) this.rolloverHolders.set(r.block, r.holder);
    } catch (err) {
      for (const r of plan.rollovers) {
        this.ranges.assign(r.block, r.block + 1, "Free");
        this.locks.release(r.holder);
      }
      this.rewind(plan);
      this.locks.release(holder);
      throw err;
    }
    return plan;
  }

  /** Put the map back as it was before `plan`. */
  private rewind(plan: Plan): void {
    for (let i = plan.undo.length - 1; i >= 0; i--) {
      const u = plan.undo[i]!;
      this.ranges.assign(u.start, u.end, u.type);
    }
    plan.undo.length = 0;
  }

  /** A planned write failed before its log entries were written: nothing on disk refers to its backups. */
  private undo(plan: Plan): void {
    this.rewind(plan);
    for (const block of this.log!.cancel(plan.backups.length)) {
      this.ranges.assign(block, block + 1, "Free");
      const h = this.rolloverHolders.get(block);
      this.rolloverHolders.delete(block);
      if (h) this.locks.release(h);
    }
  }

  private rolloverUsed(block: number): void {
    const h = this.rolloverHolders.get(block);
    this.rolloverHolders.delete(block);
    if (h) this.locks.release(h);
  }

  /** Copy a backup's old data to its destination; returns its log entry. */
  private async copy(bk: Backup): Promise<LogEntry> {
    const seed = checksumSeed(bk.src * this.spb, this.blockSize);
    let crc = seed;
    const chunkBlocks = Math.max(1, Math.floor(COPY_CHUNK / this.blockSize));
    for (let done = 0; done < bk.n; done += chunkBlocks) {
      const n = Math.min(chunkBlocks, bk.n - done);
      const data = Buffer.alloc(n * this.blockSize);
      await this.dev.submit({ op: "read", sector: ((bk.src + done) * this.spb) as Sector, count: (n * this.spb) as Sector, data, fua: false });
      if (!bk.sector0Current) crc = crc32Raw(crc, data);
      await this.dev.submit({ op: "write", sector: ((bk.dest + done) * this.spb) as Sector, count: (n * this.spb) as Sector, data, fua: false });
    }
    return { source: bk.src * this.spb, dest: bk.dest * this.spb, size: bk.n * this.blockSize, checksum: bk.sector0Current ? 0 : crc };
  }

  private slice(bio: Bio, sector: number, count: number, to: number = sector): Bio {
    const off = (sector - bio.sector) * 512;
    return {
      op: bio.op,
      sector: to as Sector,
      count: count as Sector,
      data: bio.data?.subarray(off, off + count * 512),
      fua: bio.fua,
      noUnmap: bio.noUnmap,
    };
  }

  // ---- state changes ----

  /** The sysfs `state` store: the first character is the new state; only 0→1 and 1→2 are allowed. */
  setState(text: string): Promise<void> {
    const want = text.length > 0 ? text.charCodeAt(0) - 48 : -1;
    if (want < 0 || want > 2) return Promise.reject(new DmError("EINVAL", `Invalid state ${JSON.stringify(text)}: expected 0, 1 or 2`));
    return this.gate.runExclusive(async () => {
      if (want !== this.state + 1) throw new DmError("EINVAL", `Invalid state change from ${this.state} to ${want}`);
      if (want === 1) await this.prepareLog();
      else await this.commit();
      this.state = want as BowState;
      this.ctx.log("info", `state ${want}`, { free: this.freeBytes });
      this.ctx.raiseEvent();
    });
  }

  /**
   * 0→1 (the kernel's prepare_log): keep block 0's contents in a free block (its live copy) and back it up
   * into another, then write the first log sector over block 0. Needs two free blocks; on any failure the
   * state stays 0 and block 0 is untouched.
   */
  private async prepareLog(): Promise<void> {
    const first = this.ranges.find(0);
    if (first.type !== "Unchanged") throw new DmError("EIO", "bow: block 0 is not in use (trimmed): cannot hold the log");
    if (this.ranges.freeBlocks < 2) throw new DmError("ENOSPC", "bow: entering state 1 needs two free blocks");
    const s0c = this.ranges.peekFree(1)!.start;
    this.ranges.assign(s0c, s0c + 1, "Sector0_current");
    const b0 = this.ranges.peekFree(1)!.start;
    this.ranges.assign(b0, b0 + 1, "Backup");
    const bs = this.spb as Sector;
    try {
      const block0 = Buffer.alloc(this.blockSize);
      await this.dev.submit({ op: "read", sector: 0 as Sector, count: bs, data: block0, fua: false });
      await this.dev.submit({ op: "write", sector: (s0c * this.spb) as Sector, count: bs, data: block0, fua: false });
      await this.dev.submit({ op: "write", sector: (b0 * this.spb) as Sector, count: bs, data: block0, fua: false });
      await this.flusher.flush();
      const log = new BowLog(this.dev, this.blockSize, this.flusher, (b) => this.rolloverUsed(b), s0c * this.spb);
      const sector = log.initialSector({ source: 0, dest: b0 * this.spb, size: this.blockSize, checksum: crc32Raw(0, block0) });
      await this.dev.submit({ op: "write", sector: 0 as Sector, count: bs, data: sector, fua: false });
      await this.flusher.flush();
      this.log = log;
      this.sector0Block = s0c;
      this.ranges.assign(0, 1, "Sector0");
    } catch (err) {
      this.ranges.assign(b0, b0 + 1, "Free");
      this.ranges.assign(s0c, s0c + 1, "Free");
      throw err instanceof DmError ? err : new DmError("EIO", `bow: cannot write the log: ${(err as Error).message}`);
    }
  }

  /** 1→2: block 0 gets its live contents back (the magic goes away); then everything passes through. */
  private async commit(): Promise<void> {
    const bs = this.spb as Sector;
    const live = Buffer.alloc(this.blockSize);
    await this.dev.submit({ op: "read", sector: (this.sector0Block * this.spb) as Sector, count: bs, data: live, fua: false });
    await this.dev.submit({ op: "write", sector: 0 as Sector, count: bs, data: live, fua: false });
    await this.flusher.flush();
  }

  // ---- control and status ----

  async message(argv: readonly string[]): Promise<string | void> {
    try {
      return await this.control(argv);
    } catch (err) {
      // The kernel's DMERR: the reason goes to the daemon log; dmsetup's caller sees only the errno.
      this.ctx.log("error", (err as Error).message);
      throw err;
    }
  }

  private async control(argv: readonly string[]): Promise<string | void> {
    const [cmd, ...rest] = argv;
    switch (cmd) {
      case "state":
        if (rest.length === 0) return String(this.state);
        if (rest.length !== 1) throw new DmError("EINVAL", "usage: state [0|1|2]");
        return this.setState(rest[0]!);
      case "free":
        if (rest.length !== 0) throw new DmError("EINVAL", "usage: free");
        return String(this.freeBytes);
      case "ranges":
        if (rest.length !== 0) throw new DmError("EINVAL", "usage: ranges");
        return this.rangesText();
      default:
        throw new DmError("EINVAL", `bow: unknown message ${JSON.stringify(cmd ?? "")} (expected state, free or ranges)`);
    }
  }

  /** The kernel's STATUSTYPE_TABLE text: `<Name>: <start_sector>` per range, `Top: <len>`, then self-check errors. */
  rangesText(): string {
    const lines: string[] = [];
    for (const r of this.ranges.ranges()) lines.push(`${r.type}: ${r.start * this.spb}`);
    lines.push(`Top: ${this.blocks * this.spb}`);
    return lines.join("\n") + "\n" + this.ranges.selfCheck().map((e) => e + "\n").join("");
  }

  status(type: "info" | "table"): string {
    if (type === "table") return this.args.join(" ").replace(/^\S+/, this.dev.label);
    return `${this.state} ${this.freeBytes} ${this.blockSize}`;
  }

  async destroy(): Promise<void> {
    // Nothing is written: in state 1 the log stays on disk so the next restore rolls back (as the kernel).
    this.lock?.release();
  }
}
