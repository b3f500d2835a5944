import { randomInt } from "node:crypto";
import type { Target, TargetContext, TargetType } from "./target.js";
import type { Bio } from "../io/bio.js";
import { remapBio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import { DmError } from "../core/errors.js";
import type { Sector } from "../core/units.js";
import { ArgSet, checkDeviceArea, openTargetDevice, scanSector, UINT_MAX, type DmArg } from "./kernel-args.js";

/** random_*_corrupt probabilities are parts per billion. */
const PROBABILITY_BASE = 1_000_000_000;

const ARG_FEATURE_COUNT: DmArg = { min: 0, max: 11, error: "Invalid number of feature args" };
const ARG_CORRUPT_BYTE: DmArg = { min: 1, max: UINT_MAX, error: "Invalid corrupt bio byte" };
const ARG_CORRUPT_VALUE: DmArg = { min: 0, max: 255, error: "Invalid corrupt value to write into bio byte (0-255)" };
const ARG_CORRUPT_FLAGS: DmArg = { min: 0, max: UINT_MAX, error: "Invalid corrupt bio flags mask" };
const ARG_RANDOM: DmArg = { min: 0, max: PROBABILITY_BASE, error: "Invalid random corrupt argument" };
// The kernel (6.12) validates the down interval with the up interval's dm_arg, hence the same text for both.
const ARG_INTERVAL: DmArg = { min: 0, max: UINT_MAX, error: "Invalid up interval" };

interface CorruptBioByte {
  /** 1-based byte of the bio's data to overwrite. */
  readonly byte: number;
  readonly dir: "r" | "w";
  readonly value: number;
  /** Only bios whose op|flags word has all these bits are corrupted (0: all). */
  readonly flags: number;
}

interface FlakeyFeatures {
  errorReads: boolean;
  dropWrites: boolean;
  errorWrites: boolean;
  corrupt?: CorruptBioByte;
  randomReadCorrupt: number;
  randomWriteCorrupt: number;
}

/**
 * dm-flakey: `flakey <dev> <offset> <up interval> <down interval> [<#feature args> [<feature>...]]`.
 * For <up> seconds from construction the device behaves like linear, then for <down> seconds it misbehaves as
 * the features say, and so on. Features: error_reads, drop_writes, error_writes,
 * corrupt_bio_byte <Nth byte> <r|w> <value> <flags>, random_read_corrupt <ppb>, random_write_corrupt <ppb>;
 * with none, all I/O errors while down. Parsing, reason texts and the re-emitted table are the kernel's (6.12).
 */
export const flakeyTarget: TargetType = {
  name: "flakey",
  version: [1, 5, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    if (args.length < 4) throw invalid("Invalid argument count");
    const startTime = performance.now();
    const as = new ArgSet(args);
    const devname = as.shift()!;
    const start = scanSector(as.shift());
    if (start === undefined) throw invalid("Invalid device sector");
    const up = as.read(ARG_INTERVAL);
    const down = as.read(ARG_INTERVAL);
    // Unsigned 32-bit arithmetic, as the kernel's.
    const period = (up + down) >>> 0;
    if (period === 0) throw invalid("Total (up + down) interval is zero");
    if (period < up) throw invalid("Interval overflow");
    const features = parseFeatures(as);
    const dev = await openTargetDevice(ctx, devname, "Device lookup failed");
    checkDeviceArea(dev, start, length);
    return new FlakeyTarget(dev, start, up, down, features, startTime);
  },
};

const invalid = (reason: string): DmError => new DmError("EINVAL", reason);

/** parse_features(). Arguments beyond the feature group are ignored, as the kernel does. */
function parseFeatures(as: ArgSet): FlakeyFeatures {
  const f: FlakeyFeatures = { errorReads: false, dropWrites: false, errorWrites: false, randomReadCorrupt: 0, randomWriteCorrupt: 0 };
  // The group count is an unsigned int in the kernel: a corrupt_bio_byte that overruns it wraps the count, and
  // parsing continues until the arguments run out ("Insufficient feature arguments"). `left !== 0` keeps that.
  let left = as.remaining > 0 ? as.readGroup(ARG_FEATURE_COUNT) : 0;
  while (left !== 0) {
    const name = as.shift();
    left--;
    if (name === undefined) throw invalid("Insufficient feature arguments");
    switch (name.toLowerCase()) {
      case "error_reads":
        if (f.errorReads) throw invalid("Feature error_reads duplicated");
        f.errorReads = true;
        continue;
      case "drop_writes":
        if (f.dropWrites) throw invalid("Feature drop_writes duplicated");
        f.dropWrites = true;
        if (f.errorWrites) throw invalid("Feature drop_writes conflicts with feature error_writes");
        continue;
      case "error_writes":
        if (f.errorWrites) throw invalid("Feature error_writes duplicated");
        f.errorWrites = true;
        if (f.dropWrites) throw invalid("Feature error_writes conflicts with feature drop_writes");
        continue;
      case "corrupt_bio_byte": {
        if (left === 0) throw invalid("Feature corrupt_bio_byte requires parameters");
        const byte = as.read(ARG_CORRUPT_BYTE);
        left--;
        const d = as.shift()?.toLowerCase();
        if (d !== "r" && d !== "w") throw invalid("Invalid corrupt bio direction (r or w)");
        left--;
        const value = as.read(ARG_CORRUPT_VALUE);
        left--;
        const flags = as.read(ARG_CORRUPT_FLAGS);
        left--;
        f.corrupt = { byte, dir: d, value, flags };
        continue;
      }
      case "random_read_corrupt":
        if (left === 0) throw invalid("Feature random_read_corrupt requires a parameter");
        f.randomReadCorrupt = as.read(ARG_RANDOM);
        left--;
        continue;
      case "random_write_corrupt":
        if (left === 0) throw invalid("Feature random_write_corrupt requires a parameter");
        f.randomWriteCorrupt = as.read(ARG_RANDOM);
        left--;
        continue;
      default:
        throw invalid("Unrecognised flakey feature requested");
    }
  }
  if (f.dropWrites && f.corrupt?.dir === "w") throw invalid("drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set");
  if (f.errorWrites && f.corrupt?.dir === "w") throw invalid("error_writes is incompatible with corrupt_bio_byte with the WRITE flag set");
  if (!f.errorReads && !f.dropWrites && !f.errorWrites && !f.corrupt && !f.randomReadCorrupt && !f.randomWriteCorrupt) {
    // No features: every I/O fails while down.
    f.errorReads = true;
    f.errorWrites = true;
  }
  return f;
}

/**
 * The part of the kernel's bi_opf a data bio here can carry, for corrupt_bio_byte's <flags> mask: the op code
 * (REQ_OP_READ 0, REQ_OP_WRITE 1) and REQ_FUA (bit 17). Only data bios are ever corrupted.
 */
const REQ_FUA = 1 << 17;
function opf(bio: Bio): number {
  return ((bio.op === "read" ? 0 : 1) | (bio.fua ? REQ_FUA : 0)) >>> 0;
}

class FlakeyTarget implements Target {
  constructor(
    private readonly dev: BlockDevice,
    private readonly start: Sector,
    private readonly up: number,
    private readonly down: number,
    private readonly f: FlakeyFeatures,
    private readonly startTime: number,
  ) {}

  get logicalBlockSize(): number {
    return this.dev.logicalBlockSize;
  }

  /** Whole seconds since construction (jiffies / HZ) decide the phase: down once past <up> in each period. */
  private isDown(): boolean {
    const elapsed = Math.floor((performance.now() - this.startTime) / 1000) >>> 0;
    return elapsed % ((this.up + this.down) >>> 0) >= this.up;
  }

  private remap(bio: Bio): Bio {
    return bio.op === "flush" ? bio : remapBio(bio, (this.start + bio.sector) as Sector);
  }

  async map(bio: Bio): Promise<void> {
    if (!this.isDown()) return this.dev.submit(this.remap(bio));
    const f = this.f;
    if (bio.op === "read") {
      if (f.errorReads) throw new DmError("EIO", "flakey: read while down");
      await this.dev.submit(this.remap(bio));
      // end_io: corrupt successful reads made while down.
      const c = f.corrupt;
      if (c && c.dir === "r" && this.flagsMatch(bio, c)) corruptByte(bio.data!, c.byte - 1, c.value);
      if (f.randomReadCorrupt && chance(f.randomReadCorrupt)) corruptRandom(bio.data!);
      return;
    }
    // Everything else (write, flush, discard, write_zeroes) is a write in the kernel's eyes.
    if (f.dropWrites) return; // acknowledged, never written
    if (f.errorWrites) throw new DmError("EIO", "flakey: write while down");
    if (bio.op !== "write") return this.dev.submit(this.remap(bio));
    const c = f.corrupt;
    const fixed = c !== undefined && c.dir === "w" && this.flagsMatch(bio, c);
    const random = f.randomWriteCorrupt > 0 && chance(f.randomWriteCorrupt);
    if (!fixed && !random) return this.dev.submit(this.remap(bio));
    // Corrupt a copy: the writer's buffer stays intact, only the device sees the bad byte.
    const data = Buffer.from(bio.data!);
    if (fixed) corruptByte(data, c.byte - 1, c.value);
    if (random) corruptRandom(data);
    return this.dev.submit({ ...this.remap(bio), data });
  }

  private flagsMatch(bio: Bio, c: CorruptBioByte): boolean {
    return ((opf(bio) & c.flags) >>> 0) === c.flags;
  }

  status(type: "info" | "table"): string {
    if (type === "info") return "";
    const f = this.f;
    const count = +f.errorReads + +f.dropWrites + +f.errorWrites + (f.corrupt ? 5 : 0) + (f.randomReadCorrupt ? 2 : 0) + (f.randomWriteCorrupt ? 2 : 0);
    let s = `${this.dev.label} ${this.start} ${this.up} ${this.down} ${count}`;
    if (f.errorReads) s += " error_reads";
    if (f.dropWrites) s += " drop_writes";
    else if (f.errorWrites) s += " error_writes";
    if (f.corrupt) s += ` corrupt_bio_byte ${f.corrupt.byte} ${f.corrupt.dir} ${f.corrupt.value} ${f.corrupt.flags}`;
    if (f.randomReadCorrupt) s += ` random_read_corrupt ${f.randomReadCorrupt}`;
    if (f.randomWriteCorrupt) s += ` random_write_corrupt ${f.randomWriteCorrupt}`;
    return s;
  }

  devices(): readonly BlockDevice[] {
    return [this.dev];
  }

  async destroy(): Promise<void> {}
}

/** Overwrite byte `index` of the bio's data, if the bio is that long. */
function corruptByte(data: Buffer, index: number, value: number): void {
  if (index < data.length) data[index] = value;
}

function corruptRandom(data: Buffer): void {
  if (data.length > 0) data[randomInt(data.length)] = randomInt(256);
}

function chance(partsPerBillion: number): boolean {
  return randomInt(PROBABILITY_BASE) < partsPerBillion;
}
