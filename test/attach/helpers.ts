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
