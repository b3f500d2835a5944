import type { Target, TargetContext, TargetType } from "./target.js";
import type { Bio } from "../io/bio.js";
import { subBio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import { DmError } from "../core/errors.js";
import { SECTOR_SIZE, type Sector } from "../core/units.js";
import { checkDeviceArea, kstrtouint, openTargetDevice, scanSector } from "./kernel-args.js";

/** Errors per stripe after which no more events are raised (the kernel's DM_IO_ERROR_THRESHOLD). */
const IO_ERROR_THRESHOLD = 15;

interface Stripe {
  readonly dev: BlockDevice;
  readonly physicalStart: Sector;
  errorCount: number;
}

/**
 * dm-stripe: `striped <#stripes> <chunk size> [<dev> <offset>]+` spreads the target over the devices in chunks
 * of <chunk size> sectors, round-robin. The argument checks, their order and their reason texts are the
 * kernel's (stripe_ctr), as is the status: "<#stripes> <dev>... 1 <A|D per stripe>", where D marks a stripe
 * whose device has failed I/O.
 */
export const stripedTarget: TargetType = {
  name: "striped",
  version: [1, 6, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    if (args.length < 2) throw invalid("Not enough arguments");
    const stripes = kstrtouint(args[0]);
    if (!stripes) throw invalid("Invalid stripe count");
    const chunkSize = kstrtouint(args[1]);
    if (!chunkSize) throw invalid("Invalid chunk_size");
    if (length % stripes !== 0) throw invalid("Target length not divisible by number of stripes");
    const width = length / stripes;
    if (width % chunkSize !== 0) throw invalid("Target length not divisible by chunk size");
    if (args.length !== 2 + 2 * stripes) throw invalid("Not enough destinations specified");

    const list: Stripe[] = [];
    for (let i = 0; i < stripes; i++) {
      const start = scanSector(args[3 + 2 * i]);
      if (start === undefined) throw invalid("Couldn't parse stripe destination");
      const dev = await openTargetDevice(ctx, args[2 + 2 * i]!, "Couldn't parse stripe destination");
      list.push({ dev, physicalStart: start, errorCount: 0 });
    }
    // The table core's iterate_devices check: each stripe holds `width` sectors from its offset.
    for (const s of list) checkDeviceArea(s.dev, s.physicalStart, width);
    return new StripedTarget(ctx, list, chunkSize);
  },
};

const invalid = (reason: string): DmError => new DmError("EINVAL", reason);

class StripedTarget implements Target {
  constructor(
    private readonly ctx: TargetContext,
    private readonly stripes: readonly Stripe[],
    private readonly chunkSize: number,
  ) {}

  /** io_opt as the kernel's stripe_io_hints: one full row (io_min, one chunk, has no NBD equivalent). */
  get optimalIoBytes(): number {
    return this.chunkSize * this.stripes.length * SECTOR_SIZE;
  }

  /** stripe_map_sector: target sector → (stripe index, sector on that stripe relative to its offset). */
  private mapSector(sector: number): { stripe: number; sector: number } {
    const n = this.stripes.length;
    const chunk = Math.floor(sector / this.chunkSize);
    const offset = sector - chunk * this.chunkSize;
    const row = Math.floor(chunk / n);
    return { stripe: chunk - row * n, sector: row * this.chunkSize + offset };
  }

  /** stripe_map_range_sector: where `sector` falls on `target`, rounded to that stripe's chunk boundary. */
  private mapRangeSector(sector: number, target: number): number {
    const m = this.mapSector(sector);
    if (m.stripe === target) return m.sector;
    const down = m.sector - (m.sector % this.chunkSize);
    return target < m.stripe ? down + this.chunkSize : down;
  }

  async map(bio: Bio): Promise<void> {
    switch (bio.op) {
      case "flush":
        // One flush per stripe (num_flush_bios = #stripes).
        return this.all(this.stripes.map((_, i) => this.submit(i, bio)));
      case "discard":
      case "write_zeroes": {
        // One bio per stripe covering that stripe's share of the range (stripe_map_range).
        const end = bio.sector + bio.count;
        const parts: Promise<void>[] = [];
        for (let i = 0; i < this.stripes.length; i++) {
          const begin = this.mapRangeSector(bio.sector, i);
          const stop = this.mapRangeSector(end, i);
          if (begin < stop) parts.push(this.submit(i, { ...bio, sector: (this.stripes[i]!.physicalStart + begin) as Sector, count: (stop - begin) as Sector }));
        }
        return this.all(parts);
      }
      default:
        return this.mapData(bio);
    }
  }

  /**
   * Reads and writes are split at chunk boundaries (the kernel's max_io_len = chunk size). The chunks a bio
   * puts on one stripe are consecutive rows there, so they are merged into one device I/O per stripe (what the
   * kernel's block layer does when it merges the split bios), gathering or scattering the data through a
   * bounce buffer: one system call per stripe instead of one per chunk.
   */
  private mapData(bio: Bio): Promise<void> {
    const first = this.mapSector(bio.sector);
    const inChunk = this.chunkSize - (bio.sector % this.chunkSize);
    if (bio.count <= inChunk) {
      return this.submit(first.stripe, { ...bio, sector: (this.stripes[first.stripe]!.physicalStart + first.sector) as Sector });
    }
    const runs: ({ sector: number; count: number; pieces: { offset: number; count: number }[] } | undefined)[] = [];
    let done = 0;
    while (done < bio.count) {
      const sector = bio.sector + done;
      const m = this.mapSector(sector);
      const count = Math.min(bio.count - done, this.chunkSize - (sector % this.chunkSize));
      const run = (runs[m.stripe] ??= { sector: this.stripes[m.stripe]!.physicalStart + m.sector, count: 0, pieces: [] });
      run.pieces.push({ offset: done, count });
      run.count += count;
      done += count;
    }
    const parts: Promise<void>[] = [];
    runs.forEach((run, i) => {
      if (!run) return;
      if (run.pieces.length === 1) {
        parts.push(this.submit(i, subBio(bio, run.sector as Sector, run.count as Sector, run.pieces[0]!.offset)));
        return;
      }
      const data = Buffer.allocUnsafe(run.count * 512);
      const each = (fn: (src: Buffer, at: number) => void): void => {
        let at = 0;
        for (const p of run.pieces) {
          fn(bio.data!.subarray(p.offset * 512, (p.offset + p.count) * 512), at);
          at += p.count * 512;
        }
      };
      const merged: Bio = { ...bio, sector: run.sector as Sector, count: run.count as Sector, data };
      if (bio.op === "write") {
        each((src, at) => src.copy(data, at));
        parts.push(this.submit(i, merged));
      } else {
        parts.push(this.submit(i, merged).then(() => each((dst, at) => data.copy(dst, 0, at, at + dst.length))));
      }
    });
    return this.all(parts);
  }

  /** Complete only when every part has (a failed part must not leave others still filling the buffer). */
  private async all(parts: Promise<void>[]): Promise<void> {
    const results = await Promise.allSettled(parts);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  private async submit(index: number, bio: Bio): Promise<void> {
    const dev = this.stripes[index]!.dev;
    try {
      await dev.submit(bio);
    } catch (err) {
      this.noteError(dev, err);
      throw err;
    }
  }

  /** stripe_end_io: count the error against every stripe on the failing device and raise an event. */
  private noteError(dev: BlockDevice, err: unknown): void {
    if (err instanceof DmError && err.errno === "EOPNOTSUPP") return;
    let event = false;
    for (const s of this.stripes) {
      if (s.dev.label !== dev.label) continue;
      s.errorCount++;
      if (s.errorCount < IO_ERROR_THRESHOLD) event = true;
    }
    if (event) this.ctx.raiseEvent();
  }

  status(type: "info" | "table"): string {
    const n = this.stripes.length;
    if (type === "info") {
      return `${n} ${this.stripes.map((s) => `${s.dev.label} `).join("")}1 ${this.stripes.map((s) => (s.errorCount ? "D" : "A")).join("")}`;
    }
    return `${n} ${this.chunkSize}${this.stripes.map((s) => ` ${s.dev.label} ${s.physicalStart}`).join("")}`;
  }

  devices(): readonly BlockDevice[] {
    return this.stripes.map((s) => s.dev);
  }

  async destroy(): Promise<void> {}
}
