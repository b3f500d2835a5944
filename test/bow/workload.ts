import fs from "node:fs";
import path from "node:path";
import { makeRegistry } from "../helpers/registry.js";
import { DmError } from "../../daemon/core/errors.js";
import { ShortReadError, ShortWriteError, type RawDevice } from "../../daemon/targets/bow/raw-device.js";
import { createBow, discard, pattern, rng, setState, write } from "./helpers.js";

/**
 * A checkpointed device image made by the real bow target: a patterned file, random trims in state 0, state 1,
 * then random writes and discards all over the device (block 0, free space, backups, the live copy of
 * block 0...). Returns the image as it was at the checkpoint and which blocks were in use then.
 */
export interface Checkpointed {
  file: string;
  blockSize: number;
  /** The whole file at the moment state 1 was entered. */
  before: Buffer;
  /** Blocks not trimmed at the checkpoint (what a restore must bring back). */
  inUse: number[];
  /** The file after the workload (the raw device with the log). */
  after: Buffer;
  writes: number;
}

export async function makeCheckpointed(dir: string, opts: { blockSize: number; seed: number; ops: number; sectors?: number; freeFraction?: number }): Promise<Checkpointed> {
  const sectors = opts.sectors ?? 4096;
  const spb = opts.blockSize / 512;
  const blocks = sectors / spb;
  const file = path.join(dir, `ckpt-${opts.blockSize}-${opts.seed}`);
  const init = Buffer.alloc(sectors * 512);
  for (let s = 0; s < sectors; s++) pattern(1, 1000 + s).copy(init, s * 512);
  fs.writeFileSync(file, init);
  const reg = makeRegistry();
  const dev = await createBow(reg, `ckpt${opts.seed}`, file, sectors, `1 block_size:${opts.blockSize}`);
  const r = rng(opts.seed);
  const free = new Set<number>();
  const want = Math.floor(blocks * (opts.freeFraction ?? 0.4));
  while (free.size < want) {
    const a = 1 + Math.floor(r() * (blocks - 1));
    const n = Math.min(blocks - a, 1 + Math.floor(r() * 12));
    await discard(dev, a * spb, n * spb);
    for (let b = a; b < a + n; b++) free.add(b);
  }
  // Writes in state 0 into free space un-trim it (the filesystem took those blocks).
  for (let i = 0; i < 5; i++) {
    const a = 1 + Math.floor(r() * (blocks - 1));
    await write(dev, a * spb, pattern(spb, 5000 + i));
    free.delete(a);
  }
  const before = fs.readFileSync(file);
  await setState(dev, "1");
  let writes = 0;
  for (let i = 0; i < opts.ops; i++) {
    if (i % 25 === 12) {
      // Overwrite the live copy of block 0 where the log says it is (it moves), and block 0 itself.
      const fd = fs.openSync(file, "r");
      const hdr = Buffer.alloc(28);
      fs.readSync(fd, hdr, 0, 28, 0);
      fs.closeSync(fd);
      const s0 = Number(hdr.readBigUInt64LE(20));
      try {
        await write(dev, s0, pattern(spb, 200000 + i));
      } catch (err) {
        if (!(err instanceof DmError && err.errno === "ENOSPC")) throw err;
      }
      await write(dev, 0, pattern(spb, 300000 + i)); // needs no space
    }
    const start = Math.floor(r() * sectors);
    const count = Math.min(sectors - start, 1 + Math.floor(r() * (r() < 0.2 ? 64 : 12)));
    try {
      if (r() < 0.1) await discard(dev, start, count);
      else await write(dev, start, pattern(count, 100000 + i));
      writes++;
    } catch (err) {
      if (!(err instanceof DmError && err.errno === "ENOSPC")) throw err;
    }
  }
  await reg.remove(dev);
  const inUse: number[] = [];
  for (let b = 0; b < blocks; b++) if (!free.has(b)) inUse.push(b);
  return { file, blockSize: opts.blockSize, before, inUse, after: fs.readFileSync(file), writes };
}

export class CrashError extends Error {}

/**
 * An image in memory that "crashes" (throws) at a chosen write or sync. With `dropUnsynced`, writes since the
 * last sync are undone at the crash, as a power cut could; without, they stay, as after a process kill.
 */
export class MemRawDevice implements RawDevice {
  readonly path = "mem";
  steps = 0;
  private unsynced: { pos: number; old: Buffer }[] = [];

  constructor(
    readonly image: Buffer,
    private readonly crashAt = 0,
    private readonly dropUnsynced = false,
  ) {}

  get size(): number {
    return this.image.length;
  }

  read(pos: number, length: number): Buffer {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + length > this.image.length) throw new ShortReadError(`read beyond the end at ${pos}`);
    return Buffer.from(this.image.subarray(pos, pos + length));
  }

  write(pos: number, data: Buffer): void {
    this.step();
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + data.length > this.image.length) throw new ShortWriteError(`write beyond the end at ${pos}`);
    this.unsynced.push({ pos, old: Buffer.from(this.image.subarray(pos, pos + data.length)) });
    data.copy(this.image, pos);
  }

  sync(): void {
    this.step();
    this.unsynced = [];
  }

  close(): void {}

  private step(): void {
    if (++this.steps === this.crashAt) {
      if (this.dropUnsynced) for (const u of this.unsynced.reverse()) u.old.copy(this.image, u.pos);
      this.unsynced = [];
      throw new CrashError(`crash at step ${this.crashAt}`);
    }
  }
}
