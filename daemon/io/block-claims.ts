import fs from "node:fs";
import { DmError } from "../core/errors.js";

/**
 * Exclusive claims on the block devices under this daemon's tables, as the kernel's dm takes them
 * (dm_get_device opens with the mapped device as holder): while any table uses /dev/sdb, a mount, mkfs or
 * `tsdm bow-restore` of /dev/sdb fails with EBUSY, and a table cannot be built on a mounted or otherwise
 * claimed device. Linux claims a block device for an open file with O_EXCL; a second O_EXCL open of the same
 * device fails even in this process, while the kernel lets all tables of one dm share the claim. So the
 * daemon holds one O_EXCL descriptor per device, counted by its users, beside their ordinary descriptors.
 */
const claims = new Map<number, { fd: number; users: number }>();

/** A reference to the claim on one block device; release() exactly once. */
export interface BlockClaim {
  release(): void;
}

/** Claim the block device `path` (device number `rdev`) for a table: EBUSY when something else holds it. */
export function claimBlockDevice(path: string, rdev: number): BlockClaim {
  let claim = claims.get(rdev);
  if (!claim) {
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_EXCL); // libuv adds O_CLOEXEC
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === "EBUSY") throw new DmError("EBUSY", `${path} is in use: mounted, or claimed by another process or a kernel device`);
      throw err;
    }
    claim = { fd, users: 0 };
    claims.set(rdev, claim);
  }
  claim.users++;
  let released = false;
  const held = claim;
  return {
    release(): void {
      if (released) return;
      released = true;
      if (--held.users > 0) return;
      claims.delete(rdev);
      fs.closeSync(held.fd);
    },
  };
}
