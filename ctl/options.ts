import { getoptLong, type LongOption } from "./getopt.js";
import type { ManglingMode } from "./mangle.js";

/** dmsetup 1.02.185's short options. */
export const SHORT_OPTIONS = "cCfG:hj:m:M:no:O:rS:u:U:vy";

/**
 * dmsetup 1.02.185's long options, in its table order (the order getopt lists ambiguous possibilities in).
 * Stats-only options are accepted and ignored: they must exist so that prefixes stay exactly as ambiguous
 * as with the real tool (`--no` ...).
 */
const LONG: ReadonlyArray<[string, "none" | "required", string?]> = [
  ["addnodeoncreate", "none"],
  ["addnodeonresume", "none"],
  ["alias", "required"],
  ["alldevices", "none"],
  ["allprograms", "none"],
  ["allregions", "none"],
  ["area", "none"],
  ["areas", "required"],
  ["areasize", "required"],
  ["bounds", "required"],
  ["checks", "none"],
  ["clear", "none"],
  ["columns", "none", "c"],
  ["concise", "none"],
  ["count", "required"],
  ["deferred", "none"],
  ["exec", "required"],
  ["filemap", "none"],
  ["follow", "required"],
  ["force", "none", "f"],
  ["foreground", "none"],
  ["gid", "required", "G"],
  ["group", "none"],
  ["groupid", "required"],
  ["help", "none", "h"],
  ["histogram", "none"],
  ["inactive", "none"],
  ["interval", "required"],
  ["length", "required"],
  ["major", "required", "j"],
  ["manglename", "required"],
  ["minor", "required", "m"],
  ["mode", "required", "M"],
  ["nameprefixes", "none"],
  ["noflush", "none"],
  ["nogroup", "none"],
  ["noheadings", "none"],
  ["nolockfs", "none"],
  ["nomonitor", "none"],
  ["noopencount", "none"],
  ["nosuffix", "none"],
  ["notable", "none", "n"],
  ["notimesuffix", "none"],
  ["noudevrules", "none"],
  ["noudevsync", "none"],
  ["options", "required", "o"],
  ["precise", "none"],
  ["programid", "required"],
  ["raw", "none"],
  ["readahead", "required"],
  ["readonly", "none", "r"],
  ["region", "none"],
  ["regionid", "required"],
  ["regions", "required"],
  ["relative", "none"],
  ["retry", "none"],
  ["rows", "none"],
  ["segments", "none"],
  ["select", "required", "S"],
  ["separator", "required"],
  ["setuuid", "none"],
  ["showkeys", "none"],
  ["sort", "required", "O"],
  ["start", "required"],
  ["table", "required"],
  ["target", "required"],
  ["tree", "none"],
  ["udevcookie", "required"],
  ["uid", "required", "U"],
  ["unbuffered", "none"],
  ["units", "required"],
  ["unquoted", "none"],
  ["userdata", "required"],
  ["uuid", "required", "u"],
  ["verbose", "none", "v"],
  ["verifyudev", "none"],
  ["version", "none"],
  ["yes", "none", "y"],
];

export const LONG_OPTIONS: readonly LongOption[] = LONG.map(([name, arg, key]) => ({ name, arg, key: key ?? name }));

/** Read-ahead request: a sector count (with `+` = minimum), or the kernel's auto/none. */
export type ReadAhead = { kind: "sectors"; sectors: number; minimum: boolean } | { kind: "auto" } | { kind: "none" };

/** Every switch dmsetup knows, after parsing; counts where dmsetup counts (-v). */
export interface Switches {
  columns: boolean;
  force: boolean;
  help: boolean;
  verbose: number;
  readOnly: boolean;
  notable: boolean;
  yes: boolean;
  major?: number;
  minor?: number;
  uid?: number;
  gid?: number;
  mode?: number;
  uuid?: string;
  options?: string;
  sort?: string;
  select?: string;
  separator?: string;
  table?: string;
  target?: string;
  exec?: string;
  readAhead?: ReadAhead;
  manglename?: ManglingMode;
  count?: number;
  interval?: number;
  addNodeOnCreate: boolean;
  addNodeOnResume: boolean;
  checks: boolean;
  concise: boolean;
  deferred: boolean;
  inactive: boolean;
  nameprefixes: boolean;
  noflush: boolean;
  noheadings: boolean;
  nolockfs: boolean;
  noopencount: boolean;
  retry: boolean;
  rows: boolean;
  setuuid: boolean;
  showkeys: boolean;
  tree: boolean;
  unquoted: boolean;
  unbuffered: boolean;
  version: boolean;
}

export interface ParsedCommandLine {
  switches: Switches;
  /** The command word (first operand), if any. */
  command?: string;
  args: string[];
}

/** A command-line failure: the messages dmsetup prints before `Couldn't process command line.` */
export class CommandLineError extends Error {
  constructor(
    readonly lines: string[],
    /** --help seen before the failure: dmsetup still exits 0. */
    readonly helpSeen: boolean,
  ) {
    super(lines.join("\n"));
  }
}

function emptySwitches(): Switches {
  return {
    columns: false,
    force: false,
    help: false,
    verbose: 0,
    readOnly: false,
    notable: false,
    yes: false,
    addNodeOnCreate: false,
    addNodeOnResume: false,
    checks: false,
    concise: false,
    deferred: false,
    inactive: false,
    nameprefixes: false,
    noflush: false,
    noheadings: false,
    nolockfs: false,
    noopencount: false,
    retry: false,
    rows: false,
    setuuid: false,
    showkeys: false,
    tree: false,
    unquoted: false,
    unbuffered: false,
    version: false,
  };
}

/** C atoi(): leading white space, optional sign, digits; anything else stops (0 if no digits). */
export function atoi(s: string): number {
  const m = /^[ \t\n\v\f\r]*([+-]?)(\d*)/.exec(s)!;
  if (!m[2]) return 0;
  const n = Number(m[2].slice(0, 12)) * (m[1] === "-" ? -1 : 1);
  // int overflow wraps like a 32-bit int in practice; clamp the absurd cases.
  return n | 0;
}

/** strtol(s, &end, 8) with dmsetup's checks for --mode. */
function parseMode(s: string): number | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?)([0-7]+)$/.exec(s);
  if (!m) return undefined;
  const v = parseInt(m[2]!, 8) * (m[1] === "-" ? -1 : 1);
  return v === 0 ? undefined : v;
}

/**
 * dmsetup's _process_switches(): getopt, then per-option value checks, then the cross-option checks.
 * Throws CommandLineError with the exact diagnostic lines.
 */
export function parseCommandLine(prog: string, argv: readonly string[], env: NodeJS.ProcessEnv = {}): ParsedCommandLine {
  const r = getoptLong(prog, argv, SHORT_OPTIONS, LONG_OPTIONS, env.POSIXLY_CORRECT !== undefined);
  const sw = emptySwitches();
  const fail = (line: string): never => {
    throw new CommandLineError([line], sw.help);
  };
  for (const o of r.options) {
    const v = o.value ?? "";
    switch (o.key) {
      case "c":
      case "C":
        sw.columns = true;
        break;
      case "f":
        sw.force = true;
        break;
      case "h":
        sw.help = true;
        break;
      case "v":
        sw.verbose++;
        break;
      case "r":
        sw.readOnly = true;
        break;
      case "n":
        sw.notable = true;
        break;
      case "y":
        sw.yes = true;
        break;
      case "j":
        sw.major = atoi(v);
        break;
      case "m":
        sw.minor = atoi(v);
        break;
      case "U":
        sw.uid = atoi(v);
        break;
      case "G":
        sw.gid = atoi(v);
        break;
      case "M": {
        const mode = parseMode(v);
        if (mode === undefined) fail(`Invalid argument for --mode: ${v}. `);
        sw.mode = mode;
        break;
      }
      case "u":
        sw.uuid = v;
        break;
      case "o":
        sw.options = v;
        break;
      case "O":
        sw.sort = v;
        break;
      case "S":
        sw.select = v;
        break;
      case "separator":
        sw.separator = v;
        break;
      case "table":
        sw.table = v;
        break;
      case "target":
        sw.target = v;
        break;
      case "exec":
        sw.exec = v;
        break;
      case "count": {
        const n = atoi(v);
        if (n < 0) fail("Count must be zero or greater.");
        sw.count = n;
        break;
      }
      case "interval": {
        const n = atoi(v);
        if (n <= 0) fail("Interval must be a positive integer.");
        sw.interval = n;
        break;
      }
      case "manglename": {
        const m = v.toLowerCase();
        if (m !== "none" && m !== "auto" && m !== "hex") fail("Unknown name mangling mode.");
        sw.manglename = m as ManglingMode;
        break;
      }
      case "readahead": {
        const lower = v.toLowerCase();
        if (lower === "auto") sw.readAhead = { kind: "auto" };
        else if (lower === "none") sw.readAhead = { kind: "none" };
        else {
          const n = atoi(v);
          if (n < -1) fail(`Negative read ahead value (${n}) is not understood.`);
          sw.readAhead = { kind: "sectors", sectors: n, minimum: v.trimStart().startsWith("+") };
        }
        break;
      }
      case "addnodeoncreate":
        sw.addNodeOnCreate = true;
        break;
      case "addnodeonresume":
        sw.addNodeOnResume = true;
        break;
      case "udevcookie":
        break;
      case "checks":
      case "concise":
      case "deferred":
      case "inactive":
      case "nameprefixes":
      case "noflush":
      case "noheadings":
      case "nolockfs":
      case "noopencount":
      case "retry":
      case "rows":
      case "setuuid":
      case "showkeys":
      case "tree":
      case "unquoted":
      case "unbuffered":
      case "version":
        (sw as unknown as Record<string, boolean>)[o.key] = true;
        break;
      default:
        // Accepted and ignored: udev and stats-only options.
        break;
    }
  }
  if (r.error) fail(r.error);
  if ((sw.major !== undefined) !== (sw.minor !== undefined)) fail("Please specify both major number and minor number.");
  if (sw.table !== undefined && sw.notable) fail("--table and --notable are incompatible.");
  if (sw.addNodeOnCreate && sw.addNodeOnResume) fail("--addnodeonresume and --addnodeoncreate are incompatible.");
  const [command, ...args] = r.operands;
  return { switches: sw, command, args };
}
