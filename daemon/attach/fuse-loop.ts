import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { DmError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { execOk, execTool, settlesWithin, sleep, waitFor } from "./exec.js";
import { sysBlockDevno } from "./kernel-dev.js";
import { bootId, diskseqOf, type AttachRecord } from "./records.js";
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
    const binding: LoopBinding = { path: loop, kname, diskseq: diskseqOf(kname), file };
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
        await detachLoop(binding, log);
        await stopFuse(fuse, log);
      })()),
    };
  }

  /**
   * Loop devices and FUSE mounts of a daemon that died (records are handled before, by releaseRecordedLoop):
   * loops still backed by a file here, then every mount point here, live or dead, and the directories.
   */
  async cleanupStale(): Promise<void> {
    const dirs = new Set(mountPointsUnder(this.opts.runDir));
    try {
      for (const e of fs.readdirSync(this.opts.runDir)) if (/^dm-\d+$/.test(e)) dirs.add(path.join(this.opts.runDir, e));
    } catch {
      /* no run dir yet */
    }
    for (const dir of dirs) {
      const file = path.join(dir, DISK_FILE);
      for (const b of loopsBackedBy(file)) await detachLoop(b, this.opts.log).catch((err) => this.opts.log.error("stale loop device left attached", { loop: b.path, error: String(err) }));
      await teardownMountDir(dir, this.opts.log);
      fs.rmSync(`${dir}.pid`, { force: true });
    }
  }
}

/**
 * Detach the loop device of a recorded fuse attachment if that very binding (name + diskseq, this boot) is
 * still there: after nbdfuse unmounted itself its backing file reads `/disk`, so the path cannot tell.
 * Returns false if it is still bound afterwards (in use: a file system is still mounted on it).
 */
export async function releaseRecordedLoop(rec: AttachRecord, log: Logger): Promise<boolean> {
  if (rec.method !== "fuse" || rec.bootId !== bootId() || rec.diskseq === undefined) return true;
  const b: LoopBinding = { path: rec.kernel.path, kname: path.basename(rec.kernel.path), diskseq: rec.diskseq, file: undefined };
  if (!loopBound(b)) return true;
  log.info("detaching the loop device of a previous run", { device: rec.device, loop: b.path });
  try {
    await detachLoop(b, log);
    return true;
  } catch (err) {
    log.error("loop device of a previous run is still in use; it goes once its user closes it", { device: rec.device, loop: b.path, error: String(err) });
    return !loopBound(b);
  }
}

/** A configured loop device: diskseq names this configuration of it (it changes at every LOOP_CONFIGURE). */
interface LoopBinding {
  path: string;
  kname: string;
  diskseq: string | undefined;
  /** The backing file we gave it: the identity on kernels without diskseq (< 5.15). */
  file: string | undefined;
}

function loopBound(b: LoopBinding): boolean {
  const backing = readSys(`/sys/block/${b.kname}/loop/backing_file`);
  if (backing === undefined) return false; // no loop/ directory: not configured
  if (b.diskseq !== undefined) return diskseqOf(b.kname) === b.diskseq;
  return backing === b.file || backing === `${b.file} (deleted)`;
}

interface FuseServer {
  dir: string;
  pidFile: string;
  proc: ChildProcess;
  exited: Promise<void>;
}

/** Loop devices whose backing file is `file` (from sysfs, so deleted or stale FUSE files still match). */
function loopsBackedBy(file: string): LoopBinding[] {
  const out: LoopBinding[] = [];
  let names: string[];
  try {
    names = fs.readdirSync("/sys/block").filter((n) => /^loop\d+$/.test(n));
  } catch {
    return out;
  }
  for (const n of names) {
    const backing = readSys(`/sys/block/${n}/loop/backing_file`);
    if (backing === file || backing === `${file} (deleted)`) out.push({ path: `/dev/${n}`, kname: n, diskseq: diskseqOf(n), file });
  }
  return out;
}

async function detachLoop(b: LoopBinding, log: Logger): Promise<void> {
  if (!loopBound(b)) return;
  const r = await execTool("losetup", ["-d", b.path]);
  if (r.code !== 0 && loopBound(b)) throw new DmError("EBUSY", `losetup -d ${b.path}: ${r.stderr.trim()}`);
  // LOOP_CLR_FD completes at the last close; an opener we did not see would turn it into autoclear.
  if ((await waitFor(() => (loopBound(b) ? undefined : true), 5_000)) === undefined) {
    log.warn("loop device still bound after losetup -d (open elsewhere?)", { loop: b.path });
    throw new DmError("EBUSY", `${b.path} is still in use`);
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

/**
 * Unmount the FUSE file system at `dir` if one is mounted there (nbdfuse then exits) and remove the directory.
 * Mount points come from /proc/self/mountinfo: on a dead FUSE mount (nbdfuse gone) every lookup fails with
 * ENOTCONN, so existsSync/stat would say there is nothing. A dead mount is unmounted lazily at once (it serves
 * nothing; waiting cannot make it less busy).
 */
async function teardownMountDir(dir: string, log: Logger): Promise<void> {
  for (let attempt = 0; isMountPoint(dir); attempt++) {
    if (attempt >= 50) {
      // Still open (a loop device we failed to detach): unmount lazily so nothing stays visible.
      log.error("FUSE mount busy; unmounting lazily", { dir });
      await execTool("umount", ["-l", dir]);
      break;
    }
    const r = await execTool("fusermount3", (await isDeadMount(dir)) ? ["-u", "-z", dir] : ["-u", dir]);
    if (r.code !== 0 && isMountPoint(dir)) await sleep(100);
  }
  try {
    fs.rmdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") log.warn("cannot remove FUSE mount point", { dir, error: String(err) });
  }
}

/** A FUSE mount whose server is gone. The stat runs on the thread pool: a live mount is served by nbdfuse, never block the loop on it. */
function isDeadMount(dir: string): Promise<boolean> {
  return fs.promises.stat(dir).then(
    () => false,
    (err: NodeJS.ErrnoException) => err.code === "ENOTCONN",
  );
}

function mountPoints(): string[] {
  try {
    return fs
      .readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[4])
      .filter((p): p is string => !!p)
      .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  } catch {
    return [];
  }
}

function isMountPoint(dir: string): boolean {
  const target = path.resolve(dir); // not realpath: a dead FUSE mount fails every lookup with ENOTCONN
  return mountPoints().includes(target);
}

function mountPointsUnder(dir: string): string[] {
  const prefix = path.resolve(dir) + "/";
  return [...new Set(mountPoints().filter((p) => p.startsWith(prefix)))];
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
