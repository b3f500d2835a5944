import type { Bio } from "../io/bio.js";
import type { MappedDevice } from "../device/mapped-device.js";
import type { Sector } from "../core/units.js";
import { nbdErrorOf } from "./errno.js";
import { NbdErr } from "./protocol.js";

const CHUNK_SECTORS = 2048; // 1 MiB per write
let zeroChunk: Buffer | undefined;

/**
 * WRITE_ZEROES for a device whose targets cannot zero natively (they answered EOPNOTSUPP): write zero-filled
 * buffers, as blkdev_issue_zeroout falls back to writing zero pages. The FUA of the request applies to the last
 * write only, after every earlier one has completed (a flush-equivalent ordering for the whole range).
 */
async function writeZeroesFallback(dev: MappedDevice, bio: Bio): Promise<void> {
  zeroChunk ??= Buffer.alloc(CHUNK_SECTORS * 512);
  const end = bio.sector + bio.count;
  for (let s = bio.sector as number; s < end; s += CHUNK_SECTORS) {
    const count = Math.min(CHUNK_SECTORS, end - s);
    const last = s + count >= end;
    await dev.submit({ op: "write", sector: s as Sector, count: count as Sector, data: zeroChunk.subarray(0, count * 512), fua: last && bio.fua });
  }
}

/**
 * A write_zeroes bio, written as zero buffers when the target answers EOPNOTSUPP (as the block layer does for
 * REQ_OP_WRITE_ZEROES). A synchronous throw from a target becomes a rejection.
 */
export async function writeZeroes(dev: MappedDevice, bio: Bio): Promise<void> {
  try {
    await dev.submit(bio);
  } catch (err) {
    if (nbdErrorOf(err) !== NbdErr.ENOTSUP) throw err;
    await writeZeroesFallback(dev, bio);
  }
}
