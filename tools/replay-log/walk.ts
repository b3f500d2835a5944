/**
 * Check points for --check/--fsck and the crash-consistency walk (--walk).
 *
 * The walk replays the log from the start position and stops at every check point (by default each FLUSH, FUA
 * and MARK entry: the moments a crash leaves the device in a state the filesystem promised to survive, and the
 * points a test named), plus the last entry replayed. --check-from-mark/--check-from-entry make the points before
 * that entry plain replay (the mkfs before a test's first mark is not crash-consistent). At each point it fsyncs
 * the replay image, makes a throw-away snapshot of it (a reflink where the filesystem can, else a sparse copy of
 * its data extents) and runs the check command through /bin/sh with '{}' replaced by the snapshot's path. The
 * snapshot lets a check mount, replay a journal or repair without disturbing the rest of the walk. A block device,
 * or any image with --check-in-place, is checked as it is: the command must not write to it. The first failing
 * entry is reported ("first failing entry: N@pos (FLAGS)") and the walk exits 1; exit 0 when every point passes.
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

/** The snapshot of the replay image for a check could not be made. */
export class SnapshotError extends Error {
  override readonly name = "SnapshotError";
}

/**
 * A throw-away copy of the replay image for one check: beside the image (same filesystem, so a reflink is
 * possible; os.tmpdir() when that directory is not writable), copied by cp --reflink=auto --sparse=always, which
 * clones where the filesystem can and otherwise copies only the data extents (SEEK_DATA/SEEK_HOLE), keeping holes
 * (a plain copy would write the whole image out at every check point). `inPlace` (or a block device): the image
 * itself, for a command that only reads.
 */
export function snapshotForCheck(image: string, inPlace: boolean): { path: string; cleanup: () => void } {
  if (inPlace) return { path: image, cleanup: () => undefined };
  let dir: string;
  try {
    dir = fs.mkdtempSync(path.join(path.dirname(path.resolve(image)), ".tsdm-walk-"));
  } catch {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsdm-walk-"));
  }
  const cleanup = (): void => fs.rmSync(dir, { recursive: true, force: true });
  const copy = path.join(dir, path.basename(image));
  const r = spawnSync("cp", ["--reflink=auto", "--sparse=always", "--", image, copy], { encoding: "utf8" });
  if (r.status !== 0) {
    cleanup();
    throw new SnapshotError(`Couldn't snapshot ${image} for the check: ${r.error?.message ?? r.stderr.trim()}`);
  }
  return { path: copy, cleanup };
}

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
