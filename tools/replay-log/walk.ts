/**
 * Check points for --check/--fsck and the crash-consistency walk (--walk).
 *
 * The walk replays the log from the start position and stops at every check point (by default each FLUSH, FUA
 * and MARK entry: the moments a crash leaves the device in a state the filesystem promised to survive, and the
 * points a test named), plus the last entry replayed. At each one it fsyncs the replay image, makes a throw-away
 * copy of it (a reflink where the filesystem can; a block device is checked in place, so the command must not
 * write to it) and runs the check command through /bin/sh with '{}' replaced by the copy's path. The copy lets a
 * check mount, replay a journal or repair without disturbing the rest of the walk. The first failing entry is
 * reported ("first failing entry: N@pos (FLAGS)") and the walk exits 1; exit 0 when every point passes.
 * The command also sees TSDM_REPLAY_IMAGE (the image path) and TSDM_REPLAY_ENTRY (the entry index).
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { LogFlag } from "../../daemon/targets/log-writes/format.js";
import { parseCUnsigned } from "./getopt.js";

export interface CheckPoints {
  /** Check after entries carrying any of these flags. */
  readonly flags: number;
  /** Check after every N-th entry replayed (0: never). */
  readonly every: bigint;
}

/** `--check` values: N, flush, fua, discard, mark, or a comma-separated list of them (tsdm extension). */
export function parseCheckPoints(text: string): CheckPoints | undefined {
  let flags = 0;
  let every = 0n;
  for (const part of text.split(",")) {
    if (part === "flush") flags |= LogFlag.FLUSH;
    else if (part === "fua") flags |= LogFlag.FUA;
    else if (part === "discard") flags |= LogFlag.DISCARD;
    else if (part === "mark") flags |= LogFlag.MARK;
    else {
      const n = parseCUnsigned(part);
      if (!n) return undefined; // replay-log rejects 0 too
      every = n;
    }
  }
  return { flags, every };
}

export function isCheckPoint(p: CheckPoints, flags: number, replayedCount: bigint): boolean {
  return (flags & p.flags) !== 0 || (p.every !== 0n && replayedCount % p.every === 0n);
}

/** Run `command` via /bin/sh (like system()); true when it exits 0. In walk mode '{}' is replaced by `image`. */
export function runCheckCommand(command: string, image: string, entry: number, substitute: boolean): boolean {
  const cmd = substitute ? command.split("{}").join(shellQuote(image)) : command;
  const r = spawnSync("/bin/sh", ["-c", cmd], {
    stdio: "inherit",
    env: { ...process.env, TSDM_REPLAY_IMAGE: image, TSDM_REPLAY_ENTRY: String(entry) },
  });
  return r.status === 0;
}

/** A copy of the replay image for one check (reflinked when possible), or the device itself for block devices. */
export function snapshotForCheck(image: string, isBlockDevice: boolean): { path: string; cleanup: () => void } {
  if (isBlockDevice) return { path: image, cleanup: () => undefined };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsdm-walk-"));
  const copy = path.join(dir, path.basename(image));
  fs.copyFileSync(image, copy, fs.constants.COPYFILE_FICLONE);
  return { path: copy, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
