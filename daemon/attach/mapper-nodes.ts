import fs from "node:fs";
import path from "node:path";
import type { Logger } from "../core/log.js";
import { blockDevnoOf } from "./kernel-dev.js";
import { nativeAttach } from "./native-attach.js";

/** libdevmapper's defaults for nodes it creates itself (DM_DEVICE_UID/GID/MODE): root:disk 0660. */
const NODE_MODE = 0o660;

/**
 * The `$DM_DEV_DIR/mapper/NAME` nodes. Each is a block special file with the major:minor of the kernel device
 * the mapped device is attached to (loopN, nbdN, ublkbN), as libdevmapper makes them when udev does not:
 * `ls -l` shows a block device, and mount(8)/findmnt report /dev/mapper/NAME.
 */
export class MapperNodes {
  private readonly gid: number;

  constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {
    this.gid = groupId("disk") ?? 0;
  }

  pathOf(name: string): string {
    return path.join(this.dir, name);
  }

  /** Is there a correct node for `name` → major:minor? */
  isCorrect(name: string, major: number, minor: number): boolean {
    const d = blockDevnoOf(this.pathOf(name));
    return d !== undefined && d.major === major && d.minor === minor;
  }

  /** Make (or fix) the node for `name`. */
  ensure(name: string, major: number, minor: number): void {
    if (this.isCorrect(name, major, minor)) return;
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    const p = this.pathOf(name);
    this.unlinkIfNode(p);
    nativeAttach.mknodBlock(p, major, minor, NODE_MODE, this.gid);
    this.log.debug("node created", { path: p, devno: `${major}:${minor}` });
  }

  /** Remove the node for `name` if it is ours (a block node with that device number), or any block node when no devno is given. */
  remove(name: string, devno?: { major: number; minor: number }): void {
    this.removeAt(this.pathOf(name), devno);
  }

  /** remove() by full path (a node recorded by an earlier run, possibly under another DM_DEV_DIR). */
  removeAt(p: string, devno?: { major: number; minor: number }): void {
    const d = blockDevnoOf(p, lstat(p));
    if (!d) return;
    if (devno && (d.major !== devno.major || d.minor !== devno.minor)) return;
    this.unlinkIfNode(p);
    this.log.debug("node removed", { path: p });
  }

  /** Block nodes in the directory: name → devno (symlinks and other files are never touched). */
  list(): Map<string, { major: number; minor: number }> {
    const out = new Map<string, { major: number; minor: number }>();
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return out;
    }
    for (const n of names) {
      const p = this.pathOf(n);
      const d = blockDevnoOf(p, lstat(p));
      if (d) out.set(n, d);
    }
    return out;
  }

  private unlinkIfNode(p: string): void {
    const st = lstat(p);
    if (!st) return;
    // Never delete something a user put there that is not a device node.
    if (!st.isBlockDevice() && !st.isSymbolicLink()) throw Object.assign(new Error(`${p} exists and is not a device node`), { code: "EEXIST" });
    fs.unlinkSync(p);
  }
}

function lstat(p: string): fs.BigIntStats | undefined {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch {
    return undefined;
  }
}

function groupId(name: string): number | undefined {
  try {
    for (const line of fs.readFileSync("/etc/group", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === name && /^\d+$/.test(f[2] ?? "")) return Number(f[2]);
    }
  } catch {
    /* no /etc/group */
  }
  return undefined;
}
