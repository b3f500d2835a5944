import { spawn } from "node:child_process";
import { DmError, type Errno } from "../core/errors.js";

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Run a helper program to completion, asynchronously: the daemon's own NBD server must keep answering while
 * nbdfuse or losetup talk to it, so a synchronous spawn would deadlock.
 */
export function execTool(cmd: string, args: readonly string[], timeoutMs = 30_000): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new DmError((e as NodeJS.ErrnoException).code === "ENOENT" ? "ENOENT" : "EIO", `${cmd}: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/** execTool that fails with a DmError carrying the tool's own message. */
export async function execOk(cmd: string, args: readonly string[], errno: Errno = "EIO", timeoutMs?: number): Promise<string> {
  const r = await execTool(cmd, args, timeoutMs);
  if (r.code !== 0) throw new DmError(errno, `${cmd} ${args.join(" ")}: ${r.stderr.trim() || `exit status ${r.code}`}`);
  return r.stdout;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `p`'s outcome if it settles within `ms`, else false; the timer never outlives the race (daemon exit). */
export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Poll `probe` until it returns a value (not undefined) or `timeoutMs` passes. */
export async function waitFor<T>(probe: () => T | undefined | Promise<T | undefined>, timeoutMs: number, stepMs = 20): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() >= deadline) return undefined;
    await sleep(stepMs);
  }
}
