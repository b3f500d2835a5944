import type { MappedDevice } from "../device/mapped-device.js";
import type { Sector } from "../core/units.js";
import type { Bio } from "../io/bio.js";
import { writeZeroes } from "./zeroes.js";

/**
 * Requests that are not whole blocks, from clients that never agreed to block sizes.
 *
 * The NBD spec's default minimum block size is 1: a client that did not list NBD_INFO_BLOCK_SIZE in NBD_OPT_GO
 * (or that used NBD_OPT_EXPORT_NAME, which cannot carry it) may send any byte range, and a server SHOULD serve it.
 * Bios are whole blocks (`align` bytes: 512 or the table's logical block size), so such requests are served as
 * qemu's block layer serves them: reads of the covering blocks, and read-modify-write of the partial blocks at
 * either end of a write.
 *
 * Two RMW cycles on the same block must not interleave (each would write back the other's bytes as they were), so
 * RMW on one device is serialised. Aligned requests are not held back: one that overlaps an RMW in flight
 * overlaps its byte range too, and concurrent overlapping writes have no defined result in NBD.
 */

/** [start, end) of the whole blocks covering [offset, offset+length). */
export function cover(offset: number, length: number, align: number): { start: number; end: number } {
  const start = offset - (offset % align);
  const last = offset + length;
  const end = last % align === 0 ? last : last + align - (last % align);
  return { start, end };
}

export const isAligned = (offset: number, length: number, align: number): boolean => offset % align === 0 && length % align === 0;

const sectorsOf = (bytes: number): Sector => (bytes / 512) as Sector;

async function readBlocks(dev: MappedDevice, start: number, into: Buffer): Promise<void> {
  await dev.submit({ op: "read", sector: sectorsOf(start), count: sectorsOf(into.length), data: into, fua: false });
}

/** Reads [offset, offset+out.length) into `out` through one read of the covering blocks. */
export async function readUnaligned(dev: MappedDevice, offset: number, out: Buffer, align: number): Promise<void> {
  const { start, end } = cover(offset, out.length, align);
  const blocks = Buffer.allocUnsafe(end - start);
  await readBlocks(dev, start, blocks);
  blocks.copy(out, 0, offset - start, offset - start + out.length);
}

/** Per-device chain of RMW cycles (see the module comment). */
const rmwChains = new WeakMap<MappedDevice, Promise<void>>();

function serialised(dev: MappedDevice, cycle: () => Promise<void>): Promise<void> {
  const prev = rmwChains.get(dev) ?? Promise.resolve();
  const run = prev.then(cycle);
  const tail = run.catch(() => undefined);
  rmwChains.set(dev, tail);
  void tail.then(() => {
    if (rmwChains.get(dev) === tail) rmwChains.delete(dev);
  });
  return run;
}

/**
 * Fills the covering blocks of [offset, offset+length) in `blocks` (which starts at block boundary `start`) from
 * the device where the range leaves a block partly uncovered: the head block, the tail block, or both.
 */
async function readPartialEnds(dev: MappedDevice, blocks: Buffer, start: number, offset: number, length: number, align: number): Promise<void> {
  const end = start + blocks.length;
  if (offset !== start) await readBlocks(dev, start, blocks.subarray(0, align));
  const tailBlock = end - align;
  if ((offset + length) % align !== 0 && (tailBlock !== start || offset === start)) {
    await readBlocks(dev, tailBlock, blocks.subarray(tailBlock - start));
  }
}

/** Writes `data` at a byte offset: the partial blocks at either end are read, patched and written back whole. */
export function writeUnaligned(dev: MappedDevice, offset: number, data: Buffer, fua: boolean, align: number): Promise<void> {
  return serialised(dev, async () => {
    const { start, end } = cover(offset, data.length, align);
    const blocks = Buffer.allocUnsafe(end - start);
    await readPartialEnds(dev, blocks, start, offset, data.length, align);
    data.copy(blocks, offset - start);
    await dev.submit({ op: "write", sector: sectorsOf(start), count: sectorsOf(blocks.length), data: blocks, fua });
  });
}

/**
 * Zeroes a byte range: the whole blocks inside it as WRITE_ZEROES (written as zero buffers by targets that cannot
 * zero), the partial blocks at either end by read-modify-write.
 */
export async function zeroUnaligned(dev: MappedDevice, offset: number, length: number, fua: boolean, noUnmap: boolean, align: number): Promise<void> {
  const inner = innerBlocks(offset, length, align);
  if (inner.end > inner.start) {
    const bio: Bio = { op: "write_zeroes", sector: sectorsOf(inner.start), count: sectorsOf(inner.end - inner.start), fua, noUnmap };
    await writeZeroes(dev, bio);
  }
  const end = offset + length;
  const head = Math.min(end, inner.end > inner.start ? inner.start : end);
  if (head > offset) await writeUnaligned(dev, offset, Buffer.alloc(head - offset), fua, align);
  if (inner.end > inner.start && end > inner.end) await writeUnaligned(dev, inner.end, Buffer.alloc(end - inner.end), fua, align);
}

/** [start, end) of the whole blocks inside [offset, offset+length); empty (end ≤ start) when there are none. */
export function innerBlocks(offset: number, length: number, align: number): { start: number; end: number } {
  const start = offset % align === 0 ? offset : offset + align - (offset % align);
  const last = offset + length;
  return { start, end: last - (last % align) };
}
