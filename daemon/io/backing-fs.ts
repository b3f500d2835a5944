import fs from "node:fs";
import path from "node:path";

/** Block devices whose I/O a userspace server does: loop (over a FUSE file: the fallback attach), nbd, ublk. */
const USERSPACE_SERVED = /^(?:loop|nbd|ublkb)\d+/;

/**
 * Whether the file system holding a file (its st_dev) sits, through any partitions, dm or md layers, on a
 * block device that userspace serves — possibly this daemon, as for a file on a file system mounted on
 * another tsdm device. Work on such a file may wait for this daemon's own event loop, so none of it may run
 * there (RWF_NOWAIT still waits for atime updates and block-layer tags). Device numbers without a block
 * device (major 0: tmpfs, overlayfs, btrfs's anonymous ones) are taken as not served.
 */
export function onUserspaceBlockDevice(major: number, minor: number): boolean {
  if (major === 0) return false;
  let sys: string;
  try {
    sys = fs.realpathSync(`/sys/dev/block/${major}:${minor}`);
  } catch {
    return true; // cannot tell: the cautious answer
  }
  return servedBelow(sys, new Set());
}

function servedBelow(sys: string, seen: Set<string>): boolean {
  if (seen.has(sys)) return false;
  seen.add(sys);
  // A partition's path runs through its disk (…/block/loop0/loop0p1).
  if (sys.split(path.sep).some((c) => USERSPACE_SERVED.test(c))) return true;
  let slaves: string[] = [];
  try {
    slaves = fs.readdirSync(path.join(sys, "slaves"));
  } catch {
    // no slaves directory: a partition, or a disk without holders
  }
  for (const s of slaves) {
    try {
      if (servedBelow(fs.realpathSync(path.join(sys, "slaves", s)), seen)) return true;
    } catch {
      return true;
    }
  }
  return false;
}
