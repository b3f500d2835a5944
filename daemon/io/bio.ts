import type { Sector } from "../core/units.js";

/**
 * A block I/O request, the unit every target maps (the kernel's struct bio, reduced to what tsdm needs).
 * NBD requests, stacked devices and targets all speak this one shape, so a target sees flush, FUA,
 * discard and write-zeroes exactly as the client sent them.
 */
export type BioOp = "read" | "write" | "flush" | "discard" | "write_zeroes";

export interface Bio {
  readonly op: BioOp;
  /** First sector, relative to the device (or target) the bio is addressed to. */
  readonly sector: Sector;
  /** Length in sectors; 0 for flush. */
  readonly count: Sector;
  /**
   * read: the buffer the data is read into (count * 512 bytes, filled by whoever serves the bio);
   * write: the payload (count * 512 bytes). Absent for flush, discard and write_zeroes.
   */
  readonly data?: Buffer;
  /** Forced unit access: the write must be durable when the bio completes (REQ_FUA). */
  readonly fua: boolean;
  /** write_zeroes only: the zeroed range must stay allocated (NBD_CMD_FLAG_NO_HOLE, REQ_NOUNMAP). */
  readonly noUnmap?: boolean;
}

/** A bio for [sector, sector+count) of `parent`, carrying the matching slice of its data. */
export function subBio(parent: Bio, sector: Sector, count: Sector, dataOffsetSectors: number): Bio {
  return {
    op: parent.op,
    sector,
    count,
    data: parent.data?.subarray(dataOffsetSectors * 512, (dataOffsetSectors + count) * 512),
    fua: parent.fua,
    noUnmap: parent.noUnmap,
  };
}

/** The same bio addressed at another sector (a remap, as dm-linear does). */
export function remapBio(bio: Bio, sector: Sector): Bio {
  return { op: bio.op, sector, count: bio.count, data: bio.data, fua: bio.fua, noUnmap: bio.noUnmap };
}

export const flushBio = (): Bio => ({ op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false });

export const carriesData = (op: BioOp): boolean => op === "read" || op === "write";
export const isWriteLike = (op: BioOp): boolean => op === "write" || op === "discard" || op === "write_zeroes";
