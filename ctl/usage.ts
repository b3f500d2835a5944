/**
 * dmsetup's command table (name, usage, argument bounds, repeatability) and its usage text, which it prints
 * on stderr. The program name in the usage is dmsetup's own base-command name, as dmsetup prints it when
 * started under a name it does not know.
 */

export interface CommandSpec {
  name: string;
  help: string;
  minArgs: number;
  /** -1 = unlimited */
  maxArgs: number;
  /** 0 = once; 1 = once per device argument; 2 = per device and --select-able. */
  repeatable: 0 | 1 | 2;
  /** Listed in the usage text (tsdm extensions are not, to keep dmsetup's text byte-identical). */
  listed: boolean;
}

const c = (name: string, help: string, minArgs: number, maxArgs: number, repeatable: 0 | 1 | 2, listed = true): CommandSpec => ({
  name,
  help,
  minArgs,
  maxArgs,
  repeatable,
  listed,
});

export const COMMANDS: readonly CommandSpec[] = [
  c("help", "[-c|-C|--columns]", 0, 0, 0),
  c(
    "create",
    "<dev_name>\n" +
      "\t    [-j|--major <major> -m|--minor <minor>]\n" +
      "\t    [-U|--uid <uid>] [-G|--gid <gid>] [-M|--mode <octal_mode>]\n" +
      "\t    [-u|--uuid <uuid>] [--addnodeonresume|--addnodeoncreate]\n" +
      "\t    [--readahead {[+]<sectors>|auto|none}]\n" +
      "\t    [-n|--notable|--table {<table>|<table_file>}]\n" +
      "\tcreate --concise [<concise_device_spec_list>]",
    0,
    2,
    0,
  ),
  c("remove", "[--deferred] [-f|--force] [--retry] <device>...", 0, -1, 2),
  c("remove_all", "[-f|--force]", 0, 0, 0),
  c("suspend", "[--noflush] [--nolockfs] <device>...", 0, -1, 2),
  c(
    "resume",
    "[--noflush] [--nolockfs] <device>...\n" + "\t       [--addnodeonresume|--addnodeoncreate]\n" + "\t       [--readahead {[+]<sectors>|auto|none}]",
    0,
    -1,
    2,
  ),
  c("load", "<device> [<table>|<table_file>]", 0, 2, 0),
  c("clear", "<device>", 0, -1, 2),
  c("reload", "<device> [<table>|<table_file>]", 0, 2, 0),
  c("wipe_table", "[-f|--force] [--noflush] [--nolockfs] <device>...", 0, -1, 2),
  c("rename", "<device> [--setuuid] <new_name_or_uuid>", 1, 2, 0),
  c("measure", "[<device>...]", 0, -1, 2),
  c("message", "<device> <sector> <message>", 2, -1, 0),
  c("ls", "[--target <target_type>] [--exec <command>] [-o <options>] [--tree]", 0, 0, 0),
  c("info", "[<device>...]", 0, -1, 1),
  c("deps", "[-o <options>] [<device>...]", 0, -1, 2),
  c("stats", "<command> [<options>] [<device>...]", 1, -1, 1),
  c("status", "[<device>...] [--noflush] [--target <target_type>]", 0, -1, 2),
  c("table", "[<device>...] [--concise] [--target <target_type>] [--showkeys]", 0, -1, 2),
  c("wait", "<device> [<event_nr>] [--noflush]", 0, 2, 0),
  c("mknodes", "[<device>...]", 0, -1, 1),
  c("mangle", "[<device>...]", 0, -1, 1),
  c("udevcreatecookie", "", 0, 0, 0),
  c("udevreleasecookie", "[<cookie>]", 0, 1, 0),
  c("udevflags", "<cookie>", 1, 1, 0),
  c("udevcomplete", "<cookie>", 1, 1, 0),
  c("udevcomplete_all", "[<age_in_minutes>]", 0, 1, 0),
  c("udevcookies", "", 0, 0, 0),
  c("target-version", "[<target>...]", 1, -1, 1),
  c("targets", "", 0, 0, 0),
  c("version", "", 0, 0, 0),
  c("setgeometry", "<device> <cyl> <head> <sect> <start>", 5, 5, 0),
  c("splitname", "<device> [<subsystem>]", 1, 2, 0),
  // tsdm extension: the NBD URI under which the daemon exports a device.
  c("nbd-uri", "<device>", 1, 1, 0, false),
];

export const findCommand = (name: string): CommandSpec | undefined => COMMANDS.find((x) => x.name === name);

export function usageText(): string {
  let s =
    "Usage:\n\n" +
    "dmsetup\n" +
    "        [--version] [-h|--help [-c|-C|--columns]]\n" +
    "        [-v|--verbose [-v|--verbose ...]] [-f|--force]\n" +
    "        [--checks] [--manglename {none|hex|auto}]\n" +
    "        [-r|--readonly] [--noopencount] [--noflush] [--nolockfs] [--inactive]\n" +
    "        [--udevcookie <cookie>] [--noudevrules] [--noudevsync] [--verifyudev]\n" +
    "        [-y|--yes] [--readahead {[+]<sectors>|auto|none}] [--retry]\n" +
    "        [-c|-C|--columns] [-o <fields>] [-O|--sort <sort_fields>]\n" +
    "        [-S|--select <selection>] [--nameprefixes] [--noheadings]\n" +
    "        [--separator <separator>]\n\n";
  for (const cmd of COMMANDS) if (cmd.listed) s += `\t${cmd.name} ${cmd.help}\n`;
  s +=
    "\n<device> may be device name or (if only one) -u <uuid> or -j <major> -m <minor>\n" +
    "<mangling_mode> is one of 'none', 'auto' and 'hex'.\n" +
    "<fields> are comma-separated.  Use 'help -c' for list.\n" +
    "<concise_device_specification> has single-device entries separated by semi-colons:\n" +
    "    <name>,<uuid>,<minor>,<flags>,<table>\n" +
    "        where <flags> is 'ro' or 'rw' (the default) and any of <uuid>, <minor>\n" +
    "        and <flags> may be empty. Separate extra table lines with commas.\n" +
    "    E.g.: dev1,,,,0 100 linear 253:1 0,100 100 error;dev2,,,ro,0 1 error\n" +
    "Table_file contents may be supplied on stdin.\n" +
    "Options are: devno, devname, blkdevname.\n" +
    "Tree specific options are: ascii, utf, vt100; compact, inverted, notrunc;\n" +
    "                           blkdevname, [no]device, active, open, rw and uuid.\n\n";
  return s;
}
