import type { Target, TargetContext, TargetType } from "../target.js";
import type { Bio } from "../../io/bio.js";
import type { BlockDevice } from "../../io/block-device.js";
import { dataRun, type AllocationRun } from "../../io/allocation.js";
import { DmError } from "../../core/errors.js";
import type { Sector } from "../../core/units.js";
import { invalid } from "../args.js";
import { DeviceMetaIo, MD_BLOCK_SECTORS, type MetaIo } from "./pdata/block.js";
import { EraMetadata } from "./metadata.js";
import { allSet, type BlockRange, clearFrom, mergeRanges, setRange } from "./ranges.js";

const isNoSpace = (err: unknown): boolean => err instanceof DmError && err.errno === "ENOSPC";

/** dm-era requires data blocks of at least 4 KiB: a multiple of 8 sectors. */
const MIN_BLOCK_SIZE = 8;
/** preresume refuses origins of 2^31 blocks or more (the kernel's limit). */
const MAX_ORIGIN_BLOCKS = 2 ** 31;

/**
 * dm-era: `era <metadata dev> <origin dev> <block size>`. Every bio goes to the origin; a write, discard or
 * write-zeroes touching a block not yet marked in the current era waits until the metadata recording it is
 * durable. Archived eras are digested into the era array in the background.
 */
export const eraTarget: TargetType = {
  name: "era",
  version: [1, 0, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    if (args.length !== 3) throw invalid("Invalid argument count");
    // The kernel's order: both devices, then the block size; a failed open is EINVAL whatever the cause.
    const meta = await openOrInvalid(ctx, args[0]!, "Error opening metadata device");
    const origin = await openOrInvalid(ctx, args[1]!, "Error opening data device");
    const bsText = args[2]!;
    if (!/^[0-9]+$/.test(bsText) || Number(bsText) > 0xffffffff) throw invalid("Error parsing block size");
    const blockSize = Number(bsText);
    if (blockSize < MIN_BLOCK_SIZE || blockSize % MIN_BLOCK_SIZE !== 0) throw invalid("Invalid block size");
    const io = new DeviceMetaIo(meta);
    let md: EraMetadata;
    try {
      md = await EraMetadata.open(io, blockSize, true);
    } catch (err) {
      const e = err instanceof DmError ? err : new DmError("EIO", String((err as Error)?.message ?? err));
      throw new DmError(e.errno, `Error reading metadata: ${e.message}`);
    }
    return new EraTarget(ctx, meta, origin, io, blockSize, Math.ceil(length / blockSize), md);
  },
};

/** dm_get_device failing in era_ctr: the cause is kept in the text, the errno is EINVAL (as era_ctr returns). */
async function openOrInvalid(ctx: TargetContext, spec: string, reason: string): Promise<BlockDevice> {
  try {
    return await ctx.openDevice(spec, "rw");
  } catch (err) {
    throw invalid(`${reason} (${(err as Error)?.message ?? String(err)})`);
  }
}

interface Waiter {
  /** The blocks the bio touches (one range, however large the bio). */
  readonly range: BlockRange;
  resolve(): void;
  reject(err: unknown): void;
}

/** Origin blocks changedBlocksSince reads per metadata pass (256 KiB of eras). */
const CHANGED_BLOCKS_WINDOW = 65536;

/** One contiguous run of origin blocks (in sectors) reported by changedBlocksSince. */
export interface ChangedExtent {
  readonly startSector: Sector;
  readonly lengthSectors: Sector;
}

export class EraTarget implements Target {
  // No maxIoSectors: the kernel splits bios at era blocks (max_io_len), but map() marks every block a bio
  // touches, so a 1 MiB write goes down whole instead of as 256 separate 4 KiB writes.
  /** Bits of the current era that are durable on the metadata device (set only after the commit). */
  private inCore: Uint32Array;
  private waiting: Waiter[] = [];
  private workerQueued = false;
  private digestQueued = false;
  /**
   * The digest failed (e.g. ENOSPC): like the kernel, stop digesting until the next archive. Writes keep
   * working; the archived writesets stay in the tree, where the tools read them.
   */
  private digestStopped = false;
  /**
   * A write batch or RPC ran out of metadata space while the digest's progress was uncommitted: from then on
   * the digest commits each step, so its allocations never share another transaction. Until the writeset is done.
   */
  private digestCommitsEachStep = false;
  /** The worker runs between preresume and postsuspend. */
  private running = false;
  private resumedOnce = false;
  private broken: DmError | undefined;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly ctx: TargetContext,
    private readonly meta: BlockDevice,
    private readonly origin: BlockDevice,
    private readonly io: MetaIo,
    readonly blockSize: number,
    readonly nrBlocks: number,
    private md: EraMetadata,
  ) {
    this.inCore = new Uint32Array(0);
  }

  /**
   * io_opt as the kernel's era_io_hints: the era block (it keeps a lower device's io_opt that the block size
   * divides; tsdm devices below export none, so the block it is).
   */
  get optimalIoBytes(): number {
    return this.blockSize * 512;
  }

  /** Run `fn` after everything queued before it: the kernel's single worker thread. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.tail.then(fn);
    this.tail = r.catch(() => undefined);
    return r;
  }

  map(bio: Bio): Promise<void> {
    if (bio.op === "read" || bio.op === "flush" || bio.count === 0) return this.origin.submit(bio);
    const first = Math.floor(bio.sector / this.blockSize);
    const last = Math.floor((bio.sector + bio.count - 1) / this.blockSize);
    // Blocks already in the current writeset (durably): straight down, no promise of our own.
    if (allSet(this.inCore, first, last)) return this.origin.submit(bio);
    return this.recordWrites({ first, last }).then(() => this.origin.submit(bio));
  }

  private recordWrites(range: BlockRange): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ range, resolve, reject });
      if (!this.workerQueued) {
        this.workerQueued = true;
        void this.serial(() => this.processDeferred());
      }
    });
  }

  /** One batch: mark every waiting block on disk, one commit, then the in-core bits, then release the bios. */
  private async processDeferred(): Promise<void> {
    this.workerQueued = false;
    const batch = this.waiting;
    this.waiting = [];
    if (batch.length === 0) return;
    try {
      if (this.broken) throw this.broken;
      const ranges = mergeRanges(batch.map((w) => w.range)).filter((r) => !allSet(this.inCore, r.first, r.last));
      if (ranges.length) {
        await this.inTransaction("recording writes", async (md) => {
          if ((await md.markWritten(ranges)) > 0) await md.commit();
        });
        // Only now, with the bits durable, may later bios to these blocks skip the worker.
        for (const r of ranges) setRange(this.inCore, r.first, r.last);
      }
      for (const w of batch) w.resolve();
    } catch (err) {
      const e = new DmError("EIO", `era: metadata commit failed: ${(err as Error).message}`);
      for (const w of batch) w.reject(e);
    }
    this.scheduleDigest();
  }

  /**
   * Run `op` (which commits) on the metadata. Any failure reverts to the last commit. When it ran out of
   * metadata space while the open transaction also held the digest's uncommitted progress, that progress is
   * dropped and `op` runs once more alone: the digest must never stop writes from being recorded.
   */
  private async inTransaction(what: string, op: (md: EraMetadata) => Promise<void>): Promise<void> {
    const hadDigest = this.md.digestDirty;
    try {
      await op(this.md);
      return;
    } catch (err) {
      await this.abort(err);
      if (!isNoSpace(err) || !hadDigest || this.broken) throw this.noSpace(err, what);
      this.ctx.log("warn", `metadata space is short; ${what} again without the digest's uncommitted progress`, {
        used: this.md.usedMetadataBlocks,
        total: this.md.totalMetadataBlocks,
      });
      this.digestCommitsEachStep = true;
    }
    try {
      await op(this.md);
    } catch (err) {
      await this.abort(err);
      throw this.noSpace(err, what);
    }
  }

  /** Log a full metadata device once per failure, in words an operator can act on; pass the error on. */
  private noSpace(err: unknown, what: string): unknown {
    if (isNoSpace(err)) {
      this.ctx.log("error", `metadata device full: ${what} failed; writes to blocks not yet written in this era fail with EIO until space is freed (drop_metadata_snap) or the metadata is moved to a larger device`, {
        used: this.md.usedMetadataBlocks,
        total: this.md.totalMetadataBlocks,
        error: (err as Error).message,
      });
    }
    return err;
  }

  /** Throw away the uncommitted transaction: reload the last committed metadata. */
  private async abort(cause: unknown): Promise<void> {
    this.ctx.log("error", "metadata operation failed; reverting to the last commit", { error: String((cause as Error)?.message ?? cause) });
    try {
      this.md = await EraMetadata.open(this.io, this.blockSize, false);
      // The in-core bits must be exactly the committed bits of the current writeset.
      this.inCore.fill(0);
      const ws = this.md.currentWriteset;
      if (ws.root !== 0 && this.inCore.length) {
        const inCore = this.inCore;
        await this.md.bitset.forEachWord(ws.root, (wi, lo, hi) => {
          if (2 * wi < inCore.length) inCore[2 * wi] = lo;
          if (2 * wi + 1 < inCore.length) inCore[2 * wi + 1] = hi;
        });
        clearFrom(inCore, Math.min(ws.nrBits, this.nrBlocks));
      }
    } catch (err) {
      this.broken = new DmError("EIO", `era: metadata unusable: ${(err as Error).message}`);
      this.ctx.log("error", this.broken.message);
    }
  }

  private scheduleDigest(): void {
    if (!this.running || this.digestQueued || this.digestStopped || !this.md.archivedWritesets || this.broken) return;
    this.digestQueued = true;
    setImmediate(() =>
      void this.serial(async () => {
        this.digestQueued = false;
        if (!this.running || this.broken || this.digestStopped) return;
        try {
          const r = await this.md.digestStep();
          // A finished writeset frees its bitset, reusable only after a commit: commit now rather than let
          // the freed space wait for the next write.
          if (r === "removed" || (r === "progress" && this.digestCommitsEachStep)) await this.md.commit();
          if (r === "removed") this.digestCommitsEachStep = false;
          if (r !== "idle") this.scheduleDigest();
        } catch (err) {
          await this.abort(err);
          this.digestStopped = true;
          this.ctx.log("error", "digest of archived writesets failed; stopped until the next checkpoint (the tools still see those writesets)", {
            error: String((err as Error)?.message ?? err),
            used: this.md.usedMetadataBlocks,
            total: this.md.totalMetadataBlocks,
          });
        }
      }),
    );
  }

  /** An archive happened: the kernel kicks the digest off again. */
  private restartDigest(): void {
    this.digestStopped = false;
  }

  /** Run a metadata operation in the worker and commit; any failure reverts to the last commit. */
  private rpc(op: (md: EraMetadata) => Promise<void>): Promise<void> {
    return this.serial(async () => {
      if (this.broken) throw this.broken;
      try {
        const eraBefore = this.md.currentEra;
        await this.inTransaction("a metadata message", async (md) => {
          await op(md);
          await md.commit();
        });
        // A new era started: its writeset is empty, so every block must be recorded again.
        if (this.md.currentEra !== eraBefore) {
          this.inCore.fill(0);
          this.restartDigest();
        }
      } finally {
        this.scheduleDigest();
      }
    });
  }

  async message(argv: readonly string[]): Promise<string | void> {
    if (argv.length !== 1) throw invalid("Incorrect number of message arguments");
    const m = argv[0]!.toLowerCase();
    const ops: Record<string, (md: EraMetadata) => Promise<void>> = {
      checkpoint: (md) => md.rollover(),
      take_metadata_snap: (md) => md.takeSnapshot(),
      drop_metadata_snap: (md) => md.dropSnapshot(),
    };

    const op = ops[m];
    if (!op) throw invalid(`unsupported message '${argv[0]}'`);
    // The kernel queues the RPC for a worker that is stopped while suspended (the call would hang): refuse instead.
    if (!this.running) throw new DmError("EBUSY", `${m}: device is suspended`);
    await this.rpc(op);
  }

  status(type: "info" | "table"): string {
    if (type === "table") return `${this.meta.label} ${this.origin.label} ${this.blockSize}`;
    if (this.broken) return "Error";
    const md = this.md;
    return `${MD_BLOCK_SECTORS} ${md.usedMetadataBlocks}/${md.totalMetadataBlocks} ${md.currentEra} ${md.metadataSnap ? md.metadataSnap : "-"}`;
  }

  /** postsuspend: archive the current era, stop the worker, commit. Tools then see every write. */
  async postsuspend(): Promise<void> {
    this.running = false;
    await this.serial(async () => {
      if (this.broken) return;
      await this.inTransaction("archiving the era at suspend", async (md) => {
        await md.archive();
        await md.commit();
      });
      this.restartDigest();
    });
  }

  /** preresume: pick up the committed metadata, resize to the table, start the worker, roll over (era + 1). */
  async preresume(): Promise<void> {
    if (this.nrBlocks >= MAX_ORIGIN_BLOCKS) throw invalid("Invalid number of origin blocks");
    await this.serial(async () => {
      if (!this.resumedOnce) {
        // Another table (the one this replaces) may have committed since construct: start from what is on disk.
        this.md = await EraMetadata.open(this.io, this.blockSize, false);
        this.broken = undefined;
      }
      if (this.broken) throw this.broken;
      try {
        if (!this.resumedOnce || this.md.nrBlocks !== this.nrBlocks) {
          await this.md.resize(this.nrBlocks);
          await this.md.commit();
        }
        await this.md.rollover();
        await this.md.commit();
      } catch (err) {
        await this.abort(err);
        throw err;
      }
      this.inCore = new Uint32Array(Math.ceil(this.nrBlocks / 32));
      this.resumedOnce = true;
      this.running = true;
      this.restartDigest();
    });
    this.scheduleDigest();
  }

  devices(): readonly BlockDevice[] {
    return [this.meta, this.origin];
  }

  /** Reads come from the origin, so its holes are the device's (block status). */
  allocation(sector: Sector, count: Sector): AllocationRun[] | Promise<AllocationRun[]> {
    return this.origin.allocation ? this.origin.allocation(sector, count) : [dataRun(count)];
  }

  async destroy(): Promise<void> {
    this.running = false;
    for (const w of this.waiting.splice(0)) w.reject(new DmError("EIO", "era: target destroyed"));
    await this.tail;
  }

  // ---- for the NBD server and tests ----

  get currentEra(): number {
    return this.md.currentEra;
  }

  /**
   * The era in which origin blocks [first, first+count) were last written (0 = never), including the current era
   * as of the last commit. Read in the worker, so it is one consistent state; it reads only the metadata blocks
   * holding the range.
   */
  erasOf(first: number, count: number): Promise<Uint32Array> {
    return this.serial(() => this.md.logicalErasRange(first, count, true));
  }

  /**
   * Origin extents written in era `since` or later, including the current era (as of the last commit), merged
   * into runs, in ascending order. Read a window of blocks at a time, each window one consistent state: a block's
   * era only grows, so a block written since `since` is never missed, whichever window saw it.
   */
  async *changedBlocksSince(since: number): AsyncIterable<ChangedExtent> {
    const bs = this.blockSize;
    let runStart = -1;
    for (let first = 0; first < this.md.nrBlocks; first += CHANGED_BLOCKS_WINDOW) {
      const eras = await this.erasOf(first, CHANGED_BLOCKS_WINDOW);
      for (let i = 0; i < eras.length; i++) {
        const hit = eras[i]! >= since;
        if (hit && runStart < 0) runStart = first + i;
        if (!hit && runStart >= 0) {
          yield { startSector: (runStart * bs) as Sector, lengthSectors: ((first + i - runStart) * bs) as Sector };
          runStart = -1;
        }
      }
    }
    if (runStart >= 0) yield { startSector: (runStart * bs) as Sector, lengthSectors: ((this.md.nrBlocks - runStart) * bs) as Sector };
  }

  /** The metadata (tests and checkers). */
  get metadata(): EraMetadata {
    return this.md;
  }
}
