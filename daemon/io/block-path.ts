import fs from "node:fs";
import { DmError } from "../core/errors.js";
import { major, minor } from "./file-device.js";

/**
 * The node of block device `maj:min`, for table arguments written as major:minor (what `dmsetup table` prints,
 * so `table | load` round-trips). udev's /dev/block/M:m links are the usual way; containers and minimal systems
 * often lack them, so the kernel's own name for the device (DEVNAME in sysfs) is tried under /dev too. Either
 * must be a block device with that very number: a stale link or a reused name is not the device asked for.
 */
export function blockDevicePath(maj: number, min: number, devDir = "/dev"): string {
  const candidates = [`${devDir}/block/${maj}:${min}`];
  const name = sysfsDevName(maj, min);
  if (name) candidates.push(`${devDir}/${name}`);
  for (const p of candidates) {
    try {
      const st = fs.statSync(p);
      if (st.isBlockDevice() && major(st.rdev) === maj && minor(st.rdev) === min) return p;
    } catch {
      // not there: try the next way
    }
  }
  throw new DmError("ENXIO", `no block device ${maj}:${min}`);
}

function sysfsDevName(maj: number, min: number): string | undefined {
  try {
    const uevent = fs.readFileSync(`/sys/dev/block/${maj}:${min}/uevent`, "utf8");
    const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
    // A kernel name is a relative path below /dev (e.g. "loop3", "nvme0n1p2", "mapper/x" never): no "..".
    return name && !name.split("/").includes("..") ? name : undefined;
  } catch {
    return undefined;
  }
}
