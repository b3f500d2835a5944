/**
 * tsdmsetup: the dmsetup 1.02.185 drop-in for tsdm. Parses the command line exactly as dmsetup does, then
 * runs the command against tsdmd over gRPC (unix socket by default, or TCP with mutual TLS).
 *
 * Connection options (not dmsetup's; matched exactly, never as abbreviations, so dmsetup's own option
 * prefixes keep their meaning): --socket PATH | --host HOST:PORT --ca FILE --cert FILE --key FILE, or the
 * environment TSDM_SOCKET | TSDM_HOST, TSDM_CA, TSDM_CERT, TSDM_KEY.
 */
import path from "node:path";
import { EndpointError, resolveEndpoint } from "./client.js";
import { HANDLERS, runSelected, type DevNameType, type RunState } from "./commands/index.js";
import { Ctx, Failed, type Io } from "./context.js";
import { manglingMode } from "./mangle.js";
import { CommandLineError, parseCommandLine } from "./options.js";
import { Report, ReportSetupError, fieldListing, SPLITNAME_FIELDS } from "./report.js";
import { parseSelection, SelectionError } from "./select.js";
import { parseTreeOptions, TreeOptionError } from "./tree.js";
import { findCommand, usageText } from "./usage.js";

export interface MainIo extends Io {
  env?: NodeJS.ProcessEnv;
  /** Program name for getopt's messages (default: this script's basename). */
  prog?: string;
}

const CONNECTION_OPTIONS = ["socket", "host", "ca", "cert", "key"] as const;
type ConnectionFlags = Partial<Record<(typeof CONNECTION_OPTIONS)[number], string>>;

/** Take tsdm's own connection options out of argv (exact spellings only, before any `--`). */
function extractConnectionOptions(argv: readonly string[]): { flags: ConnectionFlags; rest: string[]; error?: string } {
  const flags: ConnectionFlags = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      rest.push(...argv.slice(i));
      break;
    }
    const m = /^--(socket|host|ca|cert|key)(?:=(.*))?$/s.exec(a);
    if (!m) {
      rest.push(a);
      continue;
    }
    const key = m[1] as keyof ConnectionFlags;
    if (m[2] !== undefined) flags[key] = m[2];
    else if (i + 1 < argv.length) flags[key] = argv[++i]!;
    else return { flags, rest, error: `option '--${key}' requires an argument` };
  }
  return { flags, rest };
}

function defaultProg(): string {
  const script = process.argv[1];
  if (!script) return "tsdmsetup";
  return path.basename(script).replace(/\.(js|ts|mjs)$/, "") || "tsdmsetup";
}

/** Parse `-o` for ls/deps (dmsetup's _process_options): prefix matches of devno, blkdevname, devname. */
function parseDevNameOptions(spec: string): DevNameType | string {
  let type: DevNameType = "devno";
  let s = 0;
  while (s < spec.length) {
    let end = spec.indexOf(",", s);
    if (end < 0) end = spec.length;
    const word = spec.slice(s, end);
    if ("devno".startsWith(word)) type = "devno";
    else if ("blkdevname".startsWith(word)) type = "blkdevname";
    else if ("devname".startsWith(word)) type = "devname";
    else return `Option not recognised: ${spec.slice(s)}.`;
    if (end >= spec.length) break;
    s = end + 1;
  }
  return type;
}

export async function main(argv: string[], io: MainIo): Promise<number> {
  // A reader that went away (`tsdmsetup ls | head -1`) ends the output, not the program with a stack trace.
  const onStreamError = (e: NodeJS.ErrnoException): void => {
    if (e.code !== "EPIPE") throw e;
  };
  io.stdout.on("error", onStreamError);
  io.stderr.on("error", onStreamError);
  try {
    return await run(argv, io);
  } finally {
    io.stdout.off("error", onStreamError);
    io.stderr.off("error", onStreamError);
  }
}

async function run(argv: string[], io: MainIo): Promise<number> {
  const env = io.env ?? process.env;
  const prog = io.prog ?? defaultProg();
  const errln = (s: string): void => {
    io.stderr.write(`${s}\n`);
  };

  const devDirEnv = env.DM_DEV_DIR;
  let devDir = "/dev/";
  if (devDirEnv) {
    if (!devDirEnv.startsWith("/")) {
      errln("Invalid DM_DEV_DIR environment variable value.");
      return 1;
    }
    devDir = devDirEnv.endsWith("/") ? devDirEnv : `${devDirEnv}/`;
  }

  const conn = extractConnectionOptions(argv);
  if (conn.error) {
    errln(`${prog}: ${conn.error}`);
    errln("Couldn't process command line.");
    return 1;
  }

  let parsed;
  try {
    parsed = parseCommandLine(prog, conn.rest, env);
  } catch (e) {
    if (!(e instanceof CommandLineError)) throw e;
    for (const l of e.lines) errln(l);
    errln("Couldn't process command line.");
    return e.helpSeen ? 0 : 1;
  }
  const sw = parsed.switches;
  const forcedZero = sw.help || sw.version;

  let commandName = parsed.command;
  let args = parsed.args;
  if (sw.help) {
    commandName = "help";
    args = [];
  } else if (sw.version) {
    commandName = "version";
    args = [];
  }
  if (commandName === undefined) {
    io.stderr.write(usageText());
    return 1;
  }
  const spec = findCommand(commandName);
  const handler = spec && HANDLERS[spec.name];
  if (!spec || !handler) {
    errln("Unknown command.");
    io.stderr.write(usageText());
    return 1;
  }
  if (!sw.help && !sw.version && (args.length < spec.minArgs || (spec.maxArgs >= 0 && args.length > spec.maxArgs))) {
    errln("Incorrect number of arguments.");
    io.stderr.write(usageText());
    return 1;
  }

  // dmsetup's _process_options(): tree options, or ls/deps naming options (report fields are checked later).
  let devNameType: DevNameType = "devno";
  if (sw.tree) {
    try {
      parseTreeOptions(sw.options, { utf: false, width: 80 });
    } catch (e) {
      if (!(e instanceof TreeOptionError)) throw e;
      errln(e.message);
      errln("Couldn't process command line.");
      return forcedZero ? 0 : 1;
    }
  } else if (!sw.columns && spec.name !== "splitname" && sw.options !== undefined) {
    const r = parseDevNameOptions(sw.options);
    if (r !== "devno" && r !== "blkdevname" && r !== "devname") {
      errln(r);
      errln("Couldn't process command line.");
      return forcedZero ? 0 : 1;
    }
    devNameType = r;
  }

  if (spec.name === "help") {
    io.stderr.write(usageText());
    if (sw.columns) io.stderr.write(fieldListing());
    return 0;
  }

  let endpoint;
  try {
    endpoint = resolveEndpoint(conn.flags, env);
  } catch (e) {
    if (!(e instanceof EndpointError)) throw e;
    errln(`${prog}: ${e.message}`);
    return 1;
  }

  const st: RunState = { devNameType, multiple: false };
  // -S on a device command runs `info -c` with the selection first, then the command per selected device.
  const selectionCommand = sw.select !== undefined && spec.repeatable === 2;
  if (sw.select !== undefined && (sw.columns || selectionCommand)) {
    try {
      st.selection = parseSelection(sw.select);
    } catch (e) {
      if (!(e instanceof SelectionError)) throw e;
      errln(e.message);
      return forcedZero ? 0 : 1;
    }
  }
  // splitname is always a report.
  if ((sw.columns || spec.name === "splitname") && !selectionCommand) {
    try {
      st.report = Report.create({
        defaults: spec.name === "splitname" ? SPLITNAME_FIELDS : undefined,
        fields: sw.options,
        sort: sw.sort,
        noheadings: sw.noheadings,
        separator: sw.separator,
        nameprefixes: sw.nameprefixes,
        unquoted: sw.unquoted,
        rows: sw.rows,
      });
    } catch (e) {
      if (!(e instanceof ReportSetupError)) throw e;
      io.stderr.write(e.stderr);
      return e.helpOnly || forcedZero ? 0 : 1;
    }
  }

  // `mangle` looks devices up by their stored names (dmsetup switches name mangling off for it).
  const mode = spec.name === "mangle" ? "none" : manglingMode(sw.manglename, env);
  const ctx = new Ctx(sw, io, env, endpoint, mode, devDir);
  const bySwitch = sw.uuid !== undefined || sw.major !== undefined;
  st.multiple = spec.repeatable !== 0 && args.length !== 1 && (args.length > 0 || !bySwitch);

  // --count/--interval repeat the command (reports: a blank line and the interval between rounds).
  let repeat = 1;
  if (sw.count) repeat = sw.count;
  else if (sw.count !== undefined || sw.interval !== undefined) repeat = Infinity;
  const intervalMs = (sw.interval ?? 1) * 1000;

  let ret = 0;
  try {
    for (let round = 0; round < repeat && ret === 0; round++) {
      const perDevice = spec.repeatable && args.length > 1 ? args.length : 1;
      for (let i = 0; i < perDevice; i++) {
        try {
          if (selectionCommand) await runSelected(ctx, args.slice(i), st, handler);
          else await handler(ctx, args.slice(i), st);
        } catch (e) {
          if (!(e instanceof Failed)) {
            errln(`${prog}: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
          }
          errln("Command failed.");
          ret = 1;
          break;
        }
      }
      if (ctx.conciseProduced) {
        ctx.out("\n");
        ctx.conciseProduced = false;
      }
      if (st.report) {
        ctx.out(st.report.output());
        if (repeat > 1 && round + 1 < repeat && ret === 0) {
          ctx.out("\n");
          await new Promise((r) => setTimeout(r, intervalMs));
        }
      }
    }
  } finally {
    ctx.close();
  }
  return forcedZero ? 0 : ret;
}
