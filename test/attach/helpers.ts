import fs from "node:fs";
import { nativeAttach } from "../../daemon/attach/native-attach.js";
import { run } from "../helpers/daemon.js";

/** Run a shell command (asynchronously: the NBD server lives in this process); throw with its stderr on failure. */
export async function sh(cmd: string, timeoutMs = 60_000): Promise<string> {
  const r = await run("sh", ["-c", cmd], { timeoutMs });
  if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

export const devnoOf = (st: fs.Stats): { major: number; minor: number } => nativeAttach.splitDevno(st.rdev);

/**
 * Everything an attach under `runDir` could leave behind: loop devices backed by files there, mounts there,
 * nbdfuse processes serving there, files there.
 */
export function attachLeftovers(runDir: string): string[] {
  const out: string[] = [];
  for (const n of fs.readdirSync("/sys/block").filter((n) => n.startsWith("loop"))) {
    try {
      const b = fs.readFileSync(`/sys/block/${n}/loop/backing_file`, "utf8").trim();
      if (b.startsWith(runDir)) out.push(`loop ${n} -> ${b}`);
    } catch {
      /* unbound */
    }
  }
  for (const l of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const mp = l.split(" ")[4];
    if (mp?.startsWith(runDir)) out.push(`mount ${mp}`);
  }
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (cmd[0]?.endsWith("nbdfuse") && cmd.some((a) => a.startsWith(runDir))) out.push(`process ${pid} ${cmd.join(" ")}`);
    } catch {
      /* exited */
    }
  }
  try {
    for (const e of fs.readdirSync(runDir)) out.push(`file ${runDir}/${e}`);
  } catch {
    /* no run dir */
  }
  return out;
}

/** pids of nbdfuse processes serving a mount under `runDir`. */
export function nbdfusePids(runDir: string): number[] {
  const out: number[] = [];
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (cmd[0]?.endsWith("nbdfuse") && cmd.some((a) => a.startsWith(runDir))) out.push(Number(pid));
    } catch {
      /* exited */
    }
  }
  return out;
}

/** A loop device binding: its name and diskseq (which changes at every configure, so it names this binding only). */
export interface LoopBinding {
  kname: string;
  diskseq: string;
}

export function loopBindingOf(devPath: string): LoopBinding {
  const kname = devPath.replace(/^.*\//, "");
  return { kname, diskseq: fs.readFileSync(`/sys/block/${kname}/diskseq`, "utf8").trim() };
}

/** Is this exact binding still there (bound, same diskseq)? */
export function stillBound(b: LoopBinding): boolean {
  try {
    fs.accessSync(`/sys/block/${b.kname}/loop/backing_file`);
    return fs.readFileSync(`/sys/block/${b.kname}/diskseq`, "utf8").trim() === b.diskseq;
  } catch {
    return false;
  }
}

/** Poll until `probe` is true (or throw after `ms`). */
export async function until(probe: () => boolean, ms = 10_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Last-resort cleanup after a test under `dir` (even one that failed half way): kill its nbdfuse processes,
 * lazily unmount whatever is mounted under it, and detach the loop bindings the test noted (only those:
 * loop devices of other users on this machine are never touched).
 */
export async function forceCleanup(dir: string, loops: readonly LoopBinding[]): Promise<void> {
  for (const pid of nbdfusePids(dir)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  for (const l of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n").reverse()) {
    const mp = l.split(" ")[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp?.startsWith(dir + "/")) await run("umount", ["-l", mp]);
  }
  for (const b of loops) if (stillBound(b)) await run("losetup", ["-d", `/dev/${b.kname}`]);
  for (const n of fs.readdirSync("/sys/block").filter((n) => n.startsWith("loop"))) {
    try {
      if (fs.readFileSync(`/sys/block/${n}/loop/backing_file`, "utf8").startsWith(dir + "/")) await run("losetup", ["-d", `/dev/${n}`]);
    } catch {
      /* unbound */
    }
  }
}

/** The loop binding a block node (/dev/mapper/NAME) points at. */
export function bindingOfNode(node: string): LoopBinding {
  const { major, minor } = devnoOf(fs.statSync(node));
  return loopBindingOf(fs.readlinkSync(`/sys/dev/block/${major}:${minor}`));
}
