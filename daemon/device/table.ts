import type { Bio } from "../io/bio.js";
import { subBio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import { MAX_ALLOCATION_RUNS, dataRun, pushRun, type AllocationRun } from "../io/allocation.js";
import { DmError } from "../core/errors.js";
import { MAX_DEVICE_SECTORS, type Sector } from "../core/units.js";
import { findTargetType } from "../targets/index.js";
import type { DestroyOptions, SuspendOptions, Target, TargetContext, TargetType } from "../targets/target.js";
import { splitArgs } from "./split-args.js";

/** One line of a table as the client sent it (dmsetup already split the text into lines). */
export interface TableLineSpec {
  readonly start: Sector;
  readonly length: Sector;
  readonly type: string;
  readonly params: string;
}

interface TableEntry {
  readonly start: Sector;
  readonly length: Sector;
  readonly type: TargetType;
  readonly target: Target;
  readonly devices: BlockDevice[];
}

export interface TableEnv {
  deviceName: string;
  readOnly: boolean;
  restoring?: boolean;
  openDevice(spec: string, mode: "r" | "rw"): Promise<BlockDevice>;
  raiseEvent(): void;
  log(level: "info" | "warn" | "error", message: string, fields?: Record<string, unknown>): void;
}

/**
 * A constructed table (struct dm_table): targets in sector order, contiguous from 0. Bios are split at target
 * boundaries and at each target's maxIoSectors; a flush goes to every target.
 */
export class Table {
  private readonly starts: Sector[];

  private constructor(
    private readonly entries: TableEntry[],
    readonly readOnly: boolean,
    /** The lines as loaded (what restart persistence replays). */
    readonly spec: readonly TableLineSpec[],
  ) {
    this.starts = entries.map((e) => e.start);
  }

  /**
   * Validate and construct, as the kernel's table load does: contiguous from 0, no zero lengths, known types,
   * every constructor accepts its arguments. On any failure everything constructed so far is destroyed and the
   * error is thrown; nothing else changes.
   */
  static async load(lines: readonly TableLineSpec[], env: TableEnv): Promise<Table> {
    if (lines.length === 0) throw new DmError("EINVAL", "no targets specified");
    let next = 0;
    for (const [i, l] of lines.entries()) {
      if (!findTargetType(l.type)) throw new DmError("EINVAL", `table line ${i + 1}: unknown target type ${l.type}`);
      if (l.length === 0) throw new DmError("EINVAL", `table line ${i + 1}: zero-length target`);
      if (l.start !== next) {
        throw new DmError("EINVAL", l.start > next ? `table line ${i + 1}: gap in table (expected start ${next})` : `table line ${i + 1}: overlapping or out-of-order target (expected start ${next})`);
      }
      next = l.start + l.length;
      if (!(next <= MAX_DEVICE_SECTORS)) throw new DmError("EINVAL", `table line ${i + 1}: device larger than ${MAX_DEVICE_SECTORS} sectors (8 PiB)`);
    }
    const entries: TableEntry[] = [];
    try {
      for (const l of lines) {
        const type = findTargetType(l.type)!;
        const devices: BlockDevice[] = [];
        const ctx: TargetContext = {
          deviceName: env.deviceName,
          readOnly: env.readOnly,
          restoring: env.restoring ?? false,
          start: l.start,
          openDevice: async (spec, mode) => {
            const d = await env.openDevice(spec, mode);
            devices.push(d);
            return d;
          },
          raiseEvent: env.raiseEvent,
          log: (level, message, fields) => env.log(level, `${l.type}: ${message}`, fields),
        };
        let target: Target;
        try {
          target = await type.construct(ctx, splitArgs(l.params), l.length);
        } catch (err) {
          await closeAll(devices);
          if (err instanceof DmError) throw new DmError(err.errno, `${l.type}: ${err.message}`);
          throw err;
        }
        entries.push({ start: l.start, length: l.length, type, target, devices });
      }
    } catch (err) {
      await destroyEntries(entries);
      throw err;
    }
    return new Table(entries, env.readOnly, lines.map((l) => ({ ...l })));
  }

  get size(): Sector {
    const last = this.entries[this.entries.length - 1]!;
    return (last.start + last.length) as Sector;
  }

  get targetCount(): number {
    return this.entries.length;
  }

  /** Distinct target type names in table order. */
  get targetTypes(): string[] {
    return [...new Set(this.entries.map((e) => e.type.name))];
  }

  get logicalBlockSize(): number {
    let lbs = 512;
    for (const e of this.entries) {
      const t = e.target.logicalBlockSize ?? Math.max(512, ...e.devices.map((d) => d.logicalBlockSize));
      lbs = Math.max(lbs, t);
    }
    return lbs;
  }

  /** io_opt of the table: the least common multiple of its targets' (blk_stack_limits), 0 for none. */
  get optimalIoBytes(): number {
    let opt = 0;
    for (const e of this.entries) {
      const t = e.target.optimalIoBytes ?? 0;
      if (t > 0) opt = opt === 0 ? t : (opt / gcd(opt, t)) * t;
    }
    return Number.isSafeInteger(opt) ? opt : 0;
  }

  /** Underlying devices of every target (iterate_devices), deduplicated by label. */
  devices(): BlockDevice[] {
    const seen = new Map<string, BlockDevice>();
    for (const e of this.entries) for (const d of e.target.devices?.() ?? e.devices) seen.set(d.label, d);
    return [...seen.values()];
  }

  /** Map a bio addressed to the whole device. The caller has checked it lies inside the table. */
  map(bio: Bio): Promise<void> {
    if (bio.op === "flush") {
      if (this.entries.length === 1) return this.entries[0]!.target.map(bio);
      return Promise.all(this.entries.map((e) => e.target.map(bio))).then(() => undefined);
    }
    const i = this.indexOf(bio.sector);
    const e = this.entries[i]!;
    const end = bio.sector + bio.count;
    const max = e.target.maxIoSectors;
    if (end <= e.start + e.length && (max === undefined || bio.count <= max - ((bio.sector - e.start) % max))) {
      // The common case: the bio falls inside one target (and one max_io_len window).
      return e.target.map(e.start === 0 ? bio : { ...bio, sector: (bio.sector - e.start) as Sector });
    }
    return this.mapSplit(bio);
  }

  private async mapSplit(bio: Bio): Promise<void> {
    const parts: Promise<void>[] = [];
    let sector = bio.sector as number;
    const end = bio.sector + bio.count;
    let i = this.indexOf(bio.sector);
    while (sector < end) {
      const e = this.entries[i]!;
      let chunkEnd = Math.min(end, e.start + e.length);
      const max = e.target.maxIoSectors;
      if (max !== undefined) {
        const rel = sector - e.start;
        chunkEnd = Math.min(chunkEnd, e.start + (Math.floor(rel / max) + 1) * max);
      }
      const count = (chunkEnd - sector) as Sector;
      parts.push(e.target.map(subBio(bio, (sector - e.start) as Sector, count, sector - bio.sector)));
      sector = chunkEnd;
      if (sector >= e.start + e.length) i++;
    }
    await Promise.all(parts);
  }

  /**
   * Allocation of [sector, sector+count) across the targets it spans (see Target.allocation), merged; a prefix
   * of the range when the answer grows long.
   */
  async allocation(sector: Sector, count: Sector): Promise<AllocationRun[]> {
    const runs: AllocationRun[] = [];
    const end = sector + count;
    let pos: number = sector;
    for (let i = this.indexOf(sector); pos < end && i < this.entries.length && runs.length < MAX_ALLOCATION_RUNS; i++) {
      const e = this.entries[i]!;
      const upto = Math.min(end, e.start + e.length);
      const want = (upto - pos) as Sector;
      const part = e.target.allocation ? await e.target.allocation((pos - e.start) as Sector, want) : [dataRun(want)];
      let got = 0;
      for (const r of part) {
        const n = Math.min(r.count, want - got);
        pushRun(runs, { ...r, count: n as Sector });
        got += n;
        if (got >= want) break;
      }
      if (got < want) break; // the target answered for a prefix: so does the table
      pos = upto;
    }
    return runs;
  }

  private indexOf(sector: Sector): number {
    const s = this.starts;
    let lo = 0;
    let hi = s.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (s[mid]! <= sector) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The per-target status or table lines. */
  lines(type: "info" | "table", opts?: { noflush?: boolean }): TableLineSpec[] {
    return this.entries.map((e) => ({ start: e.start, length: e.length, type: e.type.name, params: e.target.status(type, opts) }));
  }

  /** The constructed targets and where they sit (for features that ask a target directly, e.g. NBD meta contexts). */
  targets(): ReadonlyArray<{ readonly start: Sector; readonly length: Sector; readonly type: string; readonly target: Target }> {
    return this.entries.map((e) => ({ start: e.start, length: e.length, type: e.type.name, target: e.target }));
  }

  /** Route a message to the target covering `sector` (dm's target_message). */
  async message(sector: Sector, argv: string[]): Promise<string | void> {
    if (sector >= this.size) throw new DmError("EINVAL", `Target message sector outside device.`);
    const e = this.entries[this.indexOf(sector)]!;
    if (!e.target.message) throw new DmError("EINVAL", `Target type ${e.type.name} does not support messages`);
    return e.target.message(argv);
  }

  async presuspend(opts: SuspendOptions): Promise<void> {
    for (const e of this.entries) await e.target.presuspend?.(opts);
  }

  async postsuspend(opts: SuspendOptions): Promise<void> {
    for (const e of this.entries) await e.target.postsuspend?.(opts);
  }

  async preresume(): Promise<void> {
    for (const e of this.entries) await e.target.preresume?.();
  }

  async resume(): Promise<void> {
    for (const e of this.entries) await e.target.resume?.();
  }

  /** dtr for every target, then close every underlying device. */
  async destroy(opts?: DestroyOptions): Promise<void> {
    await destroyEntries(this.entries, opts);
  }
}

async function destroyEntries(entries: readonly TableEntry[], opts?: DestroyOptions): Promise<void> {
  let first: unknown;
  for (const e of entries) {
    try {
      await e.target.destroy(opts);
    } catch (err) {
      first ??= err;
    }
    await closeAll(e.devices);
  }
  if (first) throw first;
}

async function closeAll(devices: readonly BlockDevice[]): Promise<void> {
  await Promise.all(devices.map((d) => d.close().catch(() => undefined)));
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}
