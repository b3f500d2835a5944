import { describe, expect, it } from "vitest";
import { getoptLong } from "../../ctl/getopt.js";
import { CommandLineError, LONG_OPTIONS, parseCommandLine, SHORT_OPTIONS } from "../../ctl/options.js";

const parse = (...argv: string[]) => getoptLong("dmsetup", argv, SHORT_OPTIONS, LONG_OPTIONS);
const cmdline = (...argv: string[]) => parseCommandLine("dmsetup", argv);
const cmdlineError = (...argv: string[]): string[] => {
  try {
    cmdline(...argv);
  } catch (e) {
    if (e instanceof CommandLineError) return e.lines;
    throw e;
  }
  throw new Error("expected a command-line error");
};

describe("getopt_long emulation", () => {
  it("permutes: options anywhere, operands in order", () => {
    const r = parse("table", "N", "--showkeys", "-v", "M");
    expect(r.operands).toEqual(["table", "N", "M"]);
    expect(r.options.map((o) => o.key)).toEqual(["showkeys", "v"]);
  });

  it("stops option processing at --", () => {
    const r = parse("remove", "--noudevsync", "--", "--force", "-x");
    expect(r.operands).toEqual(["remove", "--force", "-x"]);
    expect(r.error).toBeUndefined();
  });

  it("bundles short options and takes attached or separate arguments", () => {
    expect(parse("-vvv").options.map((o) => o.key)).toEqual(["v", "v", "v"]);
    expect(parse("-cono,open").options).toEqual([
      { key: "c", spelled: "-c" },
      { key: "o", spelled: "-o", value: "no,open" },
    ]);
    expect(parse("-u", "U1", "x").options[0]).toEqual({ key: "u", spelled: "-u", value: "U1" });
  });

  it("accepts unambiguous prefixes and --opt=value", () => {
    expect(parse("--nohead").options[0]!.key).toBe("noheadings");
    expect(parse("--mangle", "none").options[0]).toEqual({ key: "manglename", spelled: "--manglename", value: "none" });
    expect(parse("--tab=0 8 zero").options[0]!.value).toBe("0 8 zero");
    // an exact name wins over longer names sharing it as a prefix
    expect(parse("--area").options[0]!.key).toBe("area");
  });

  it("prints glibc's diagnostics", () => {
    expect(parse("--foo").error).toBe("dmsetup: unrecognized option '--foo'");
    expect(parse("--foo=1").error).toBe("dmsetup: unrecognized option '--foo=1'");
    expect(parse("-Z").error).toBe("dmsetup: invalid option -- 'Z'");
    expect(parse("ls", "--table").error).toBe("dmsetup: option '--table' requires an argument");
    expect(parse("-o").error).toBe("dmsetup: option requires an argument -- 'o'");
    expect(parse("--force=1").error).toBe("dmsetup: option '--force' doesn't allow an argument");
    expect(parse("--se", "x").error).toBe("dmsetup: option '--se' is ambiguous; possibilities: '--segments' '--select' '--separator' '--setuuid'");
    expect(parse("--no").error).toBe(
      "dmsetup: option '--no' is ambiguous; possibilities: '--noflush' '--nogroup' '--noheadings' '--nolockfs' '--nomonitor' '--noopencount' '--nosuffix' '--notable' '--notimesuffix' '--noudevrules' '--noudevsync'",
    );
  });

  it("POSIXLY_CORRECT stops at the first operand", () => {
    const r = getoptLong("dmsetup", ["-v", "table", "--showkeys"], SHORT_OPTIONS, LONG_OPTIONS, true);
    expect(r.options.map((o) => o.key)).toEqual(["v"]);
    expect(r.operands).toEqual(["table", "--showkeys"]);
  });

  it("reports only the first error, keeping the options before it", () => {
    const r = parse("-v", "--bogus", "-Z");
    expect(r.options.map((o) => o.key)).toEqual(["v"]);
    expect(r.error).toBe("dmsetup: unrecognized option '--bogus'");
  });
});

describe("dmsetup option checks", () => {
  it("maps -c/-C/--columns to one switch and counts -v", () => {
    expect(cmdline("info", "-C").switches.columns).toBe(true);
    expect(cmdline("info", "--col").switches.columns).toBe(true);
    expect(cmdline("-vv", "info", "-v").switches.verbose).toBe(3);
  });

  it("splits command and arguments", () => {
    const r = cmdline("--noheadings", "info", "-c", "a", "b");
    expect(r.command).toBe("info");
    expect(r.args).toEqual(["a", "b"]);
  });

  it("rejects bad values with dmsetup's messages", () => {
    expect(cmdlineError("--manglename", "weird")).toEqual(["Unknown name mangling mode."]);
    expect(cmdlineError("--readahead", "-5", "resume", "x")).toEqual(["Negative read ahead value (-5) is not understood."]);
    expect(cmdlineError("-M", "999", "create", "x")).toEqual(["Invalid argument for --mode: 999. "]);
    expect(cmdlineError("--count", "-1")).toEqual(["Count must be zero or greater."]);
    expect(cmdlineError("--interval", "0")).toEqual(["Interval must be a positive integer."]);
    expect(cmdlineError("-j", "1", "info")).toEqual(["Please specify both major number and minor number."]);
    expect(cmdlineError("-m", "1", "info")).toEqual(["Please specify both major number and minor number."]);
    expect(cmdlineError("--table", "x", "--notable", "create", "a")).toEqual(["--table and --notable are incompatible."]);
    expect(cmdlineError("--addnodeonresume", "--addnodeoncreate")).toEqual(["--addnodeonresume and --addnodeoncreate are incompatible."]);
  });

  it("checks values in order: a bad value before a getopt error wins", () => {
    expect(cmdlineError("--count", "-1", "--bogus")).toEqual(["Count must be zero or greater."]);
    expect(cmdlineError("--bogus", "--count", "-1")).toEqual(["dmsetup: unrecognized option '--bogus'"]);
  });

  it("parses read-ahead forms", () => {
    expect(cmdline("--readahead", "+128").switches.readAhead).toEqual({ kind: "sectors", sectors: 128, minimum: true });
    expect(cmdline("--readahead", "AUTO").switches.readAhead).toEqual({ kind: "auto" });
    expect(cmdline("--readahead", "none").switches.readAhead).toEqual({ kind: "none" });
  });

  it("remembers --help seen before a failure (dmsetup still exits 0)", () => {
    try {
      cmdline("--help", "--bogus");
    } catch (e) {
      expect((e as CommandLineError).helpSeen).toBe(true);
      return;
    }
    throw new Error("expected failure");
  });
});
