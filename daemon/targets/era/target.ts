import type { Target, TargetContext, TargetType } from "../target.js";
import type { Bio } from "../../io/bio.js";
import type { BlockDevice } from "../../io/block-device.js";
import { DmError } from "../../core/errors.js";
import type { Sector } from "../../core/units.js";
import { invalid } from "../args.js";
import { DeviceMetaIo, MD_BLOCK_SECTORS, type MetaIo } from "./pdata/block.js";
import { EraMetadata } from "./metadata.js";

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
    const bsText = args[2]!;
    if (!/^[0-9]+$/.test(bsText) || Number(bsText) > 0xffffffff) throw invalid("Error parsing block size");
    const blockSize = Number(bsText);
    if (blockSize < MIN_BLOCK_SIZE || blockSize % MIN_BLOCK_SIZE !== 0) throw invalid("Invalid block size");
    const meta = await ctx.openDevice(args[0]!, "rw");
    const origin = await ctx.openDevice(args[1]!, "rw");
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

interface Waiter {
  readonly blocks: readonly number[];
  resolve(): void;
  reject(err: unknown): void;
}

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

  /** Run `fn` after everything queued before it: the kernel's single worker thread. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.tail.then(fn);
    this.tail = r.catch(() => undefined);
    return r;
  }

  private isMarked(b: number): boolean {
    return ((this.inCore[b >>> 5]! >>> (b & 31)) & 1) === 1;
  }

  async map(bio: Bio): Promise<void> {
    if (bio.op === "read" || bio.op === "flush" || bio.count === 0) return this.origin.submit(bio);
    const first = Math.floor(bio.sector / this.blockSize);
    const last = Math.floor((bio.sector + bio.count - 1) / this.blockSize);
    let unmarked: number[] | undefined;
    for (let b = first; b <= last; b++) if (!this.isMarked(b)) (unmarked ??= []).push(b);
    if (unmarked) await this.recordWrites(unmarked);
    return this.origin.submit(bio);
  }

  private recordWrites(blocks: readonly number[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ blocks, resolve, reject });
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
      const blocks = [...new Set(batch.flatMap((w) => w.blocks))].filter((b) => !this.isMarked(b)).sort((a, b) => a - b);
      if (blocks.length) {
        const newly = await this.md.markWritten(blocks);
        if (newly.length) await this.md.commit();
        for (const b of blocks) this.inCore[b >>> 5]! |= 1 << (b & 31);
      }
      for (const w of batch) w.resolve();
    } catch (err) {
      const e = new DmError("EIO", `era: metadata commit failed: ${(err as Error).message}`);
      await this.abort(err);
      for (const w of batch) w.reject(e);
    }
    this.scheduleDigest();
  }

  /** Throw away the uncommitted transaction: reload the last committed metadata. */
  private async abort(cause: unknown): Promise<void> {
    this.ctx.log("error", "era: metadata operation failed; reverting to the last commit", { error: String((cause as Error)?.message ?? cause) });
    try {
      this.md = await EraMetadata.open(this.io, this.blockSize, false);
      // The in-core bits must be exactly the committed bits of the current writeset.
      this.inCore.fill(0);
      const ws = this.md.currentWriteset;
      if (ws.root !== 0 && this.inCore.length) {
        for (const b of await this.md.bitset.setBitsOf(ws.root, Math.min(ws.nrBits, this.nrBlocks))) this.inCore[b >>> 5]! |= 1 << (b & 31);
      }
    } catch (err) {
      this.broken = new DmError("EIO", `era: metadata unusable: ${(err as Error).message}`);
      this.ctx.log("error", this.broken.message);
    }
  }

  private scheduleDigest(): void {
    if (!this.running || this.digestQueued || !this.md.archivedWritesets || this.broken) return;
    this.digestQueued = true;
    setImmediate(() =>
      void this.serial(async () => {
        this.digestQueued = false;
        if (!this.running || this.broken) return;
        try {
          if (await this.md.digestStep()) this.scheduleDigest();
        } catch (err) {
          await this.abort(err);
        }
      }),
    );
  }

  /** Run a metadata operation in the worker and commit; any failure reverts to the last commit. */
  private rpc(op: (md: EraMetadata) => Promise<void>): Promise<void> {
    return this.serial(async () => {
      if (this.broken) throw this.broken;
      try {
        const eraBefore = this.md.currentEra;
        await op(this.md);
        await this.md.commit();
        // A new era started: its writeset is empty, so every block must be recorded again.
        if (this.md.currentEra !== eraBefore) this.inCore.fill(0);
      } catch (err) {
        await this.abort(err);
        throw err;
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
      try {
        await this.md.archive();
        await this.md.commit();
      } catch (err) {
        await this.abort(err);
        throw err;
      }
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
    });
    this.scheduleDigest();
  }

  devices(): readonly BlockDevice[] {
    return [this.meta, this.origin];
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

  private erasCache: { md: EraMetadata; commit: number; eras: Promise<Uint32Array> } | undefined;

  /**
   * The era in which each origin block was last written (0 = never), including the current era as of the last
   * commit. Cached until the next commit; read in the worker, so it is one consistent state.
   */
  erasSnapshot(): Promise<Uint32Array> {
    const c = this.erasCache;
    if (c && c.md === this.md && c.commit === this.md.commitCount) return c.eras;
    const eras = this.serial(() => this.md.logicalEras(true));
    this.erasCache = { md: this.md, commit: this.md.commitCount, eras };
    eras.catch(() => (this.erasCache = undefined));
    return eras;
  }

  /**
   * Origin extents written in era `since` or later, including the current era (as of the last commit), merged
   * into runs, in ascending order. Serialised with the worker, so it sees one consistent state.
   */
  async *changedBlocksSince(since: number): AsyncIterable<ChangedExtent> {
    const eras = await this.erasSnapshot();
    const bs = this.blockSize;
    let runStart = -1;
    for (let b = 0; b <= eras.length; b++) {
      const hit = b < eras.length && eras[b]! >= since;
      if (hit && runStart < 0) runStart = b;
      if (!hit && runStart >= 0) {
        yield { startSector: (runStart * bs) as Sector, lengthSectors: ((b - runStart) * bs) as Sector };
        runStart = -1;
      }
    }
  }

  /** The metadata (tests and checkers). */
  get metadata(): EraMetadata {
    return this.md;
  }
}
