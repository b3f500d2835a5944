import fs from "node:fs";
import path from "node:path";
import type { Logger } from "../core/log.js";
import type { AttachMethod } from "./types.js";

/**
 * One attachment as the daemon made it, kept in the state dir while it exists. After a crash the next start
 * reads these before attaching anything: every recorded /dev/mapper node goes (a kernel device freed by the
 * crash may meanwhile belong to another device, and the old node would write into it), and loop devices of
 * the fuse path are detached by name and diskseq, not by backing path (nbdfuse may have unmounted itself, and
 * the loop then shows `/disk`).
 */
export interface AttachRecord {
  device: string;
  method: AttachMethod;
  /** $DM_DEV_DIR/mapper/NAME as made. */
  node: string;
  /** The kernel block device (/dev/loop3) and its number. */
  kernel: { path: string; major: number; minor: number };
  /**
   * /sys/block/KNAME/diskseq when attached: the kernel bumps it every time a loop device is configured, so
   * KNAME + diskseq name this binding and no later one of the same loop device.
   */
  diskseq: string | undefined;
  /** Kernel device numbers mean nothing after a reboot. */
  bootId: string;
  /** The daemon that attached it (absent in records of older versions). */
  pid?: number;
  /**
   * ublk: the cookie the daemon put into the device's ublksrv_flags (UblkHandle.cookie). With `pid` it is how the
   * next start recognises the device the crash left behind: the kernel resets ublksrv_pid to -1 when it stops
   * the disk of a dead server.
   */
  ublkCookie?: string;
}

/** The records, one file per kernel device (`loop3.json`): an attach or detach rewrites one small file. */
export class AttachRecords {
  constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {}

  /**
   * Written (temp file + rename) before the node is made, so no node exists without its record. No fsync: a
   * record only has to outlive the daemon process; after a power loss the kernel devices are gone too.
   */
  async put(rec: AttachRecord): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = this.fileOf(rec.kernel.path);
    await fs.promises.writeFile(`${file}.tmp`, JSON.stringify(rec) + "\n", { mode: 0o600 });
    await fs.promises.rename(`${file}.tmp`, file);
  }

  async drop(kernelPath: string): Promise<void> {
    await fs.promises.rm(this.fileOf(kernelPath), { force: true });
  }

  /** Every record (start-up only); unreadable ones are logged and skipped. */
  list(): AttachRecord[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return [];
    }
    const out: AttachRecord[] = [];
    for (const n of names) {
      const p = path.join(this.dir, n);
      if (n.endsWith(".tmp")) {
        fs.rmSync(p, { force: true });
        continue;
      }
      try {
        out.push(JSON.parse(fs.readFileSync(p, "utf8")) as AttachRecord);
      } catch (err) {
        this.log.warn("unreadable attach record ignored", { file: p, error: String(err) });
        fs.rmSync(p, { force: true });
      }
    }
    return out;
  }

  private fileOf(kernelPath: string): string {
    return path.join(this.dir, `${path.basename(kernelPath)}.json`);
  }
}

/** The kernel's boot id (records from another boot name kernel devices that no longer exist). */
export function bootId(): string {
  try {
    return fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "";
  }
}

/** /sys/block/KNAME/diskseq, if the kernel has it (5.15+). */
export function diskseqOf(kname: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/block/${kname}/diskseq`, "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}
