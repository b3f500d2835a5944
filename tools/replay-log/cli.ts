/**
 * tsdm replay-log: read, search and replay dm-log-writes logs (written by the kernel, QEMU blklogwrites or tsdm),
 * with the options, output and exit codes of the xfstests replay-log (src/log-writes), plus a crash-consistency
 * walk (--walk, see walk.ts).
 *
 * Exit codes: 0 success; 1 usage error, open/format/replay error, missing start mark, --find without a match,
 * failing --fsck; 255 a read/validation error during --find (replay-log returns -1 there).
 */
import { createRequire } from "node:module";
import type { SingleBar } from "cli-progress";
import { LogFlag, flagNames } from "../../daemon/targets/log-writes/format.js";
import { GetoptError, getoptLong, parseCUnsigned, type LongOption } from "./getopt.js";
import { LogReadError, LogReader, shouldStop, type ReadEntry } from "./log-reader.js";
import { ReplayTarget, ReplayWriteError } from "./replay-target.js";
import { runCheckCommand, snapshotForCheck, SnapshotError, type CheckPoints, parseCheckPoints, isCheckPoint } from "./walk.js";

const OPTIONS: readonly LongOption[] = [
  { name: "next-flush", hasArg: false },
  { name: "next-fua", hasArg: false },
  { name: "start-entry", hasArg: true },
  { name: "end-mark", hasArg: true },
  { name: "log", hasArg: true },
  { name: "replay", hasArg: true },
  { name: "limit", hasArg: true },
  { name: "verbose", hasArg: false, short: "v" },
  { name: "find", hasArg: false },
  { name: "num-entries", hasArg: false },
  { name: "no-discard", hasArg: false },
  { name: "fsck", hasArg: true },
  { name: "check", hasArg: true },
  { name: "start-mark", hasArg: true },
  { name: "start-sector", hasArg: true },
  { name: "end-sector", hasArg: true },
  { name: "walk", hasArg: false },
  { name: "check-from-mark", hasArg: true },
  { name: "check-from-entry", hasArg: true },
  { name: "check-in-place", hasArg: false },
  { name: "help", hasArg: false, short: "h" },
];

const USAGE = `Usage: tsdm replay-log --log <logfile> [options]
	--replay <device> - replay onto a specific device (must exist)
	--limit <number> - number of entries to replay
	--next-flush - replay to/find the next flush
	--next-fua - replay to/find the next fua
	--start-entry <entry> - start at the given entry #
	--start-mark <mark> - mark to start from (replay starts after it)
	--end-mark <mark> - replay to/find the given mark
	--find - put replay-log in find mode, will search based on the other options
	--num-entries - print the number of entries in the log
	--no-discard - don't process discard entries
	--fsck <cmd> - the fsck command to run, must specify --check
	--check [<number>|flush|fua|discard|mark][,...] - when to check the file system, must specify --fsck
	--start-sector <sector> - replay ops on region from <sector> onto <device>
	--end-sector <sector> - replay ops on region to <sector> onto <device>
	--walk - crash-consistency walk: replay to each flush/FUA/mark (or the --check points) in turn and run
	         --fsck on a snapshot of the replayed image ('{}' in the command = the snapshot's path);
	         stops at and reports the first failing entry
	--check-from-mark <mark> / --check-from-entry <entry> - replay the entries before it without checks
	--check-in-place - --walk without snapshots: the --fsck command gets the replay target and must only read
	-v or --verbose - print replayed ops
	-vv - print also skipped ops
`;

class UsageError extends Error {}

interface Config {
  log: string;
  replay?: string;
  limit: bigint;
  stopFlags: number;
  startEntry: bigint;
  startMark?: Buffer;
  endMark?: Buffer;
  find: boolean;
  numEntries: boolean;
  discard: boolean;
  fsck?: string;
  check?: CheckPoints;
  startSector: bigint;
  endSector: bigint;
  walk: boolean;
  /** Checks start at this mark / entry; earlier entries are replayed unchecked. */
  checkFromMark?: Buffer;
  checkFromEntry?: bigint;
  checkInPlace: boolean;
  verbose: number;
}

function number(text: string, what: string): bigint {
  const n = parseCUnsigned(text);
  if (n === undefined) throw new UsageError(`Invalid ${what} number`);
  return n;
}

function parseArgs(argv: readonly string[]): Config | "help" {
  // Operands are ignored: the C tool's getopt_long loop leaves them and main() never looks at them.
  const { opts } = getoptLong(argv, OPTIONS);
  const c: Config = {
    log: "",
    limit: 0n,
    stopFlags: 0,
    startEntry: 0n,
    find: false,
    numEntries: false,
    discard: true,
    startSector: 0n,
    endSector: 0xffffffffffffffffn,
    walk: false,
    checkInPlace: false,
    verbose: 0,
  };
  let log: string | undefined;
  for (const o of opts) {
    const v = o.value!;
    switch (o.name) {
      case "help":
        return "help";
      case "next-flush":
        c.stopFlags |= LogFlag.FLUSH;
        break;
      case "next-fua":
        c.stopFlags |= LogFlag.FUA;
        break;
      case "start-entry":
        c.startEntry = number(v, "entry");
        break;
      case "end-mark":
        c.endMark = Buffer.from(v);
        c.stopFlags |= LogFlag.MARK;
        break;
      case "start-mark":
        c.startMark = Buffer.from(v);
        break;
      case "log":
        log = v;
        break;
      case "replay":
        c.replay = v;
        break;
      case "limit":
        c.limit = number(v, "entry");
        break;
      case "verbose":
        c.verbose++;
        break;
      case "find":
        c.find = true;
        break;
      case "num-entries":
        c.numEntries = true;
        break;
      case "no-discard":
        c.discard = false;
        break;
      case "fsck":
        c.fsck = v;
        break;
      case "check": {
        const points = parseCheckPoints(v);
        if (!points) throw new UsageError("Invalid entry number");
        c.check = points;
        break;
      }
      case "start-sector":
        c.startSector = number(v, "sector");
        break;
      case "end-sector":
        c.endSector = number(v, "sector");
        break;
      case "walk":
        c.walk = true;
        break;
      case "check-from-mark":
        c.checkFromMark = Buffer.from(v);
        break;
      case "check-from-entry":
        c.checkFromEntry = number(v, "entry");
        break;
      case "check-in-place":
        c.checkInPlace = true;
        break;
    }
  }
  if (log === undefined) throw new UsageError("--log is required");
  c.log = log;
  return c;
}

export async function run(argv: string[]): Promise<number> {
  const out = (line: string): void => void process.stdout.write(line + "\n");
  const err = (line: string): void => void process.stderr.write(line + "\n");
  let cfg: Config | "help";
  try {
    cfg = parseArgs(argv);
  } catch (e) {
    if (e instanceof GetoptError || e instanceof UsageError) {
      err(`tsdm replay-log: ${e.message}`);
      process.stderr.write(USAGE);
      return 1;
    }
    throw e;
  }
  if (cfg === "help") {
    process.stdout.write(USAGE);
    return 0;
  }

  let log: LogReader | undefined;
  let target: ReplayTarget | undefined;
  try {
    target = cfg.replay !== undefined ? ReplayTarget.open(cfg.replay, (l) => cfg.verbose && out(l)) : undefined;
    log = LogReader.open(cfg.log);
    return await runWith(cfg, log, target, out, err);
  } catch (e) {
    if (e instanceof LogReadError || e instanceof ReplayWriteError || e instanceof SnapshotError || e instanceof UsageError) {
      err(e.message);
      if (e instanceof UsageError) process.stderr.write(USAGE);
      return 1;
    }
    throw e;
  } finally {
    log?.close();
    target?.close();
  }
}

async function runWith(cfg: Config, log: LogReader, target: ReplayTarget | undefined, out: (l: string) => void, err: (l: string) => void): Promise<number> {
  const ss = log.sectorSize;
  // -vv lines of the two C seek functions: log_seek_next_entry (--start-mark, --find) prints the position after the
  // header and the flag names; log_seek_entry (--start-entry) the header's own position and no names.
  const seekLine = (e: ReadEntry): void => {
    if (cfg.verbose > 1) {
      out(`seek entry ${e.index}@${e.dataPos / ss}: ${e.header.sector}, size ${e.header.nrSectors}, flags 0x${e.header.flags.toString(16)}(${flagNames(e.header.flags)})`);
    }
  };
  const seekEntryLine = (e: ReadEntry): void => {
    if (cfg.verbose > 1) out(`seek entry ${e.index}@${e.headerPos / ss}: ${e.header.sector}, size ${e.header.nrSectors}, flags 0x${e.header.flags.toString(16)}`);
  };

  // Position: after the start mark, or at the start entry.
  if (cfg.startMark) {
    for (;;) {
      const e = log.next();
      if (!e) throw new LogReadError("Couldn't find starting mark");
      seekLine(e);
      if (shouldStop(e, LogFlag.MARK, cfg.startMark)) break;
    }
  } else {
    log.seekEntry(cfg.startEntry > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(cfg.startEntry), seekEntryLine);
  }
  if (!cfg.walk && (cfg.fsck === undefined) !== (cfg.check === undefined)) throw usage("--fsck and --check go together");

  if (cfg.find) {
    let count = 0n;
    for (;;) {
      let e: ReadEntry | undefined;
      try {
        e = log.next();
      } catch (x) {
        if (x instanceof LogReadError) {
          err(x.message);
          return 255;
        }
        throw x;
      }
      if (!e) break;
      seekLine(e);
      count++;
      if ((cfg.limit && count === cfg.limit) || shouldStop(e, cfg.stopFlags, cfg.endMark)) {
        out(`${e.index}@${e.endPos / ss}`);
        return 0;
      }
    }
    err("Couldn't find entry");
    return 1;
  }
  if (cfg.numEntries) {
    out(String(log.nrEntries));
    return 0;
  }
  if (!target) {
    if (cfg.walk) throw usage("--walk needs --replay");
    out(`Log version=1, sectorsize=${ss}, entries=${log.nrEntries}`);
    return 0;
  }
  if (cfg.walk && cfg.fsck === undefined) throw usage("--walk needs --fsck <command>");
  if ((cfg.checkFromMark || cfg.checkFromEntry !== undefined) && cfg.fsck === undefined) throw usage("--check-from-mark/--check-from-entry need --fsck");
  if (cfg.checkInPlace && !cfg.walk) throw usage("--check-in-place goes with --walk");
  const checkFrom = cfg.checkFromMark ? findMarkIndex(cfg.log, cfg.checkFromMark) : Number(cfg.checkFromEntry ?? 0n);

  const walkPoints: CheckPoints = cfg.check ?? { flags: LogFlag.FLUSH | LogFlag.FUA | LogFlag.MARK, every: 0n };
  const bar = progressBar(cfg, log);
  const buf = Buffer.alloc(Math.min(8 << 20, Math.max(ss, 1 << 20)));
  let count = 0n;
  let checked = 0;
  try {
    for (let e = log.next(); e; e = log.next()) {
      count++;
      await replayEntry(cfg, log, target, e, buf, out);
      bar?.increment();
      const lastStop = (cfg.limit && count === cfg.limit) || shouldStop(e, cfg.stopFlags, cfg.endMark);
      const point = isCheckPoint(walkPoints, e.header.flags, count) || (cfg.walk && (lastStop || e.index === log.nrEntries - 1));
      if (cfg.fsck !== undefined && point && e.index >= checkFrom) {
        target.fsync();
        checked++;
        const ok = cfg.walk ? await walkCheck(cfg, target, e, ss, out) : runCheckCommand(cfg.fsck, target.path, e.index, false);
        if (!ok) {
          bar?.stop();
          if (cfg.walk) out(`first failing entry: ${e.index}@${e.endPos / ss} (${describe(e)})`);
          else err(`Fsck errored out on entry ${e.index}`);
          target.fsync();
          return 1;
        }
      }
      if (lastStop) break;
    }
  } finally {
    bar?.stop();
  }
  target.fsync();
  if (cfg.walk) out(`walk: ${checked} check point${checked === 1 ? "" : "s"} passed, entries ${log.curEntry - Number(count)}..${log.curEntry - 1}`);
  return 0;
}

async function walkCheck(cfg: Config, target: ReplayTarget, e: ReadEntry, ss: number, out: (l: string) => void): Promise<boolean> {
  const snap = snapshotForCheck(target.path, target.isBlockDevice || cfg.checkInPlace);
  try {
    const ok = runCheckCommand(cfg.fsck!, snap.path, e.index, true);
    out(`entry ${e.index}@${e.endPos / ss} ${describe(e)}: ${ok ? "ok" : "FAILED"}`);
    return ok;
  } finally {
    snap.cleanup();
  }
}

/** Index of the first mark matching `name` (as --end-mark matches), read with a reader of its own. */
function findMarkIndex(logPath: string, name: Buffer): number {
  const log = LogReader.open(logPath);
  try {
    for (let e = log.next(); e; e = log.next()) if (shouldStop(e, LogFlag.MARK, name)) return e.index;
  } finally {
    log.close();
  }
  throw new LogReadError("Couldn't find the mark to check from");
}

function describe(e: ReadEntry): string {
  const m = e.header.mark ? ` "${e.header.mark.toString()}"` : "";
  return `${flagNames(e.header.flags)}${m}`;
}

async function replayEntry(cfg: Config, log: LogReader, target: ReplayTarget, e: ReadEntry, buf: Buffer, out: (l: string) => void): Promise<void> {
  const ss = log.sectorSize;
  const h = e.header;
  const size = h.nrSectors * ss;
  const sector = BigInt(h.sector);
  const skip = h.nrSectors !== 0 && (sector + BigInt(h.nrSectors) <= cfg.startSector || sector > cfg.endSector);
  if (cfg.verbose > 1 || (cfg.verbose && !skip)) {
    out(`${skip ? "skipping" : "replaying"} ${e.index}@${e.dataPos / ss}: sector ${h.sector}, size ${size}, flags 0x${h.flags.toString(16)}(${flagNames(h.flags)})`);
  }
  if (size === 0) return;
  const offset = h.sector * ss;
  if (h.flags & LogFlag.DISCARD) {
    if (cfg.discard) await target.discard(offset, size);
    return;
  }
  if (skip) return;
  for (let done = 0; done < size; ) {
    const n = Math.min(buf.length, size - done);
    log.readData(e.dataPos + done, buf, n);
    target.write(buf, n, offset + done);
    done += n;
  }
}

function progressBar(cfg: Config, log: LogReader): SingleBar | undefined {
  const total = log.nrEntries - log.curEntry;
  if (!process.stderr.isTTY || cfg.verbose || cfg.walk || total < 2000) return undefined;
  // Loaded lazily: only interactive long replays pay for it.
  const { SingleBar: Bar, Presets } = requireCliProgress();
  const bar = new Bar({ format: "replaying |{bar}| {value}/{total} entries {eta_formatted}", stream: process.stderr, clearOnComplete: true, hideCursor: true }, Presets.shades_classic);
  bar.start(total, 0);
  return bar;
}

const requireCliProgress = (): typeof import("cli-progress") => createRequire(import.meta.url)("cli-progress");

const usage = (m: string): UsageError => new UsageError(m);
