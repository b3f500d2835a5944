import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { DmError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { execOk, execTool, settlesWithin, sleep, waitFor } from "./exec.js";
import { sysBlockDevno } from "./kernel-dev.js";
import type { Attacher, Attachment, AttachRequest, KernelNode } from "./types.js";

const READY_TIMEOUT_MS = 15_000;
const DISK_FILE = "disk";

/**
 * The fallback attach path for kernels without nbd and ublk: `nbdfuse` presents the export as a file on a
 * private FUSE mount, and a loop device with direct I/O turns that file into a block device.
 *
 *   /dev/loopN  --(direct I/O, discard = punch hole)-->  RUNDIR/dm-MINOR/disk (FUSE)  --nbdfuse-->  NBD export
 *
 * Direct I/O keeps the loop device from caching a second copy of the data in the FUSE file's page cache,
 * so flush/FUA reach the export as NBD_CMD_FLUSH. Discards become fallocate(PUNCH_HOLE) on the FUSE file,
 * which nbdfuse sends as NBD_CMD_TRIM.
 */
export class FuseLoopAttacher implements Attacher {
  readonly method = "fuse" as const;

  /** NBD connections nbdfuse opens (-C; tsdmd's exports advertise CAN_MULTI_CONN, so exactly this many). */
  private readonly connections: number;

  constructor(private readonly opts: { runDir: string; log: Logger; connections?: number }) {
    this.connections = opts.connections ?? 4;
  }

  /** Why this path cannot work here, or undefined when it can. */
  static unavailableReason(): string | undefined {
    if (process.getuid?.() !== 0) return "loop devices need root";
    if (!fs.existsSync("/dev/fuse")) return "/dev/fuse is missing";
    if (!fs.existsSync("/dev/loop-control")) return "/dev/loop-control is missing (no loop driver)";
    for (const tool of ["nbdfuse", "losetup", "fusermount3"]) {
      if (!onPath(tool)) return `${tool} is not installed`;
    }
    return undefined;
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    const dir = path.join(this.opts.runDir, `dm-${req.device.minor}`);
    const pidFile = `${dir}.pid`; // outside the mount point: the mount hides the directory's contents
    await teardownMountDir(dir, this.opts.log);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.rmSync(pidFile, { force: true });
    const file = path.join(dir, DISK_FILE);
    const uri = `nbd+unix:///${encodeURIComponent(req.export.name)}?socket=${encodeURIComponent(req.export.socket)}`;
    const args = ["-C", String(this.connections), "-P", pidFile, ...(req.readOnly ? ["-r"] : []), file, uri];
    // Own session: a Ctrl-C aimed at tsdmd must not kill the FUSE server under a mounted filesystem.
    const proc = spawn("nbdfuse", args, { detached: true, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr!.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4096)));
    const exited = new Promise<void>((resolve) => proc.once("close", () => resolve()));
    proc.once("error", (e) => (stderr += e.message));
    const fuse = { dir, pidFile, proc, exited };

    try {
      const ready = await waitFor(() => (fs.existsSync(pidFile) ? true : proc.exitCode !== null || proc.signalCode !== null ? false : undefined), READY_TIMEOUT_MS);
      if (ready !== true) throw new DmError("EIO", `nbdfuse for ${req.export.name} failed to start: ${stderr.trim() || (ready === undefined ? "timed out" : `exit ${proc.exitCode}`)}`);
      const size = fs.statSync(file).size;
      if (size !== req.sizeBytes) throw new DmError("EIO", `nbdfuse file is ${size} bytes, expected ${req.sizeBytes}`);
    } catch (err) {
      await stopFuse(fuse, this.opts.log);
      throw err;
    }

    let loop: string;
    try {
      const lsArgs = ["--direct-io=on", "--show", "-f", ...(req.readOnly ? ["-r"] : [])];
      if (req.logicalBlockSize !== 512) lsArgs.push("--sector-size", String(req.logicalBlockSize));
      loop = (await execOk("losetup", [...lsArgs, file])).trim();
      if (!/^\/dev\/loop\d+$/.test(loop)) throw new DmError("EIO", `losetup printed an unexpected device name: ${loop}`);
    } catch (err) {
      await stopFuse(fuse, this.opts.log);
      throw err;
    }
    const kname = path.basename(loop);
    const devno = sysBlockDevno(kname);
    if (readSys(`/sys/block/${kname}/loop/dio`) !== "1") {
      this.opts.log.warn("loop device fell back to buffered I/O over the FUSE file", { device: req.device.name, loop });
    }
    const node: KernelNode = { path: loop, major: devno.major, minor: devno.minor, method: "fuse" };
    const log = this.opts.log;
    let detached: Promise<void> | undefined;
    return {
      node,
      sizeBytes: req.sizeBytes,
      readOnly: req.readOnly,
      nbdSessions: this.connections,
      detach: () => (detached ??= (async () => {
        await detachLoop(loop, file, log);
        await stopFuse(fuse, log);
      })()),
    };
  }

  /** Loop devices and FUSE mounts of a daemon that died: detach what nobody uses, report the rest. */
  async cleanupStale(): Promise<void> {
    let entries: string[];
    try {
      entries = fs.readdirSync(this.opts.runDir);
    } catch {
      return;
    }
    for (const e of entries) {
      if (!/^dm-\d+$/.test(e)) continue;
      const dir = path.join(this.opts.runDir, e);
      for (const loop of loopsBackedBy(path.join(dir, DISK_FILE))) await detachLoop(loop, path.join(dir, DISK_FILE), this.opts.log).catch((err) => this.opts.log.error("stale loop device left attached", { loop, error: String(err) }));
      await teardownMountDir(dir, this.opts.log);
      fs.rmSync(`${dir}.pid`, { force: true });
    }
  }
}

interface FuseServer {
  dir: string;
  pidFile: string;
  proc: ChildProcess;
  exited: Promise<void>;
}

/** Loop devices whose backing file is `file` (from sysfs, so deleted or stale FUSE files still match). */
function loopsBackedBy(file: string): string[] {
  const out: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync("/sys/block").filter((n) => /^loop\d+$/.test(n));
  } catch {
    return out;
  }
  for (const n of names) {
    const backing = readSys(`/sys/block/${n}/loop/backing_file`);
    if (backing === file || backing === `${file} (deleted)`) out.push(`/dev/${n}`);
  }
  return out;
}

async function detachLoop(loop: string, file: string, log: Logger): Promise<void> {
  const kname = path.basename(loop);
  const bound = (): boolean => {
    const b = readSys(`/sys/block/${kname}/loop/backing_file`);
    return b === file || b === `${file} (deleted)`;
  };
  if (!bound()) return;
  const r = await execTool("losetup", ["-d", loop]);
  if (r.code !== 0 && bound()) throw new DmError("EBUSY", `losetup -d ${loop}: ${r.stderr.trim()}`);
  // LOOP_CLR_FD completes at the last close; an opener we did not see would turn it into autoclear.
  if ((await waitFor(() => (bound() ? undefined : true), 5_000)) === undefined) {
    log.warn("loop device still bound after losetup -d (open elsewhere?)", { loop });
    throw new DmError("EBUSY", `${loop} is still in use`);
  }
}

/** Unmount the FUSE file system (nbdfuse then exits) and remove the mount point and pid file. */
async function stopFuse(f: FuseServer, log: Logger): Promise<void> {
  await teardownMountDir(f.dir, log);
  const gone = await settlesWithin(f.exited, 5_000);
  if (!gone) {
    log.warn("nbdfuse did not exit after unmount; terminating it", { pid: f.proc.pid });
    f.proc.kill("SIGTERM");
    await settlesWithin(f.exited, 2_000);
    if (f.proc.exitCode === null && f.proc.signalCode === null) f.proc.kill("SIGKILL");
    await f.exited;
  }
  fs.rmSync(f.pidFile, { force: true });
}

async function teardownMountDir(dir: string, log: Logger): Promise<void> {
  if (!fs.existsSync(dir)) return;
  for (let attempt = 0; isMountPoint(dir); attempt++) {
    const r = await execTool("fusermount3", ["-u", dir]);
    if (r.code === 0 || !isMountPoint(dir)) break;
    if (attempt >= 50) {
      // Still open (a loop device we failed to detach): unmount lazily so nothing stays visible.
      log.error("FUSE mount busy; unmounting lazily", { dir, error: r.stderr.trim() });
      await execTool("fusermount3", ["-u", "-z", dir]);
      break;
    }
    await sleep(100);
  }
  try {
    fs.rmdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") log.warn("cannot remove FUSE mount point", { dir, error: String(err) });
  }
}

function isMountPoint(dir: string): boolean {
  try {
    const target = path.resolve(dir); // not realpath: a dead FUSE mount fails every lookup with ENOTCONN
    return fs
      .readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .some((l) => l.split(" ")[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === target);
  } catch {
    return false;
  }
}

function readSys(p: string): string | undefined {
  try {
    return fs.readFileSync(p, "utf8").trim();
  } catch {
    return undefined;
  }
}

function onPath(tool: string): boolean {
  return (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":").some((d) => {
    try {
      fs.accessSync(path.join(d, tool), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
