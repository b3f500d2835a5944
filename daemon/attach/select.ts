import type { Logger } from "../core/log.js";
import { FuseLoopAttacher } from "./fuse-loop.js";
import { KernelNbdAttacher } from "./kernel-nbd.js";
import { UblkAttacher } from "./ublk.js";
import type { AttachMethod, AttachMode, Attacher } from "./types.js";

export interface AttacherEnv {
  runDir: string;
  log: Logger;
}

/** Why each method cannot be used on this machine (undefined: usable). */
export function probeMethods(): Record<AttachMethod, string | undefined> {
  return {
    ublk: UblkAttacher.unavailableReason(),
    nbd: KernelNbdAttacher.unavailableReason(),
    fuse: FuseLoopAttacher.unavailableReason(),
  };
}

/**
 * --attach auto: the fastest path this kernel offers, ublk > kernel nbd > nbdfuse + loop. An explicit
 * method that cannot work is an error, not a silent fallback.
 */
export function chooseAttacher(mode: Exclude<AttachMode, "none">, env: AttacherEnv): { attacher: Attacher; why: string } | { error: string } {
  const probe = probeMethods();
  const order: AttachMethod[] = mode === "auto" ? ["ublk", "nbd", "fuse"] : [mode];
  for (const m of order) {
    if (probe[m] !== undefined) continue;
    const skipped = order.slice(0, order.indexOf(m)).map((o) => `${o}: ${probe[o]}`);
    return { attacher: make(m, env), why: mode === "auto" ? (skipped.length ? `auto (${skipped.join("; ")})` : "auto") : "requested" };
  }
  return { error: `cannot attach kernel block devices (--attach ${mode}): ${order.map((o) => `${o}: ${probe[o]}`).join("; ")}` };
}

/** The error an explicit --attach method would fail with here, checked before the daemon binds anything. */
export function attachModeError(mode: AttachMode): string | undefined {
  if (mode === "none" || mode === "auto") return undefined;
  const why = probeMethods()[mode];
  return why === undefined ? undefined : `cannot attach kernel block devices (--attach ${mode}): ${mode}: ${why}`;
}

function make(m: AttachMethod, env: AttacherEnv): Attacher {
  switch (m) {
    case "ublk":
      return new UblkAttacher({ log: env.log });
    case "nbd":
      return new KernelNbdAttacher({ log: env.log });
    case "fuse":
      return new FuseLoopAttacher({ runDir: env.runDir, log: env.log });
  }
}
